from __future__ import annotations

from edgedx.device_info import jetson_facts


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_not_a_jetson(tmp_path):
    assert jetson_facts(tmp_path) is None


def test_jetson_orin_power_mode_and_clocks(tmp_path):
    write(tmp_path, "etc/nv_tegra_release", "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic, EABI: aarch64\n")
    write(tmp_path, "proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    write(tmp_path, "var/lib/nvpmodel/status", "pmode:0002 fmode:quiet\n")
    write(tmp_path, "etc/nvpmodel.conf", "< POWER_MODEL ID=0 NAME=MAXN >\n< POWER_MODEL ID=2 NAME=30W >\n")
    write(tmp_path, "sys/class/devfreq/17000000.gpu/cur_freq", "624750000\n")
    write(tmp_path, "sys/class/devfreq/17000000.gpu/max_freq", "1300500000\n")
    for i, khz in enumerate((1190400, 729600)):
        write(tmp_path, f"sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq", f"{khz}\n")
    facts = jetson_facts(tmp_path)
    assert facts["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert facts["l4t"] == "36.4.0" and facts["power_mode"] == 2 and facts["power_mode_name"] == "30W"
    assert facts["clocks"] == {"gpu_hz": 624750000, "gpu_max_hz": 1300500000, "cpu_khz": [1190400, 729600]}
