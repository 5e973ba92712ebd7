"""What a Jetson exposes about its power mode and clocks, for ``edgedx bench --json``.

Benchmarks on Jetson mean little without the nvpmodel mode and the clocks they ran at. Everything is
read from files (no ``nvpmodel`` or ``jetson_clocks`` call, no root needed for most of it); what the
system does not expose is simply absent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_GPU_DEVFREQ = ("sys/class/devfreq/17000000.gpu", "sys/class/devfreq/17000000.ga10b", "sys/class/devfreq/57000000.gpu",
                "sys/devices/gpu.0/devfreq/17000000.gpu")


def jetson_facts(root: str | Path = "/") -> dict[str, Any] | None:
    """Power mode and clocks of this Jetson; None elsewhere.

    Args:
        root: the filesystem root (tests point it at a fake tree).
    """
    root = Path(root)
    release = _read(root / "etc/nv_tegra_release")
    model = _read(root / "proc/device-tree/model")
    if release is None and (model is None or "jetson" not in model.lower()):
        return None
    facts: dict[str, Any] = {"model": model.strip("\x00 \n") if model else None}
    if release and (m := re.search(r"R(\d+).*REVISION:\s*([\d.]+)", release)):
        facts["l4t"] = f"{m.group(1)}.{m.group(2)}"
    status = _read(root / "var/lib/nvpmodel/status")
    if status and (m := re.search(r"pmode:(\d+)", status)):
        facts["power_mode"] = int(m.group(1))
    conf = _read(root / "etc/nvpmodel.conf")
    if conf and "power_mode" in facts:
        names = dict(re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", conf))
        facts["power_mode_name"] = names.get(str(facts["power_mode"]))
    clocks: dict[str, Any] = {}
    for gpu in _GPU_DEVFREQ:
        freq = _read_int(root / gpu / "cur_freq")
        if freq is not None:
            clocks["gpu_hz"] = freq
            clocks["gpu_max_hz"] = _read_int(root / gpu / "max_freq")
            break
    cpus = sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"))
    if cpus:
        clocks["cpu_khz"] = [_read_int(p) for p in cpus]
    emc = _read_int(root / "sys/kernel/debug/bpmp/debug/clk/emc/rate")
    if emc is not None:
        clocks["emc_hz"] = emc
    facts["clocks"] = {k: v for k, v in clocks.items() if v is not None}
    return facts


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None
