"""A/B one change: two exports (or one export under two session settings), alternated in one process.

    python benchmarks/bench_ab.py A_EXPORT B_EXPORT --rounds 20 --pairs 128
    python benchmarks/bench_ab.py EXPORT EXPORT --b-config optimization.disable_specified_optimizers=

Both sides score the same pairs with the same call (the benchmark's batch size and token budget); every round runs
A and B once, in an order that alternates (AB, BA, ...), so drift and other jobs' load hit both alike. Reports the
median pairs/s of each side with its spread (min, quartiles, max), the median of the per-round B/A time ratios, the
ONNX Runtime op profile of each side (one real batch) and each side's max |diff| from the fp32 PyTorch reference on
the checkpoint the export names (with the fp32 CPU tolerance verdict). A JSON record goes to --out when given.
This is how every graph change in benchmarks/README.md was decided: keep it only if B is faster and still within
tolerance, and repeat a decision that lands within a few percent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("RERANK_CACHE", str(HERE.parent / ".cache" / "rerank"))


def spread(values: list[float]) -> dict[str, float]:
    q = np.percentile(np.asarray(values, dtype=np.float64), [0, 25, 50, 75, 100])
    return dict(zip(("min", "p25", "median", "p75", "max"), (float(v) for v in q)))


def load(export: str, config: list[str], threads: int | None, max_batch_tokens: int | None) -> Any:
    """The runtime over `export`, with the runtime's default session options plus `config` entries (key=value)."""
    import onnxruntime as ort
    from rerank_runtime import FlagAutoReranker
    from rerank_runtime.artifact import load_artifact
    from rerank_runtime.onnx_backend import default_options
    from rerank_runtime.providers import resolve

    options = default_options(ort, resolve("cpu", "cpu")[0])
    if threads:
        options.intra_op_num_threads = threads
    for entry in config:
        key, _, value = entry.partition("=")
        options.add_session_config_entry(key, value)
    loaded = load_artifact(export, devices="cpu", session_options=options)
    return FlagAutoReranker.from_loaded(loaded, export, max_batch_tokens=max_batch_tokens)


def reference_scores(export: str, pairs: list[list[str]], call: dict[str, Any], max_batch_tokens: int | None,
                     threads: int) -> np.ndarray:
    import torch
    from rerank_export import reference

    torch.set_num_threads(threads)
    manifest = json.loads((Path(export) / "manifest.json").read_text())
    ref = reference.FlagAutoReranker.from_finetuned(manifest["source"], devices="cpu", max_batch_tokens=max_batch_tokens)
    return np.asarray(ref.compute_score_array(pairs, **call), dtype=np.float64)


def parity(got: np.ndarray, ref: np.ndarray, precision: str) -> dict[str, Any]:
    from bench_stats import top_k
    from rerank_runtime.tolerances import allclose, spearman, tolerance

    tol = tolerance(precision, "cpu")
    return {"max_abs_diff": float(np.abs(got - ref).max()), "spearman": spearman(got.ravel(), ref.ravel()),
            "within_tolerance": allclose(got, ref, tol).ok if np.isfinite(tol.atol) else None,
            "top10": top_k(got.ravel(), ref.ravel(), 10)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--pairs", type=int, default=128, help="pairs of benchmark_pairs(seed=0): the throughput mix")
    p.add_argument("--latency", action="store_true", help="one query x --pairs passages (the latency workload)")
    p.add_argument("--call", default="{}", help="extra compute_score arguments as JSON (e.g. the lightweight kind's)")
    p.add_argument("--a-config", action="append", default=[], help="session config entry key=value for side A")
    p.add_argument("--b-config", action="append", default=[], help="session config entry key=value for side B")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the runtime's)")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--graph", action="store_true",
                   help="time the graphs alone: the workload's batches (built once by side A's host code) run through "
                        "A's and B's sessions, alternated batch by batch (finer interleaving, less noise)")
    p.add_argument("--out", help="append the JSON record to this file")
    args = p.parse_args(argv)

    from bench_env import physical_cores
    from bench_profile import op_profiles
    from rerank_export.testing.pairs import benchmark_pairs

    pairs = benchmark_pairs(args.pairs, seed=1 if args.latency else 0)
    if args.latency:
        pairs = [[pairs[0][0], passage] for _, passage in pairs]
    call = {"batch_size": 128, **json.loads(args.call)}
    budget = args.max_batch_tokens or None
    threads = args.threads or physical_cores()
    sides = {"A": load(args.a, args.a_config, args.threads, budget), "B": load(args.b, args.b_config, args.threads,
                                                                               budget)}
    precision = {s: json.loads((Path(e) / "manifest.json").read_text())["precision"]
                 for s, e in (("A", args.a), ("B", args.b))}
    ref = reference_scores(args.a, pairs, call, budget, threads)
    record: dict[str, Any] = {"a": args.a, "b": args.b, "a_config": args.a_config, "b_config": args.b_config,
                              "pairs": len(pairs), "latency": args.latency, "rounds": args.rounds, "call": call,
                              "load_average_start": os.getloadavg()[0]}
    for side, reranker in sides.items():  # warm-up, and the parity of each side
        got = np.asarray(reranker.compute_score_array(pairs, **call), dtype=np.float64)
        record[f"parity_{side}"] = parity(got, ref, precision[side])
    times = timed_graph(sides, pairs, call, args.rounds) if args.graph else timed_calls(sides, pairs, call, args.rounds)
    ratios = [b / a for a, b in zip(times["A"], times["B"])]
    for side in ("A", "B"):
        record[f"pairs_per_s_{side}"] = spread([len(pairs) / t for t in times[side]])
        record[f"seconds_{side}"] = times[side]
    record["b_over_a_time_ratio"] = spread(ratios)
    if times.get("batch_ratios"):  # --graph: every batch's B/A pair, many more paired samples than rounds
        record["b_over_a_batch_ratio"] = spread(times["batch_ratios"])
        record["batch_pairs"] = len(times["batch_ratios"])
    record["b_speedup_median"] = 1.0 / record["b_over_a_time_ratio"]["median"]
    record["load_average_end"] = os.getloadavg()[0]
    if not args.no_profile:
        profiles = op_profiles([sides["A"], sides["B"]], pairs, call, threads, runs=5,
                               configs=[args.a_config, args.b_config])
        for side, prof in zip(("A", "B"), profiles):
            record[f"profile_{side}"] = {"batch": prof["batch"], "ms_per_run": prof["ms_per_run"],
                                         "matmul_share": prof["matmul_share"],
                                         "ops": {op: round(v["ms"], 2) for op, v in prof["ops"].items()}}
    print(summary(record))
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


