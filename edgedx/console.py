"""What edgedx's command line and the export stage's share: option enums, stderr logging, and
loading the export stage itself.

Kept free of heavy imports (numpy included): ``edgedx --help`` imports this module.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from enum import Enum
from pathlib import Path
from types import ModuleType

from edgedx.errors import UsageError
from edgedx.text import OneLineFormatter

log = logging.getLogger("edgedx")

#: The export stage ships beside this package (``export/`` at the top level of the distribution).
EXPORT_INIT = Path(__file__).resolve().parent.parent / "export" / "__init__.py"


class Backend(str, Enum):
    """``--backend`` values: ``auto`` and every name in :data:`edgedx.backends.BACKENDS`."""

    auto = "auto"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    tensorrt = "tensorrt"


#: Verbosity from the command line: ``--log-level`` (None: not given) and the count of ``-v``.
VERBOSITY: dict[str, int | None] = {"level": None, "verbose": 0}


def log_to_stderr(quiet: bool = False) -> None:
    """Warnings of the ``edgedx`` logger to the current stderr (never stdout), once per run; ``-v``,
    ``-vv`` and ``--log-level`` (:data:`VERBOSITY`) lower the level, ``quiet`` raises it."""
    for handler in [h for h in log.handlers if getattr(h, "_edgedx_cli", False)]:
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("edgedx: %(levelname)s: %(message)s"))
    handler._edgedx_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    level = VERBOSITY["level"]
    if level is None:
        level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(VERBOSITY["verbose"] or 0, 2)]
    log.setLevel(level)
    log.propagate = False


def model_name(value: Path | None) -> Path | None:
    """typer callback: a bundled model's name (``chest_xray_cnn_fp32``) -> its path; files win over names."""
    from edgedx import bundled

    return None if value is None else bundled.resolve(value)


def export_package(init: Path = EXPORT_INIT) -> ModuleType | None:
    """The export stage installed with edgedx, imported as ``export`` from its own location.

    The name ``export`` is common: under ``python -m edgedx`` the working directory comes first on
    ``sys.path``, so a user's ``export.py`` there would otherwise stand in for the stage. This
    imports the package from the file beside edgedx instead, and puts it (not the user's module)
    under ``sys.modules["export"]``, so ``import export.cli`` afterwards finds the real submodules.

    Returns:
        The package, or None for a runtime-only install that has no export stage.
    """
    if not init.is_file():
        return None
    current = sys.modules.get("export")
    if current is not None and _same_file(getattr(current, "__file__", None), init):
        return current
    for name in [n for n in sys.modules if n == "export" or n.startswith("export.")]:
        del sys.modules[name]  # someone else's module of that name: not the stage
    spec = importlib.util.spec_from_file_location("export", init, submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:  # pragma: no cover - a file that exists always has a spec
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["export"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["export"]
        raise
    return module


def _same_file(path: str | None, init: Path) -> bool:
    return path is not None and Path(path).resolve() == init


def number(text: str, what: str) -> float:
    """A number or a fraction (``0.5``, ``1/255``); a :class:`UsageError` naming ``what`` otherwise."""
    from fractions import Fraction

    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(Fraction(num.strip())) / float(Fraction(den.strip()))
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{what} must be a number or a fraction such as 1/255, got {text.strip()!r}") from None


def usage_error_types() -> tuple[type[Exception], ...]:
    """The exception class typer raises for usage errors: click's, or typer's own vendored copy (>= 0.26)."""
    try:
        from typer.exceptions import TyperException

        return (TyperException,)
    except ImportError:
        import click

        return (click.ClickException,)
