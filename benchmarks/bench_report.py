"""Turn a run's JSON lines into a markdown table and a PNG chart."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

ORDER = ("flagembedding", "flagembedding-fp16", "reference", "st-onnx", "st-onnx-o2", "st-onnx-o3", "ort-fp32",
         "ort-int8", "ort-cuda-fp32", "ort-cuda-fp16", "ort-tensorrt-fp16", "trt-engine-fp16")
BASELINES = ("flagembedding", "flagembedding-fp16")
ST = ("st-onnx", "st-onnx-o2", "st-onnx-o3")
# The CPU targets (mid models, same run): runtime fp32 and int8 pairs/s over FlagEmbedding fp32's, the encoder over
# sentence-transformers' best ONNX export, useful FLOPs over ONNX Runtime's own MatMul rate, int8's ranking bar.
TARGETS = {"fp32_vs_flagembedding": 2.5, "encoder_vs_st": 1.15, "efficiency": 0.65, "int8_vs_flagembedding": 3.5,
           "int8_spearman": 0.99}


def _by(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == kind]


def _order(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


def best_probe(records: list[dict[str, Any]]) -> dict[str, float]:
    probes = _by(records, "gemm-probe")
    return {"fp32_gflops": max((p["fp32_gflops"] for p in probes), default=float("nan")),
            "int8_gops": max((p["int8_gops"] for p in probes), default=float("nan"))}


def _ratio(value: float | None, base: float | None) -> str:
    return "" if value is None or not base else f"{value / base:.2f}x"


def _parity(contender: dict[str, Any] | None, full: dict[str, Any] | None) -> str:
    source = full or (contender or {}).get("gate")
    if not source:
        return ""
    diff = source["max_abs_diff"]
    return f"{diff:.1e} / {source['spearman']:.4f}"


def main_table(records: list[dict[str, Any]]) -> list[str]:
    probe = best_probe(records)
    thr = {(r["kind"], r["contender"]): r for r in _by(records, "throughput")}
    lat = {(r["kind"], r["contender"]): r for r in _by(records, "latency")}
    ok = {(r["kind"], r["contender"]): r for r in _by(records, "contender") if r["status"] == "ok"}
    lines = ["| kind | contender | max abs diff / Spearman vs reference | pairs/s | vs FlagEmbedding | "
             "latency p50 / p90 / p99 (ms) | p50 vs FlagEmbedding | useful GFLOP/s | % of matmul rate | "
             "tokens fed / real |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    kinds = list(dict.fromkeys(r["kind"] for r in _by(records, "kind")))
    for kind in kinds:
        names = sorted({n for k, n in list(thr) + list(lat) if k == kind}, key=_order)
        base_t = next((thr[(kind, b)]["pairs_per_s"] for b in BASELINES if (kind, b) in thr), None)
        base_l = next((lat[(kind, b)]["p50"] for b in BASELINES if (kind, b) in lat), None)
        for name in names:
            t, lt = thr.get((kind, name)), lat.get((kind, name))
            pps = f"{t['pairs_per_s']:.1f}" if t else ""
            gflops = f"{t['useful_gflops']:.1f}" if t else ""
            eff = f"{100 * t['useful_gflops'] / probe['fp32_gflops']:.0f}%" if t else ""
            fed = f"{t['fed_tokens'] / t['real_tokens']:.2f}" if t and t.get("fed_tokens") else ""
            latency = f"{1e3 * lt['p50']:.0f} / {1e3 * lt['p90']:.0f} / {1e3 * lt['p99']:.0f}" if lt else ""
            speedup = "" if not lt or not base_l else f"{base_l / lt['p50']:.2f}x"
            lines.append(f"| {kind} | {name} | {_parity(ok.get((kind, name)), (t or {}).get('parity_full_set'))} | "
                         f"{pps} | {_ratio(t['pairs_per_s'] if t else None, base_t)} | {latency} | {speedup} | "
                         f"{gflops} | {eff} | {fed} |")
    return lines


def problems(records: list[dict[str, Any]]) -> list[str]:
    lines = []  # a failed export shows as its contender's failure, which quotes the export's error
    for r in _by(records, "contender"):
        if r["status"] != "ok":
            lines.append(f"- {r['kind']} / {r['contender']}: {r['status']}: {r['message']}")
    for r in _by(records, "kind-failed"):
        lines.append(f"- {r['kind']}: the whole kind failed: {r['error']['type']}: {r['error']['message']}")
    for r in _by(records, "sweep-skipped"):
        lines.append(f"- {r['kind']} / {r['contender']}: not in the sweep: {r['message']}")
    return lines or ["- none"]


def sweep_table(records: list[dict[str, Any]]) -> list[str]:
    rows = _by(records, "sweep")
    if not rows:
        return ["(no sweep in this run)"]
    cells = sorted({(r["batch"], r["max_length"]) for r in rows})
    header = " | ".join(f"b{b} x L{length}" for b, length in cells)
    lines = [f"| kind | contender | {header} |", "|---|---|" + "---:|" * len(cells)]
    table: dict[tuple[str, str], dict[tuple[int, int], float]] = defaultdict(dict)
    for r in rows:
        table[(r["kind"], r["contender"])][(r["batch"], r["max_length"])] = r["pairs_per_s"]
    for (kind, name), values in sorted(table.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        lines.append(f"| {kind} | {name} | " + " | ".join(f"{values[c]:.1f}" if c in values else "" for c in cells)
                     + " |")
    return lines


def header(records: list[dict[str, Any]]) -> list[str]:
    env = _by(records, "environment")[0]
    probes = _by(records, "gemm-probe")
    done = _by(records, "done")
    s = env["settings"]
    v = env["versions"]
    best = best_probe(records)
    fp32 = [p["fp32_gflops"] for p in probes]
    numpy = max((p.get("numpy_fp32_gflops", 0.0) for p in probes), default=0.0)
    rates = (f"best {best['fp32_gflops']:.0f} GFLOP/s fp32 (the efficiency column's denominator; {len(probes)} "
             f"probes ranged {min(fp32):.0f} to {max(fp32):.0f}), best {best['int8_gops']:.0f} GOP/s int8"
             + (f"; numpy's sgemm: {numpy:.0f} GFLOP/s" if numpy else "") if probes else "not measured")
    lines = [
        f"Run {records[0]['run']} on {env['cpu']} ({env['physical_cores']} cores, {env['threads']} threads per "
        f"contender), commit {env['commit'][:10]}{' (dirty)' if env['dirty'] else ''}; onnxruntime "
        f"{v.get('onnxruntime', '?')}, torch {v.get('torch', '?')}, numpy {v.get('numpy', '?')}.",
        f"Workloads: throughput {s['pairs']} pairs (median of {s['rounds']} round(s)); latency: one query x "
        f"{s['latency_passages']} passages, {s['latency_calls']} calls; sweep {list(s['sweep_batches'])} x "
        f"{list(s['sweep_lengths'])}, {s['sweep_repeats']} repeat(s). Runtime/reference token budget: "
        f"{s['max_batch_tokens'] or 'none (FlagEmbedding batching)'}; batch_size 128 everywhere it applies.",
        f"ONNX Runtime's own MatMul rate (one MatMul node, same threads; GEMM probe): {rates}. Load average at start {env['load_average'][0]:.1f}"
        + (f", at end {done[0]['load_average'][0]:.1f}; run took {done[0]['seconds'] / 60:.1f} min." if done else "."),
    ]
    return lines


def _verdict(values: dict[str, float], bar: float, fmt: str) -> str:
    if not values:
        return "not measured"
    met = all(v >= bar for v in values.values())
    detail = ", ".join(f"{fmt.format(v)} ({k})" for k, v in values.items())
    return ("met: " if met else "**missed**: ") + detail


def targets(records: list[dict[str, Any]]) -> list[str]:
    """The targets judged from this run's numbers (a kind without the contenders a target needs is left out)."""
    thr = {(r["kind"], r["contender"]): r for r in _by(records, "throughput")}
    lat = {(r["kind"], r["contender"]): r for r in _by(records, "latency")}
    ok = {(r["kind"], r["contender"]): r for r in _by(records, "contender") if r["status"] == "ok"}
    kinds = list(dict.fromkeys(r["kind"] for r in _by(records, "kind")))
    probe = best_probe(records)["fp32_gflops"]

    def vs_fe(name: str) -> dict[str, float]:
        return {k: thr[(k, name)]["pairs_per_s"] / thr[(k, "flagembedding")]["pairs_per_s"] for k in kinds
                if (k, name) in thr and (k, "flagembedding") in thr}

    st = {k: max((thr[(k, n)]["pairs_per_s"], n) for n in ST if (k, n) in thr) for k in kinds
          if any((k, n) in thr for n in ST)}
    encoder = {f"{k}, best: {st[k][1]}": thr[(k, "ort-fp32")]["pairs_per_s"] / st[k][0] for k in st
               if (k, "ort-fp32") in thr}
    efficiency = {k: thr[(k, "ort-fp32")]["useful_gflops"] / probe for k in kinds if (k, "ort-fp32") in thr}
    int8 = vs_fe("ort-int8")
    rho = {k: (thr[(k, "ort-int8")].get("parity_full_set") or ok[(k, "ort-int8")]["gate"])["spearman"]
           for k in int8 if (k, "ort-int8") in ok}
    top10 = {k: ok[(k, "ort-int8")].get("top10", {}).get("same_set") for k in int8 if (k, "ort-int8") in ok}
    timed = sorted({key for key in thr} | {key for key in lat})
    no_latency = [f"{k}/{n}" for k, n in timed if (k, n) not in lat]
    t = TARGETS
    lines = ["| target | result |", "|---|---|",
             f"| runtime fp32 >= {t['fp32_vs_flagembedding']}x FlagEmbedding pairs/s, every kind | "
             f"{_verdict(vs_fe('ort-fp32'), t['fp32_vs_flagembedding'], '{:.2f}x')} |",
             f"| encoder >= {t['encoder_vs_st']}x sentence-transformers' best ONNX export | "
             f"{_verdict(encoder, t['encoder_vs_st'], '{:.2f}x')} |",
             f"| useful FLOPs >= {t['efficiency']:.0%} of ONNX Runtime's MatMul rate, every kind (runtime fp32) | "
             f"{_verdict(efficiency, t['efficiency'], '{:.2%}')} |",
             f"| int8 >= {t['int8_vs_flagembedding']}x FlagEmbedding fp32 pairs/s, every kind | "
             f"{_verdict(int8, t['int8_vs_flagembedding'], '{:.2f}x')} |",
             f"| int8 Spearman >= {t['int8_spearman']} and the same top 10 of the latency query, every kind | "
             f"{_verdict(rho, t['int8_spearman'], '{:.4f}')}; top 10: "
             f"{', '.join(f'{k} ' + ('same' if v else '**differs**') for k, v in top10.items()) or 'not measured'} |",
             "| latency p50 for 1 query x passages, every contender | "
             + ("met: every timed contender" if not no_latency else f"**missed** for {', '.join(no_latency)}")
             + " |"]
    return lines


