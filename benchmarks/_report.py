"""Numbers derived from benchmarks.run's rows: achieved GFLOP/s, the CPU-work floor, the goal
checks of the throughput issue, and the text table."""

from __future__ import annotations

from typing import Any

from benchmarks import _common as C

# The throughput issues' goals.
OVERHEAD_BAND = (0.90, 1.10)  # edgedx model-only latency / bare ONNX Runtime latency
SERIAL_SPEEDUP = 1.0  # edgedx end-to-end throughput / the plain serial loop's, in every interleaved pair
SERIAL_SPEEDUP_GOAL = 1.15  # the stretch goal, reported beside it
FLOOR_SHARE = 95.0  # edgedx end-to-end throughput as % of the CPU-work floor's, in every pair
OPENVINO_OVERHEAD = 1.05  # edgedx's OpenVINO backend model-only latency / bare OpenVINO f32


def add_flops(row: dict[str, Any], models: dict[str, Any], peaks: dict[str, Any]) -> None:
    """Achieved GFLOP/s of a model-only row (at its median latency), and its share of the measured
    peak of its precision (the int8 MatMulInteger peak for INT8 rows)."""
    if row.get("skipped") or row["mode"] != "model" or row["precision"] not in models:
        return
    per_image = models[row["precision"]]["flops_per_image"]
    row["gflops"] = per_image * row["batch_size"] / (row["latency_ms"]["median"] / 1000) / 1e9
    peak = peaks.get("ort_int8_gops") if row["precision"] == "int8" else peaks["fp32_reference_gflops"]
    row["pct_of_peak"] = 100 * row["gflops"] / peak if peak else None


def find(rows: list[dict], runtime: str, prec: str, mode: str, batch: int) -> dict | None:
    for r in rows:
        if r.get("skipped"):
            continue
        if (r["runtime"], r["precision"], r["mode"], r["batch_size"]) == (runtime, prec, mode, batch):
            return r
    return None


def pairs(rows: list[dict], prec: str, e2e_batch: int) -> list[tuple[dict, dict]]:
    """(edgedx, serial-loop) end-to-end rows of the same interleaved repetition."""
    def of(runtime: str) -> dict[int, dict]:
        return {
            r.get("rep", 0): r for r in rows
            if not r.get("skipped") and (r["runtime"], r["precision"], r["mode"], r["batch_size"]) == (runtime, prec, "end-to-end", e2e_batch)
        }
    e, s = of("edgedx"), of("serial-loop")
    return [(e[k], s[k]) for k in sorted(e) if k in s]


def floor(rows: list[dict], pre_s: float, cores: int, e2e_batch: int) -> dict[str, Any]:
    """The CPU-work floor per image: edgedx model-only time per image at the end-to-end batch size,
    plus single-core decode + preprocess time divided by the cores (perfect overlap, no overhead)."""
    out: dict[str, Any] = {"decode_preprocess_ms_single_core": pre_s * 1000, "cores": cores}
    for prec in ("fp32", "int8"):
        model = find(rows, "edgedx", prec, "model", e2e_batch)
        e2e = find(rows, "edgedx", prec, "end-to-end", e2e_batch)
        if model is None or e2e is None:
            continue
        per_image = 1 / model["throughput_ips"] + pre_s / cores
        runs = [e for e, _ in pairs(rows, prec, e2e_batch)] or [e2e]
        out[prec] = {
            "floor_ms_per_image": per_image * 1000,
            "floor_ips": 1 / per_image,
            "edgedx_e2e_ips": [r["throughput_ips"] for r in runs],
            "pct_of_floor": min(100 * r["throughput_ips"] * per_image for r in runs),
        }
    return out


