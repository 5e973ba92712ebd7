"""The PNG of a benchmarks.run result: latency percentiles and throughput, one bar per row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {
    "edgedx": "#1f77b4",
    "onnxruntime": "#7f7f7f",
    "serial-loop": "#d62728",
    "openvino": "#9467bd",
    "torch": "#ff7f0e",
}


def draw(out: dict[str, Any], path: Path) -> None:
    """Left: p50 bar per row with a line to p99 and a tick at p90 (ms per batch, log scale).
    Right: images per second. Model-only and end-to-end rows are drawn in separate groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in out["rows"] if not r.get("skipped")]
    rows.sort(key=lambda r: (r["mode"] != "model", r["precision"], r["batch_size"], r["runtime"]))
    labels = [r["row"] for r in rows]
    y = list(range(len(rows)))[::-1]
    colors = [COLORS.get(r["runtime"], "#2ca02c") for r in rows]
    fig, (ax_l, ax_t) = plt.subplots(1, 2, figsize=(13, 0.38 * len(rows) + 1.8), sharey=True)
    p50 = [r["latency_ms"]["median"] for r in rows]
    p90 = [r["latency_ms"]["p90"] for r in rows]
    p99 = [r["latency_ms"]["p99"] for r in rows]
    ax_l.barh(y, p50, color=colors, alpha=0.85)
    ax_l.hlines(y, p50, p99, color="black", linewidth=1)
    ax_l.plot(p90, y, "|", color="black", markersize=8, label="p90")
    ax_l.plot(p99, y, "x", color="black", markersize=5, label="p99")
    ax_l.set_xscale("log")
    ax_l.set_xlabel("latency per batch, ms (bar p50, | p90, x p99)")
    ax_l.set_yticks(y, labels, fontsize=8)
    ax_l.legend(loc="lower right", fontsize=8)
    ips = [r["throughput_ips"] for r in rows]
    ax_t.barh(y, ips, color=colors, alpha=0.85)
    for yi, v in zip(y, ips):
        ax_t.text(v, yi, f" {v:.0f}", va="center", fontsize=7)
    ax_t.set_xlabel("throughput, images/s")
    split = sum(r["mode"] == "model" for r in rows)
    if 0 < split < len(rows):
        for ax in (ax_l, ax_t):
            ax.axhline(len(rows) - split - 0.5, color="gray", linestyle="--", linewidth=0.8)
    m = out["machine"]
    fig.suptitle(
        f"edgedx benchmark, {m['cpu']}, {m['usable_cores']} cores, {m['date']} (model-only above the line, end-to-end below)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
