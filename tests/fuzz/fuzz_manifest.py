"""Target ``manifest``: :func:`edgedx.manifest.from_json` on arbitrary text and on mutated valid manifests.

The first byte picks the mode: the rest of the input as text (any JSON, or none), or a valid
manifest with up to six values replaced by hostile JSON values (wrong types, huge or non-finite
numbers, deep nesting). Only ModelError may escape; a manifest that validates must round-trip
through ``to_json`` and give a finite model input for a small image.
"""

from __future__ import annotations

import copy
import json

import numpy as np

from edgedx import manifest
from edgedx.preprocess import apply
from tests.factories import frame
from tests.fuzz import seeds as seedmod
from tests.fuzz.common import Finding, Take, expect_edgedx_error

#: Where edits land: every field the validator reads, its sections, and one it does not know.
_PATHS = (
    ("schema",), ("schema_version",), ("labels",), ("positive_label",), ("threshold",), ("precision",),
    ("provenance",), ("accepts",), ("engine",), ("input",), ("preprocess",), ("output",), ("extra",),
    ("input", "name"), ("input", "layout"), ("input", "height"), ("input", "width"), ("input", "channels"),
    ("preprocess", "resize"), ("preprocess", "scale"), ("preprocess", "mean"), ("preprocess", "std"),
    ("preprocess", "pad_value"), ("output", "name"), ("output", "activation"), ("accepts", "modalities"),
    ("accepts", "photometric"), ("accepts", "min_size"), ("accepts", "channels"), ("accepts", "extra"),
)  # fmt: skip
_STRINGS = (
    "", "NCHW", "NHWC", "stretch", "letterbox", "center_crop", "softmax", "sigmoid", "none", "fp16", "int8",
    "PNEUMONIA", "NORMAL", "a", "edgedx.manifest", "\ud800", "x" * 300,
)  # fmt: skip
_IMAGES = (frame(7, 9), frame(5, 4, channels=3), frame(40, 30).astype(np.uint16) * 200)


def seeds() -> list[bytes]:
    return [b"\x00" + seedmod.as_json(m) for m in seedmod.manifests()] + [bytes([1, i, 3]) for i in range(3)]


def document(data: bytes) -> str:
    """The JSON text the fuzzer's bytes describe."""
    take = Take(data)
    if take.byte() % 2 == 0:
        return take.rest().decode("utf-8", "surrogatepass" if take.flag() else "replace")
    doc = copy.deepcopy(seedmod.manifests()[take.below(3)])
    for _ in range(1 + take.below(6)):
        *sections, key = take.choice(_PATHS)
        parent = doc
        for name in sections:
            if not isinstance(parent.get(name), dict):
                parent[name] = {}
            parent = parent[name]
        if take.below(8) == 0:
            parent.pop(key, None)
        else:
            parent[key] = _value(take, depth=0)
    text = json.dumps(doc, allow_nan=True)
    if take.below(16) == 0:  # one value replaced by deeply nested brackets (parser recursion)
        depth = take.choice((10, 1000, 100_000))
        text = text.replace('"labels":', f'"labels": {"[" * depth}{"]" * depth}, "x":', 1)
    return text


def _value(take: Take, depth: int) -> object:
    kind = take.below(10)
    if kind == 0:
        return None
    if kind == 1:
        return take.flag()
    if kind in (2, 3):
        return take.number()
    if kind == 4:
        return take.choice(_STRINGS)
    if kind == 5 and depth < 3:
        return [_value(take, depth + 1) for _ in range(take.below(4))]
    if kind == 6 and depth < 3:
        return {take.choice(_PATHS)[-1]: _value(take, depth + 1) for _ in range(take.below(4))}
    if kind in (7, 8):  # what mean/std/labels/accepts take: a list of one or three numbers or strings
        make = take.number if kind == 7 else (lambda: take.choice(_STRINGS))
        return [make() for _ in range(take.choice((1, 3, 2, 0)))]
    return take.choice(([], {}, [[]], [None]))


def one_input(data: bytes) -> None:
    text = document(data)
    m = expect_edgedx_error(lambda: manifest.from_json(text, "fuzz"))
    if m is None:
        return
    again = expect_edgedx_error(lambda: manifest.from_json(m.to_json(), "round trip"))
    if again != m:
        raise Finding(f"manifest does not round-trip through to_json: {m.to_json()[:300]}")
    for image in _IMAGES:
        x = expect_edgedx_error(lambda image=image: apply(image, m.preprocess))
        if x is None or x.shape != m.preprocess.sample_shape() or not np.isfinite(x).all():
            raise Finding(f"a validated manifest gives a refused or non-finite model input: {m.to_json()[:300]}")