def profiles(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in _by(records, "profile"):
        top = ", ".join(f"{op} {100 * v['share']:.0f}%" for op, v in list(r["ops"].items())[:6])
        lines.append(f"- {r['kind']} / {r['contender']}, batch {r['batch'][0]} x {r['batch'][1]}: "
                     f"{r['ms_per_run']:.0f} ms; matmuls {100 * r['matmul_share']:.0f}% of kernel time; {top}")
    return lines or ["- (not profiled in this run)"]


def write_report(records: list[dict[str, Any]], stem: Path) -> tuple[Path, Path]:
    md = stem.with_name(stem.name + ".md")
    text = ["# Benchmark results", "", *header(records), "", *main_table(records), "", "Targets:", "",
            *targets(records), "",
            "Failed, refused or skipped:", "", *problems(records), "",
            "Where ONNX Runtime's time goes (op profile of the runtime's longest throughput batch):", "",
            *profiles(records), "", "Sweep (pairs/s; b = batch size, "
            "L = max_length):", "", *sweep_table(records), ""]
    md.write_text("\n".join(text))
    png = stem.with_name(stem.name + ".png")
    chart(records, png)
    return md, png


def _panel(ax: Any, rows: list[dict[str, Any]], kinds: list[str], names: list[str], key: str, faster: str,
           unit: str, scale: float) -> bool:
    """Bars of each contender's speed-up over FlagEmbedding per kind, annotated with the absolute value.

    Returns False (and plots absolute values) when no FlagEmbedding row exists to divide by."""
    values = {(r["kind"], r["contender"]): r[key] for r in rows}
    base = {k: next((values[(k, b)] for b in BASELINES if (k, b) in values), None) for k in kinds}
    relative = any(base.values())
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys, labels = [], [], []
        for k, kind in enumerate(kinds):
            value = values.get((kind, name))
            if value is None or (relative and not base[kind]):
                continue
            ratio = (value / base[kind] if faster == "higher" else base[kind] / value) if relative else value * scale
            xs.append(k + (i - (len(names) - 1) / 2) * width)
            ys.append(ratio)
            labels.append(f"{value * scale:.0f}" if value * scale >= 10 else f"{value * scale:.1f}")
        bars = ax.bar(xs, ys, width, label=name)
        for bar, y, label in zip(bars, ys, labels):
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylabel("speed-up over FlagEmbedding (x)" if relative else unit)
    return relative


def chart(records: list[dict[str, Any]], path: Path) -> None:
    from rerank_runtime._deps import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot")
    thr, lat = _by(records, "throughput"), _by(records, "latency")
    kinds = list(dict.fromkeys(r["kind"] for r in _by(records, "kind")))
    names = sorted({r["contender"] for r in thr + lat}, key=_order)
    env = _by(records, "environment")[0]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    if _panel(axes[0], thr, kinds, names, "pairs_per_s", "higher", "pairs/s", 1.0):
        for target, label in ((TARGETS["fp32_vs_flagembedding"], f"fp32 target {TARGETS['fp32_vs_flagembedding']}x"),
                              (TARGETS["int8_vs_flagembedding"], f"int8 target {TARGETS['int8_vs_flagembedding']}x")):
            axes[0].axhline(target, color="grey", linestyle="--", linewidth=0.8)
            axes[0].annotate(label, (-0.45, target), ha="left", va="bottom", fontsize=7, color="dimgrey", zorder=5)
    axes[0].set_title(f"Throughput, {env['settings']['pairs']} pairs (labels: pairs/s)")
    _panel(axes[1], lat, kinds, names, "p50", "lower", "ms", 1e3)
    axes[1].set_title(f"Latency p50, one query x {env['settings']['latency_passages']} passages (labels: ms)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"mid checkpoints on {env['cpu']}, {env['threads']} threads, {env['time_utc'][:10]} "
                 f"(load average at start {env['load_average'][0]:.1f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
