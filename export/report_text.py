"""How the export stage's reports read on a terminal (``eval``, ``export verify``) and as JSON."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

from edgedx.outputs import say


def eval_text(report: dict[str, Any]) -> str:
    """The human-readable form of an ``edgedx eval`` report."""
    out: list[str] = []
    out.append(f"model        {report['model']} ({report['backend']})")
    out.append(f"data         {report['data']}" + (f" [{report['split']}]" if report["split"] else "") + f"  n={report['n']}"
               + (f"  skipped={report['skipped']}" if report["skipped"] else ""))
    if report["threshold"] is not None:
        out.append(f"decision     {report['positive_label']} when p >= {report['threshold']:.4f}")
    keys = ("accuracy", "auc", "sensitivity", "specificity", "ppv", "npv", "f1", "macro_recall", "brier", "ece")
    for key in keys:
        if key in report:
            ci = report.get(f"{key}_ci")
            out.append(f"{key:12} {num(report[key])}" + (f"  95% CI [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""))
    out.append(confusion_text(report["labels"], report["confusion"]))
    if "plot" in report:
        out.append(f"plot         {report['plot']}")
    if "heatmap_summary" in report:
        h = report["heatmap_summary"]
        out.append(f"heatmaps     mass on the {h['border_band']:.0%} border band {h['all']['border']:.3f} (uniform {h['uniform']['border']:.3f}), "
                   f"in the corners {h['all']['corners']:.3f} (uniform {h['uniform']['corners']:.3f}); "
                   f"border-heavy maps {h['border_heavy']:.1%}")
        for label, part in h["by_label"].items():
            out.append(f"  {label:10} border {part['border']:.3f}  corners {part['corners']:.3f}  n={part['n']}")
    return "\n".join(out)


def verify_text(r: dict[str, Any]) -> str:
    """The human-readable form of an ``edgedx export verify`` report."""
    ref, cand = r["reference"], r["candidate"]
    lines = [
        f"reference  {ref['model']} ({ref['backend']})",
        f"candidate  {cand['model']} ({cand['backend']})",
        f"data       {r['data']}" + (f" [{r['split']}]" if r["split"] else "") + f"  n={r['n']}"
        + (f"  threshold {r['threshold']:.4f}" if r["threshold"] is not None else ""),
        f"flips      {r['flips']['count']} ({r['flips']['rate']:.2%})   top-1 agreement {r['top1_agreement']:.4f}",
        f"drift      mean {r['score_drift']['mean_abs']:.2e}  max {r['score_drift']['max_abs']:.2e} ({r['score_drift']['over']})",
        f"{'':11} {'reference':>10} {'candidate':>10} {'change':>9}",
    ]
    for key in ("auc", "accuracy", "sensitivity", "specificity", "f1"):
        if ref.get(key) is not None or cand.get(key) is not None:
            d = r["delta"].get(key)
            lines.append(f"{key:11} {num(ref.get(key)):>10} {num(cand.get(key)):>10} {'' if d is None else f'{d:+.4f}':>9}")
    for item in r.get("flipped", []):
        lines.append(f"flipped    {item['file']}  (truth {item['truth']}): {val(item['reference'])} -> {val(item['candidate'])}")
    near = r.get("near_threshold")
    if near and near["count"]:
        lines.append(f"near       {near['count']} more within {near['margin']} of the threshold (next to flip):")
        for item in near["files"][:10]:
            lines.append(f"           {item['file']}  (truth {item['truth']}): {val(item['reference'])} / {val(item['candidate'])}")
    g = r["gate"]
    lines.append("gate       PASSED" if g["passed"] else "gate       FAILED: " + "; ".join(g["failures"]))
    return "\n".join(lines)


def confusion_text(labels: list[str], confusion: list[list[int]]) -> str:
    width = max(8, *(len(x) for x in labels)) + 1
    head = "confusion    " + "true \\ pred".ljust(width) + "".join(x.rjust(width) for x in labels)
    rows = ["             " + label.ljust(width) + "".join(str(v).rjust(width) for v in row) for label, row in zip(labels, confusion)]
    return "\n".join([head, *rows])


def val(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_json(obj: Any) -> None:
    say(json.dumps(obj, default=json_default))


def json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, Enum)):
        return str(obj.value if isinstance(obj, Enum) else obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