def timed_calls(sides: dict[str, Any], pairs: list[list[str]], call: dict[str, Any], rounds: int
                ) -> dict[str, list[float]]:
    """Whole compute_score calls, A and B once per round in alternating order."""
    times: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(rounds):
        for side in ("A", "B") if r % 2 == 0 else ("B", "A"):
            start = time.perf_counter()
            sides[side].compute_score_array(pairs, **call)
            times[side].append(time.perf_counter() - start)
    return times


def timed_graph(sides: dict[str, Any], pairs: list[list[str]], call: dict[str, Any], rounds: int
                ) -> dict[str, list[float]]:
    """Per round, every batch of the workload through both sessions (order alternating per batch); returns each
    side's summed graph time per round."""
    from bench_profile import captured_batches, session_inputs
    from rerank_runtime.front import backends_of

    request, batches = captured_batches(sides["A"], pairs, call)
    inputs = {s: [session_inputs(r, request, feeds) for feeds in batches] for s, r in sides.items()}
    names = list(request.output_names)
    times: dict[str, list[float]] = {"A": [], "B": [], "batch_ratios": []}
    for r in range(rounds):
        total = {"A": 0.0, "B": 0.0}
        for i in range(len(batches)):
            took = {}
            for side in ("A", "B") if (r + i) % 2 == 0 else ("B", "A"):
                session = backends_of(sides[side].front.backend)[0].session
                start = time.perf_counter()
                session.run(names, inputs[side][i])
                took[side] = time.perf_counter() - start
                total[side] += took[side]
            times["batch_ratios"].append(took["B"] / took["A"])
        for side in total:
            times[side].append(total[side])
    return times


def summary(r: dict[str, Any]) -> str:
    lines = [f"A {r['a']} {r['a_config']}", f"B {r['b']} {r['b_config']}",
             f"{r['pairs']} pairs x {r['rounds']} rounds, load {r['load_average_start']:.1f} -> "
             f"{r['load_average_end']:.1f}"]
    for side in ("A", "B"):
        s, par = r[f"pairs_per_s_{side}"], r[f"parity_{side}"]
        lines.append(f"  {side}: {s['median']:.2f} pairs/s (min {s['min']:.2f}, p25 {s['p25']:.2f}, p75 "
                     f"{s['p75']:.2f}, max {s['max']:.2f}); vs reference max |diff| {par['max_abs_diff']:.2e} "
                     f"within tolerance: {par['within_tolerance']}, Spearman {par['spearman']:.4f}, same top 10: "
                     f"{par['top10']['same_set']}")
    q = r["b_over_a_time_ratio"]
    lines.append(f"  B/A time per round: median {q['median']:.3f} (p25 {q['p25']:.3f}, p75 {q['p75']:.3f}); "
                 f"B speed-up {r['b_speedup_median']:.3f}x")
    if "b_over_a_batch_ratio" in r:
        q = r["b_over_a_batch_ratio"]
        lines.append(f"  B/A time per batch ({r['batch_pairs']} pairs of runs): median {q['median']:.3f} "
                     f"(p25 {q['p25']:.3f}, p75 {q['p75']:.3f})")
    if "profile_A" in r:
        a, b = r["profile_A"], r["profile_B"]
        lines.append(f"  profile batch {a['batch']}: A {a['ms_per_run']:.0f} ms, B {b['ms_per_run']:.0f} ms; "
                     f"matmul share {a['matmul_share']:.0%} -> {b['matmul_share']:.0%}")
        for op in sorted(set(a["ops"]) | set(b["ops"]), key=lambda o: -max(a["ops"].get(o, 0), b["ops"].get(o, 0))):
            lines.append(f"    {op:32s} {a['ops'].get(op, 0):8.1f} {b['ops'].get(op, 0):8.1f} ms")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
