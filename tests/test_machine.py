"""Machine facts: CPU features on x86-64 (``flags``) and aarch64 (``Features``), versions, CUDA."""

from __future__ import annotations

import platform

from edgedx import machine

JETSON_ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd42
CPU revision\t: 1

processor\t: 1
Features\t: fp asimd
"""

XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 fma avx512f avx512_vnni amx_tile amx_int8
"""


def test_aarch64_features_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(platform, "processor", lambda: "aarch64")
    path = tmp_path / "cpuinfo"
    path.write_text(JETSON_ORIN)
    info = machine.cpu_info(path)
    assert info["arch"] == "aarch64" and info["model"] == "ARM Cortex-A78AE"
    assert info["features"] == {"asimd": True, "asimdhp": True, "fphp": True, "asimddp": True, "i8mm": False,
                                "bf16": False, "sve": False, "sve2": False}


def test_x86_flags_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    path = tmp_path / "cpuinfo"
    path.write_text(XEON)
    info = machine.cpu_info(path)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["features"]["avx512_vnni"] and info["features"]["amx_int8"] and not info["features"]["avx_vnni"]


def test_missing_cpuinfo_is_not_an_error(tmp_path):
    info = machine.cpu_info(tmp_path / "absent")
    assert info["usable_cores"] >= 1 and not any(info["features"].values())


def test_benchmarks_machine_info_uses_the_same_detection(tmp_path, monkeypatch):
    from benchmarks import _common

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    real = machine.cpu_info
    monkeypatch.setattr(machine, "cpu_info", lambda: real(tmp_path / "cpuinfo"))
    (tmp_path / "cpuinfo").write_text(JETSON_ORIN)
    info = _common.machine_info()
    assert info["flags"]["asimddp"] is True and info["arch"] == "aarch64"


def test_versions_and_header_lines():
    import numpy

    v = machine.versions()
    assert v["numpy"] == numpy.__version__ and v["python"] == platform.python_version() and v["edgedx"]
    facts = machine.header(gpu=False)
    lines = machine.header_lines(facts)
    assert lines[0].startswith("cpu ") and lines[1] == "gpu      none" and f"numpy {numpy.__version__}" in lines[2]
