"""Settings for ``classify`` and ``bench`` from a file and the environment.

A device deployment keeps its settings in ``edgedx.toml`` (in the working directory, or named with
``edgedx --config FILE`` or ``EDGEDX_CONFIG``) and in ``EDGEDX_*`` variables, not in a long command
line. Precedence, highest first: command line > environment > file > built-in defaults.

.. code-block:: toml

    model = "chest_xray_cnn_int8"      # top level: every command that has the option
    backend = "onnxruntime"
    threshold = 0.9

    [classify]                          # one table per command overrides the top level
    batch-size = 16
    audit = "/var/log/edgedx/audit.ndjson"

    [bench]
    batch-size = 1

Environment: ``EDGEDX_MODEL``, ``EDGEDX_BATCH_SIZE``, ... for every command, and
``EDGEDX_CLASSIFY_BATCH_SIZE``, ``EDGEDX_BENCH_MODEL``, ... for one command (those win).

The CLI hands the result to click as the ``default_map``: click itself then lets an option given on
the command line win. Only the standard library is imported here (``edgedx --help`` stays fast).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedx.errors import UsageError

FILE_NAME = "edgedx.toml"
ENV_PREFIX = "EDGEDX_"
ENV_CONFIG = "EDGEDX_CONFIG"


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _unit(value: Any) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    return int(value)


def _text(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError
    return str(value)


def _window(value: Any) -> str:
    """CENTER,WIDTH as the command line takes it; a TOML array [40, 400] is accepted too."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError
        return ",".join(str(_number(v)) for v in value)
    return _text(value)


#: Option name (as the command's parameter is called) -> (converter, what it must be).
KEYS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "model": (_text, "a path or a bundled model name"),
    "backend": (_text, "a backend name"),
    "threshold": (_unit, "a number in [0, 1]"),
    "window": (_window, "CENTER,WIDTH"),
    "batch_size": (_integer, "an integer"),
    "workers": (_integer, "an integer"),
    "output": (_text, "a file path"),
    "audit": (_text, "a file path"),
}
#: The commands settings apply to, and which keys each one takes.
COMMANDS: dict[str, tuple[str, ...]] = {
    "classify": ("model", "backend", "threshold", "window", "batch_size", "workers", "output", "audit"),
    "bench": ("model", "backend", "batch_size"),
}


@dataclass
class Settings:
    """Effective file and environment settings: ``values[command][key]`` and where each came from."""

    file: Path | None = None
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)

    def default_map(self) -> dict[str, dict[str, Any]]:
        """click's ``default_map``: per command, the values below the command line."""
        return {cmd: dict(v) for cmd, v in self.values.items() if v}


def find_file(explicit: str | Path | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """The config file to read: ``explicit``, else ``$EDGEDX_CONFIG``, else ``./edgedx.toml`` if present.

    Raises:
        UsageError: an explicitly named file does not exist.
    """
    env = os.environ if env is None else env
    named = explicit or env.get(ENV_CONFIG) or None
    if named:
        path = Path(named)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}")
        return path
    local = (cwd or Path.cwd()) / FILE_NAME
    return local if local.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file (tomllib on Python >= 3.11, tomli before).

    Raises:
        UsageError: unreadable or not TOML, with the parser's message.
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None


def load(explicit: str | Path | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    """Merge the file and the environment into per-command settings (environment wins).

    Raises:
        UsageError: unknown keys or tables, or values of the wrong type, naming where they came from.
    """
    env = os.environ if env is None else env
    path = find_file(explicit, env, cwd)
    settings = Settings(file=path, values={c: {} for c in COMMANDS}, sources={c: {} for c in COMMANDS})
    if path is not None:
        data = read_toml(path)
        top = {k: v for k, v in data.items() if not isinstance(v, dict)}
        for name, table in data.items():
            if isinstance(table, dict) and name not in COMMANDS:
                raise UsageError(f"{path}: unknown table [{name}] (known: {', '.join(f'[{c}]' for c in COMMANDS)})")
        _apply(settings, top, None, f"file {path}", lambda k: f"{path}: {k}")
        for cmd in COMMANDS:
            _apply(settings, data.get(cmd, {}), cmd, f"file {path} [{cmd}]", lambda k, c=cmd: f"{path}: [{c}] {k}")
    shared = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() in KEYS}
    _apply(settings, shared, None, "environment", lambda k: f"{ENV_PREFIX}{k.upper()}")
    for cmd in COMMANDS:
        prefix = f"{ENV_PREFIX}{cmd.upper()}_"
        own = {k[len(prefix):].lower(): v for k, v in env.items() if k.startswith(prefix)}
        _apply(settings, own, cmd, "environment", lambda k, p=prefix: f"{p}{k.upper()}")
    return settings


def _apply(settings: Settings, items: Mapping[str, Any], command: str | None, source: str, where: Callable[[str], str]) -> None:
    """Set each key on ``command`` (None: every command that takes it), after checking it."""
    for raw_key, raw_value in items.items():
        key = raw_key.replace("-", "_").lower()
        if key not in KEYS:
            raise UsageError(f"{where(raw_key)}: unknown setting (known: {', '.join(k.replace('_', '-') for k in KEYS)})")
        convert, expected = KEYS[key]
        try:
            value = convert(raw_value)
        except (TypeError, ValueError):
            raise UsageError(f"{where(raw_key)}: must be {expected}, got {raw_value!r}") from None
        targets = [command] if command else [c for c, keys in COMMANDS.items() if key in keys]
        for cmd in targets:
            if key not in COMMANDS[cmd]:
                raise UsageError(f"{where(raw_key)}: `edgedx {cmd}` has no such option")
            settings.values[cmd][key] = value
            settings.sources[cmd][key] = source


def effective(settings: Settings, defaults: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per command and key: the value a run gets without that option on its command line, and its source.

    Args:
        settings: from :func:`load`.
        defaults: the commands' own defaults, ``defaults[command][key]``.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cmd, keys in COMMANDS.items():
        out[cmd] = {}
        for key in keys:
            if key in settings.values.get(cmd, {}):
                out[cmd][key] = {"value": settings.values[cmd][key], "source": settings.sources[cmd][key]}
            else:
                out[cmd][key] = {"value": defaults.get(cmd, {}).get(key), "source": "default"}
    return out
