"""Read an ONNX file's metadata without the ``onnx`` package or an inference session.

An ONNX file is a protobuf ``ModelProto``. Its ``metadata_props`` (field 14) are
``StringStringEntryProto`` messages (key = 1, value = 2). Walking the top-level fields and skipping
the graph by its length prefix costs microseconds, so the manifest can be read (and a file that is
not ONNX at all recognised) before any backend is loaded.
"""

from __future__ import annotations

import stat
from pathlib import Path

from edgedx.errors import ModelError
from edgedx.files import kind, read_regular, reason
from edgedx.limits import MAX_MODEL_SIZE
from edgedx.text import printable

_METADATA_PROPS = 14
_IR_VERSION = 1
_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model at ``path``.

    Raises:
        ModelError: the file cannot be read or is not an ONNX model.
    """
    path = Path(path)
    data = _read(path)
    try:
        fields = dict(_top_level_fields(data))
        metadata: dict[str, str] = {}
        for number, value in _iter_fields(data):
            if number == _METADATA_PROPS:
                entry = dict(_iter_fields(_message(value)))
                metadata[_text(entry.get(1, b""))] = _text(entry.get(2, b""))
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ModelError(f"{path} is not an ONNX model ({exc})") from None
    if _IR_VERSION not in fields or _GRAPH not in fields:
        raise ModelError(f"{path} is not an ONNX model (no ir_version or graph)")
    return metadata


def external_data_locations(path: str | Path) -> list[str]:
    """The ``location`` of every graph initializer stored outside the file.

    Raises:
        ModelError: the file cannot be read or is not an ONNX model.
    """
    data = _read(Path(path))
    out = []
    try:
        for number, graph in _iter_fields(data):
            if number != _GRAPH or not isinstance(graph, memoryview):
                continue
            for gnum, tensor in _iter_fields(graph):
                if gnum != _GRAPH_INITIALIZER or not isinstance(tensor, memoryview):
                    continue
                fields = list(_iter_fields(tensor))
                if not any(n == _TENSOR_DATA_LOCATION and v == _EXTERNAL for n, v in fields):
                    continue
                for n, entry in fields:
                    if n == _TENSOR_EXTERNAL_DATA:
                        kv = dict(_iter_fields(_message(entry)))
                        if _text(kv.get(1, b"")) == "location":
                            out.append(_text(kv.get(2, b"")))
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ModelError(f"{path} is not an ONNX model ({exc})") from None
    return out


def check_external_data(path: str | Path) -> None:
    """Refuse a model whose external data would be read from outside its own folder.

    Raises:
        ModelError: a location is absolute or climbs out of the model's folder.
    """
    path = Path(path)
    folder = path.resolve().parent
    for location in external_data_locations(path):
        target = (folder / location).resolve()
        if Path(location).is_absolute() or folder not in (target, *target.parents):
            raise ModelError(f"{path} refers to external data outside its folder ({location!r}); refusing to load it")
        try:
            mode = target.stat().st_mode
        except OSError:
            continue  # missing: ONNX Runtime says so
        if not stat.S_ISREG(mode):  # ONNX Runtime would block on a FIFO or read a device forever
            raise ModelError(f"{path}'s external data {location!r} is not a regular file ({kind(mode)}); refusing to load it")


def _read(path: Path) -> bytes:
    """The model file's bytes: a regular file within protobuf's 2 GiB limit."""
    try:
        return read_regular(path, MAX_MODEL_SIZE)
    except OSError as exc:
        raise ModelError(f"cannot read model {printable(path)}: {reason(exc)}") from None


def _message(value: object) -> memoryview:
    """A length-delimited field's bytes; anything else means the file is not what it claims."""
    if not isinstance(value, memoryview):
        raise ValueError("expected an embedded message")
    return value


def _text(value: object) -> str:
    """A string field (never ``bytes(n)`` on a number: that would allocate n bytes)."""
    if isinstance(value, bytes) and not value:
        return ""
    return bytes(_message(value)).decode()


def _top_level_fields(data: bytes):
    for number, value in _iter_fields(data):
        yield number, value if not isinstance(value, memoryview) else len(value)


def _iter_fields(data: bytes | memoryview):
    """Yield ``(field_number, value)``: ints for varints, memoryviews for length-delimited fields."""
    buf = memoryview(data)
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _WIRE_LEN:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("truncated field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (_WIRE_I64, _WIRE_I32):
            size = 8 if wire == _WIRE_I64 else 4
            if pos + size > end:
                raise ValueError("truncated field")
            value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
