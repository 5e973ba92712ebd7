"""``--arch``: the model class a state dict is loaded into.

Three spellings:

- a name in :data:`export.models.ARCHITECTURES` (``screening_cnn``, ``resnet``, and the
  torchvision-layout ``resnet18``/``resnet34``/``resnet50``, whose class count and input channels
  are read from the weights);
- ``path/to/file.py:ClassName``: the user's own file (its folder is importable while it loads);
- ``package.module:ClassName``: an importable module (the current folder included).

Loading is strict: a mismatch names the missing and unexpected keys and the shapes that differ.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from edgedx.errors import ModelError, UsageError, first_line

log = logging.getLogger("edgedx")

#: Keys listed per kind in a mismatch message.
SHOWN_KEYS = 8
ARCH_HELP = "a name ({names}), path/to/file.py:ClassName or package.module:ClassName"


def names() -> list[str]:
    from export.models import ARCHITECTURES

    return sorted(ARCHITECTURES)


def build(architecture: str, state: Mapping[str, Any], arch_kwargs: Mapping[str, Any] | None = None) -> Any:
    """An ``nn.Module`` of ``architecture`` with ``state`` loaded.

    Raises:
        UsageError: the architecture cannot be found, imported or constructed with ``arch_kwargs``.
        ModelError: the state dict does not fit it (missing/unexpected keys, shape mismatches).
    """
    from export.models import ARCHITECTURES, SHAPED_BY_WEIGHTS

    kwargs = dict(arch_kwargs or {})
    state = _strip_prefix(state)
    if architecture in ARCHITECTURES:
        factory = ARCHITECTURES[architecture]
        if architecture in SHAPED_BY_WEIGHTS:
            kwargs = {**_shape_from_weights(state), **kwargs}
    elif ":" in architecture:
        factory = _import_class(architecture)
    else:
        raise UsageError(f"--arch {architecture!r} is unknown: give " + ARCH_HELP.format(names=", ".join(names())))
    try:
        module = factory(**kwargs)
    except TypeError as exc:
        raise UsageError(f"cannot build {architecture}({_kw(kwargs)}): {first_line(exc)}; pass its arguments with --arch-kwargs") from None
    load_strict(module, state, f"{architecture}({_kw(kwargs)})")
    return module


def load_strict(module: Any, state: Mapping[str, Any], what: str) -> None:
    """``module.load_state_dict(state)``, failing with every missing/unexpected key and shape named.

    Raises:
        ModelError: naming the differences.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs (file vs model)", shapes)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
                parts.append(f"{label}: {', '.join(keys[:SHOWN_KEYS])}{more}")
        raise ModelError(f"the state dict does not fit {what}: " + "; ".join(parts))
    module.load_state_dict(state)


def _shape_from_weights(state: Mapping[str, Any]) -> dict[str, int]:
    """torchvision ResNets: ``num_classes`` from ``fc.weight``, ``in_channels`` from ``conv1.weight``."""
    out = {}
    if "fc.weight" in state:
        out["num_classes"] = int(state["fc.weight"].shape[0])
    if "conv1.weight" in state:
        out["in_channels"] = int(state["conv1.weight"].shape[1])
    return out


def _strip_prefix(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """``module.``-prefixed keys (saved from DataParallel/DDP) lose the prefix."""
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        log.warning("the state dict was saved from a DataParallel wrapper: removed the 'module.' prefix of its keys")
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _import_class(spec: str) -> Any:
    """``file.py:Class`` or ``package.module:Class`` -> the class (or factory function)."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise UsageError(f"--arch {spec!r}: expected path/to/file.py:ClassName or package.module:ClassName")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"--arch: {path} not found")
        module_name = f"edgedx_user_arch_{abs(hash(str(path.resolve())))}"
        with _importable(path.resolve().parent):
            spec_obj = importlib.util.spec_from_file_location(module_name, path)
            if spec_obj is None or spec_obj.loader is None:
                raise UsageError(f"--arch: cannot import {path}")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[module_name] = module
            try:
                spec_obj.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(module_name, None)
                raise UsageError(f"--arch: importing {path} failed: {type(exc).__name__}: {first_line(exc)}") from None
    else:
        with _importable(Path.cwd()):
            try:
                module = importlib.import_module(where)
            except ImportError as exc:
                raise UsageError(f"--arch: cannot import {where}: {first_line(exc)}") from None
    found = getattr(module, name, None)
    if found is None or not callable(found):
        raise UsageError(f"--arch: {where} has no class {name}")
    return found


@contextmanager
def _importable(folder: Path) -> Iterator[None]:
    added = str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        if added and str(folder) in sys.path:
            sys.path.remove(str(folder))


def _kw(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