def checks(rows: list[dict], fl: dict[str, Any], e2e_batch: int) -> list[dict[str, Any]]:
    """The throughput issue's goals, as measured in this run (meaningful on a quiet machine only)."""
    out = []
    lo, hi = OVERHEAD_BAND
    for prec in ("fp32", "int8"):
        for b in sorted({r["batch_size"] for r in rows if r.get("mode") == "model"}):
            e, o = find(rows, "edgedx", prec, "model", b), find(rows, "onnxruntime", prec, "model", b)
            if e and o:
                ratio = e["latency_ms"]["median"] / o["latency_ms"]["median"]
                name = f"edgedx {prec} model-only b{b} / bare ORT (median latency)"
                out.append(_check(name, ratio, f"{lo:.2f}..{hi:.2f}", lo <= ratio <= hi))
        ratios = [e["throughput_ips"] / s["throughput_ips"] for e, s in pairs(rows, prec, e2e_batch)]
        if ratios:
            x = min(ratios)
            name = f"edgedx {prec} e2e / serial loop (throughput, worst of {len(ratios)} interleaved pairs)"
            out.append(_check(name, x, f">= {SERIAL_SPEEDUP} (goal {SERIAL_SPEEDUP_GOAL})", x >= SERIAL_SPEEDUP))
        if prec in fl:
            p = fl[prec]["pct_of_floor"]
            out.append(
                _check(f"edgedx {prec} e2e as % of the CPU-work floor (worst pair)", p, f">= {FLOOR_SHARE:g}", p >= FLOOR_SHARE)
            )
        for b in sorted({r["batch_size"] for r in rows if r.get("mode") == "model"}):
            e, o = find(rows, "edgedx-openvino", prec, "model", b), find(rows, "openvino", prec, "model", b)
            if e and o:
                ratio = e["latency_ms"]["median"] / o["latency_ms"]["median"]
                name = f"edgedx openvino {prec} model-only b{b} / bare OpenVINO f32 (median latency)"
                out.append(_check(name, ratio, f"<= {OPENVINO_OVERHEAD:.2f}", ratio <= OPENVINO_OVERHEAD))
    return out


def _check(name: str, value: float, goal: str, passed: bool) -> dict[str, Any]:
    return {"check": name, "value": value, "goal": goal, "pass": passed}


def render(out: dict[str, Any]) -> str:
    """The stdout report: machine line, one row per runtime/batch/mode, then the checks."""
    m, peaks = out["machine"], out["peaks"]
    flags = ", ".join(k for k, v in m["flags"].items() if v)
    head = (
        f"## edgedx benchmark, {m['date']}\n\n"
        f"{m['cpu']}, {m['usable_cores']} cores, load at start {m.get('load_average_at_start')}, flags: {flags}\n"
        f"peak: {peaks.get('fp32_reference_gflops', 0):.0f} GFLOP/s fp32, {peaks.get('ort_int8_gops') or 0:.0f} GOP/s "
        f"int8 ({peaks['n']}^3 matmul, best of {peaks['repeats']} x {peaks.get('measurements', 1)})\n"
    )
    table = []
    for r in out["rows"]:
        if r.get("skipped"):
            table.append([r["row"], None, None, None, None, None, None, None, r["skipped"]])
            continue
        lat, d = r["latency_ms"], r["backend_detail"]
        note = "; ".join(r.get("warnings", []))
        if d.get("INFERENCE_PRECISION_HINT"):
            note = f"hint {d['INFERENCE_PRECISION_HINT']}, convs {d['conv_fc_runtime_precision']}"
        table.append(
            [r["row"] + (f" #{r['rep']}" if "rep" in r else ""), r["mode"], lat["median"], lat["p90"], lat["p99"], r["throughput_ips"], r.get("gflops"),
             r.get("pct_of_peak"), note]
        )  # fmt: skip
    header = ["row", "mode", "p50 ms", "p90 ms", "p99 ms", "img/s", "GFLOP/s", "% peak", "note"]
    checks_t = C.md_table(
        ["check", "value", "goal", "pass"],
        [[c["check"], c["value"], c["goal"], "yes" if c["pass"] else "NO"] for c in out["checks"]],
    )
    fl = out["floor"]
    floor_line = (
        f"CPU-work floor: decode+preprocess {fl['decode_preprocess_ms_single_core']:.3f} ms/image on one core"
        + "".join(f"; {p} {fl[p]['floor_ips']:.0f} img/s" for p in ("fp32", "int8") if p in fl)
    )
    agree = out.get("openvino_agreement") or {}
    agree_line = "".join(
        f"\nOpenVINO vs ONNX Runtime, {p}: {a['decision_flips']} decision flips in {a['compared']} files, max score difference {a['max_score_diff']:.2e} ({a['precision']})"
        for p, a in agree.items() if a.get("compared")
    )
    notes = agree_line + "".join(f"\nnote: {n}" for n in out["notes"])
    return f"{head}\n{C.md_table(header, table)}\n\n{floor_line}\n\n{checks_t}\n{notes}"
