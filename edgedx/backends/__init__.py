"""Inference backends behind one :class:`~edgedx.backends.base.Session` protocol.

Backends are named in a map and imported only when chosen, so ``edgedx --help`` never loads
onnxruntime or TensorRT.
"""

from edgedx.backends.base import (
    BACKENDS,
    ENGINE_SUFFIXES,
    Session,
    SessionOptions,
    TensorSpec,
    available_backends,
    open_session,
    resolve_backend,
    session_class,
)

__all__ = [
    "BACKENDS",
    "ENGINE_SUFFIXES",
    "Session",
    "SessionOptions",
    "TensorSpec",
    "available_backends",
    "open_session",
    "resolve_backend",
    "session_class",
]
