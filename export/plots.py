"""``edgedx eval --plot FILE.png``: ROC curve with the operating point, confusion matrix and
reliability diagram in one figure. Workstation side: matplotlib is imported only here, when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.to_onnx import require


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Draw ``report`` (from :func:`edgedx.evaluate.evaluate`) into ``path`` (PNG, SVG or PDF by suffix).

    Raises:
        BackendUnavailable: matplotlib is not installed.
    """
    require("matplotlib", "pip install matplotlib (or 'edgedx[export]') for --plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from export.contract import staged

    path = Path(path)
    fig, (roc_ax, cm_ax, rel_ax) = plt.subplots(1, 3, figsize=(15, 4.8))
    _roc(roc_ax, report)
    _confusion(cm_ax, report)
    _reliability(rel_ax, report)
    fig.suptitle(f"{Path(report['model']).name} on {Path(report['data']).name}  (n={report['n']})")
    fig.tight_layout()
    with staged(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return path


def _roc(ax: Any, r: dict[str, Any]) -> None:
    roc = r.get("roc")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    if roc:
        auc, ci = r.get("auc"), r.get("auc_ci")
        label = f"AUC {auc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        ax.plot(roc["fpr"], roc["tpr"], lw=2, label=label)
        sens, spec = r.get("sensitivity"), r.get("specificity")
        if sens is not None and spec is not None:
            ax.plot([1 - spec], [sens], "o", color="crimson", label=f"threshold {r['threshold']:.3f}: sens {sens:.3f}, spec {spec:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "ROC: binary models only", ha="center", va="center")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))


def _confusion(ax: Any, r: dict[str, Any]) -> None:
    cm = r["confusion"]
    labels = r["labels"]
    ax.imshow(cm, cmap="Blues")
    top = max(max(row) for row in cm) or 1
    for i, row in enumerate(cm):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")


def _reliability(ax: Any, r: dict[str, Any]) -> None:
    rel = r["reliability"]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    bins = rel["bins"]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["observed"] for b in bins], width=[b["high"] - b["low"] for b in bins], alpha=0.35, edgecolor="k", label="observed")
    ax.plot([b["confidence"] for b in bins], [b["observed"] for b in bins], "o-", color="darkorange", label="mean predicted vs observed")
    ax.set(xlabel=f"predicted probability ({rel['over']})", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title=f"reliability: ECE {rel['ece']:.3f}, Brier {r['brier']:.3f}")
    ax.legend(loc="upper left", fontsize=8)
