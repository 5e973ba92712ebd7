"""edgedx: edge inference for medical-image screening.

    from edgedx import Classifier
    with Classifier() as clf:
        result = clf.classify("scan.png")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Classifier", "Result", "__version__"]


def __getattr__(name: str):
    # Lazy: ``import edgedx`` (and so ``edgedx --help``) stays free of numpy/cv2/onnxruntime.
    if name in ("Classifier", "Result"):
        from edgedx import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgedx' has no attribute {name!r}")
