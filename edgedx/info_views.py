"""``edgedx info --versions`` and ``edgedx info --config``: the data and its plain-text form."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from edgedx import config, machine


def versions() -> tuple[str, dict[str, Any]]:
    """Every runtime library, CUDA driver and runtime, ONNX Runtime providers and backends here."""
    data = machine.runtime_report()
    cuda = data["cuda"]
    lines = [f"{k:14} {v or '-'}" for k, v in data["versions"].items()]
    lines += [
        f"{'cuda driver':14} {cuda['driver'] or '- (no NVIDIA driver)'}",
        f"{'cuda runtime':14} {cuda['runtime'] or '-'}",
        f"{'gpu':14} {data['gpu'] or '-'}",
        f"{'ort providers':14} {', '.join(data['onnxruntime_providers'] or []) or '-'}",
        f"{'cpu':14} {data['cpu']['model']} ({data['cpu']['arch']}, {data['cpu']['usable_cores']} usable cores)",
        f"{'platform':14} {data['platform']}",
    ]
    lines += [f"{'backend ' + k:14} {v}" for k, v in data["backends"].items()]
    return "\n".join(lines), data


def settings(explicit: str | Path | None, root_command: Any) -> tuple[str, dict[str, Any]]:
    """What ``classify`` and ``bench`` get from the file and the environment, and from where.

    Args:
        explicit: the ``--config`` given on the command line, if any.
        root_command: the CLI's click group, to read each command's own defaults from.
    """
    loaded = config.load(explicit)
    defaults = {cmd: _defaults(root_command, cmd) for cmd in config.COMMANDS}
    table = config.effective(loaded, defaults)
    data = {"file": str(loaded.file) if loaded.file else None, "precedence": "command line > environment > file > defaults",
            "commands": table}
    lines = [
        f"config file  {loaded.file or f'none (looked for ./{config.FILE_NAME} and ${config.ENV_CONFIG})'}",
        f"precedence   {data['precedence']}",
    ]
    for cmd, keys in table.items():
        lines.append(f"[{cmd}]")
        width = max(len(k) for k in keys)
        for key, entry in keys.items():
            value = "-" if entry["value"] is None else entry["value"]
            lines.append(f"  {key.replace('_', '-'):{width}}  {value!s:40}  {entry['source']}")
    return "\n".join(lines), data


def _defaults(root_command: Any, name: str) -> dict[str, Any]:
    command = getattr(root_command, "commands", {}).get(name)
    out: dict[str, Any] = {}
    for param in getattr(command, "params", []):
        value = param.default
        if callable(value):
            continue
        out[param.name] = value.value if isinstance(value, Enum) else value
    return out
