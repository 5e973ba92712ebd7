"""edgedx: edge inference for medical-image screening.

    from edgedx import Classifier
    with Classifier() as clf:
        result = clf.classify("scan.png")
"""

from __future__ import annotations

from edgedx.version import __version__

__all__ = ["Classifier", "ManifestOverrides", "Result", "__version__"]


def __getattr__(name: str):
    # Lazy: ``import edgedx`` (and so ``edgedx --help``) stays free of numpy/cv2/onnxruntime.
    if name in ("Classifier", "ManifestOverrides"):
        from edgedx import api

        return getattr(api, name)
    if name == "Result":
        from edgedx.results import Result

        return Result
    raise AttributeError(f"module 'edgedx' has no attribute {name!r}")
