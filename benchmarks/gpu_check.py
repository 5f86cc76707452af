"""GPU verification in one short run, with whatever this machine has installed (nothing is installed or downloaded).

For every model and precision, each GPU backend present (gpu_backends.py: the PyTorch reference on CUDA, ONNX Runtime's
CUDA and TensorRT providers, native TensorRT engines) scores a pair set and is compared with the fp32 PyTorch reference
on the CPU using the tolerance table (atol + rtol, Spearman, top-10 identity, no NaN/inf). Only then: the node
placement of ONNX Runtime sessions, a CUDA-graph replay proof for native engines, and CUDA-event timing (p50/p99 per
batch size and sequence length, pairs/s) with the PyTorch reference on CUDA as the contender. Backends that cannot run
here are named as skipped, with the reason.

    python benchmarks/gpu_check.py --out OUT                # default models, every backend present
    python benchmarks/gpu_check.py --prepare-only           # on a CPU machine: checkpoints and exports into --cache
    python benchmarks/gpu_check.py --models tiny-gemma --precisions fp32 --backends torch-cuda --out OUT

Writes OUT/gpu_check.json (and OUT/gpu_check.md, the printed table). Exit status: 0 every check that ran passed and at
least one GPU backend ran; 1 a check failed; 3 no GPU backend can run here (nothing was verified).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gpu_backends import BACKENDS, TOLERANCE_KEY, Built, build, unavailable, versions
from gpu_measure import EventTimer, HostTimer, compare, graph_replay_proof, grid_feeds, time_calls

HERE = Path(__file__).resolve().parent
NO_GPU_BACKEND = 3


def default_models() -> list[str]:
    """The tiny trained checkpoint of every registered family: tiny-<family with hyphens>-trained."""
    from rerank_export.families import REGISTRY
    from rerank_export.testing.factory import builtin_name

    return [builtin_name(name, "tiny", trained=True) for name in REGISTRY]


def settings_for(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(export options, call settings) that make the export and the reference compute the same graph: the deepest
    layer as the exit; for the compressing kind, ratio 2 before the middle layer."""
    from rerank_export.checkpoint import read_json
    from rerank_export.families import detect_family
    from rerank_runtime.kinds import get_kind

    config = read_json(checkpoint / "config.json")
    family = detect_family(config)
    kind, layers = get_kind(family.model_class), family.layers(config)
    if layers is None or not kind.takes_cutoff:
        return {}, {}
    deepest = layers[0]
    if not kind.takes_compression:
        return {}, {"cutoff_layers": [deepest]}
    export = {"cutoff_layers": (deepest,), "compress_ratio": 2, "compress_layers": (deepest // 2,)}
    return export, {k: list(v) if isinstance(v, tuple) else v for k, v in export.items()}


def ensure_export(cache: Path, model: str, precision: str, max_length: int, options: dict[str, Any]) -> Path:
    """cache/exports/<model>-<precision>-L<max_length>, exported on first use (torch and onnxscript needed then)."""
    out = cache / "exports" / f"{model}-{precision}-L{max_length}"
    if (out / "manifest.json").is_file():
        return out
    from rerank_export.exporter import ExportOptions, export_onnx

    return Path(export_onnx(ExportOptions(model=model, output=str(out), precision=precision, max_length=max_length,
                                          overwrite=True, **options)))


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.started = args, time.monotonic()
        self.report: dict[str, Any] = {"schema": 1, "started_utc": datetime.now(timezone.utc).isoformat(),
                                       "settings": {k: str(v) if isinstance(v, Path) else v for k, v in
                                                    vars(args).items()},
                                       "skipped": [], "results": [], "failures": []}

    def over_budget(self) -> bool:
        return time.monotonic() - self.started > self.args.budget_s

    def fail(self, what: str, exc: BaseException | None = None) -> None:
        detail = f"{what}: {type(exc).__name__}: {exc}" if exc else what
        self.report["failures"].append(detail)
        print(f"FAILED {detail}", file=sys.stderr, flush=True)
        if exc is not None and self.args.verbose:
            traceback.print_exception(exc, file=sys.stderr)

    def skip(self, what: dict[str, Any], reason: str) -> None:
        self.report["skipped"].append({**what, "reason": reason})
        print(f"skipped {what}: {reason}", flush=True)


def run(args: argparse.Namespace) -> int:
    check = Check(args)
    os.environ.setdefault("RERANK_CACHE", str(args.cache / "rerank"))  # built-in checkpoints, carried with --cache
    reasons = unavailable()
    check.report["versions"] = versions()
    present = []
    for name in BACKENDS:
        if name not in args.backends:
            check.skip({"backend": name}, "not requested (--backends)")
        elif reasons[name] is not None:
            check.skip({"backend": name}, reasons[name])
        else:
            present.append(name)
    for model in args.models:
        try:
            check_model(check, model, present)
        except Exception as exc:  # one model's failure must not hide the others'
            check.fail(model, exc)
        write(check, quiet=True)  # what is done so far survives a kill
    write(check)
    if check.report["failures"]:
        return 1
    if not args.prepare_only and not check.report["gpu_backends_run"]:
        print("no GPU backend could run here: nothing was verified (see 'skipped')", file=sys.stderr)
        return NO_GPU_BACKEND
    return 0


def check_model(check: Check, model: str, present: list[str]) -> None:
    from rerank_export.checkpoint import resolve_model
    from rerank_export.reference import load_reference
    from rerank_export.testing.pairs import benchmark_pairs, parity_pairs
    from rerank_runtime.front import FeedRecorder
    from rerank_runtime.rerankers import FlagAutoReranker

    args = check.args
    checkpoint = resolve_model(model)
    export_options, settings = settings_for(checkpoint)
    length = max(args.lengths)
    exports: dict[str, Path] = {}
    if args.prepare_only or any(b != "torch-cuda" for b in present):
        for precision in args.precisions:
            try:
                exports[precision] = ensure_export(args.cache, model, precision, length, export_options)
            except Exception as exc:
                check.fail(f"{model} {precision}: export", exc)
    if args.prepare_only or not present:
        return
    pairs = parity_pairs() + benchmark_pairs(args.pairs, seed=0, min_tokens=4, max_tokens=length)
    loaded = load_reference(str(checkpoint), model_class=None, devices="cpu")  # fp32 on the CPU: the yardstick
    recorder = FeedRecorder(loaded.front)
    reference = FlagAutoReranker.from_loaded(replace(loaded, front=recorder), **settings)
    ref = scores(reference, pairs, args.batch, length)
    most = max(args.batches)
    long_pairs = benchmark_pairs(2 * most, seed=1, min_tokens=2 * length, max_tokens=2 * length)  # all cut
    pairs_a = long_pairs[:most]
    pairs_b = [[query, other] for (query, _), (_, other) in zip(pairs_a, long_pairs[most:])]
    grid = grid_feeds(lambda p, b, n: reference.compute_score_array(p, batch_size=b, max_length=n), recorder,
                      pairs_a, pairs_b, args.batches, args.lengths)
    for precision in args.precisions:
        for backend in present:
            what = {"model": model, "precision": precision, "backend": backend}
            if check.over_budget():
                check.skip(what, f"time budget of {args.budget_s} s spent")
            elif backend != "torch-cuda" and precision not in exports:
                check.skip(what, "no export (see failures)")
            else:
                check.report["results"].append(check_backend(check, what, checkpoint, exports.get(precision),
                                                             settings, pairs, ref, grid))


def scores(reranker: Any, pairs: list[list[str]], batch: int, length: int) -> np.ndarray:
    return np.atleast_2d(np.asarray(reranker.compute_score_array(pairs, batch_size=batch, max_length=length)))


def check_backend(check: Check, what: dict[str, Any], checkpoint: Path, export: Path | None, settings: dict[str, Any],
                  pairs: list[list[str]], ref: np.ndarray, grid: dict) -> dict[str, Any]:
    from rerank_export.tensorrt_build import EngineOptions
    from rerank_runtime.tolerances import tolerance

    args, result = check.args, {**what, "status": "failed"}
    name, precision = what["backend"], what["precision"]
    label = f"{what['model']} {precision} {name}"
    print(f"checking {label}", flush=True)
    started = time.monotonic()
    cuda = cuda_runtime()
    options = EngineOptions(max_batch_size=max(args.batch, *args.batches), length_buckets=tuple(sorted(args.lengths)),
                            timing_cache=args.cache / "timing.cache", overwrite=True)
    try:
        built = build(name, str(checkpoint), export, precision, settings, options, cuda)
        result.update(built.info)
        parity = compare(scores(built.reranker, pairs, args.batch, max(args.lengths)), ref,
                         tolerance(precision, TOLERANCE_KEY[name]))
        result["parity"] = parity
        if not parity["passed"]:
            check.fail(f"{label}: parity: " + "; ".join(parity["problems"]))
            return result
        if name == "trt-engine":
            result["cuda_graphs"] = graphs(check, label, export, grid)
        result["timing"] = timing(check, built, grid, cuda)
        result["status"] = "passed"
    except Exception as exc:
        check.fail(label, exc)
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["seconds"] = round(time.monotonic() - started, 1)
    return result


def cuda_runtime() -> Any:
    try:
        from rerank_runtime.cudart import CudaRuntime

        return CudaRuntime()
    except ImportError:
        return None


def graphs(check: Check, label: str, export: Path, grid: dict) -> dict[str, Any]:
    """Capture with batch A, replay on batch B (same shape), compare with a plain run on B, at the smallest shape."""
    from rerank_runtime.front import ServedGraph
    from rerank_runtime.manifest import Manifest
    from rerank_runtime.trt_backend import TensorRTBackend

    (batch, length), (request, (feeds_a, feeds_b)) = min(grid.items())
    manifest = Manifest.read(export)
    served = ServedGraph.of(manifest, export)  # the backends take complete feeds
    complete_a, complete_b = served.complete(request, feeds_a), served.complete(request, feeds_b)
    with TensorRTBackend(export, manifest, use_cuda_graphs=True, cuda_graph_max_batch=batch) as with_graphs, \
            TensorRTBackend(export, manifest) as plain:
        proof = graph_replay_proof(with_graphs, plain, request.output_names, complete_a, complete_b)
    if not proof["passed"]:
        check.fail(f"{label}: CUDA graph replay: " + "; ".join(proof["problems"]))
    return proof


def timing(check: Check, built: Built, grid: dict, cuda: Any) -> list[dict[str, Any]]:
    """p50/p99 of the backend's run() on batch A of every (batch, length), after a warm-up."""
    args, rows = check.args, []
    timer = EventTimer(cuda, built.stream) if cuda is not None and built.stream is not None else HostTimer()
    try:
        for (batch, length), (request, (feeds, _)) in sorted(grid.items()):
            if check.over_budget():
                rows.append({"batch": batch, "length": length, "skipped": "time budget spent"})
                continue
            stats = time_calls(lambda: built.front.run(request, feeds), timer, args.warmup, args.iters, batch)
            rows.append({"batch": batch, "length": length, "padded_length": int(feeds["input_ids"].shape[1]),
                         **stats})
    finally:
        timer.close()
    return rows


def write(check: Check, quiet: bool = False) -> None:
    report, out = check.report, check.args.out
    report["elapsed_s"] = round(time.monotonic() - check.started, 1)
    report["gpu_backends_run"] = sorted({r["backend"] for r in report["results"]})
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(tmp, out / "gpu_check.json")
    table = render(report)
    (out / "gpu_check.md").write_text(table + "\n")
    if not quiet:
        print(table)


def render(report: dict[str, Any]) -> str:
    lines = ["| model | precision | backend | status | max abs diff | Spearman | top-10 | p50 ms (largest shape) "
             "| pairs/s | vs torch-cuda |", "|---|---|---|---|---|---|---|---|---|---|"]
    contender = {(r["model"], r["precision"]): last_timing(r) for r in report["results"]
                 if r["backend"] == "torch-cuda"}
    for r in report["results"]:
        cells = [r["model"], r["precision"], r["backend"], r["status"]]
        parity = r.get("parity")
        if parity:
            top = all(e["top10_same_set"] for e in parity["exits"])
            cells += [f"{parity['max_abs_diff']:.2e}", f"{parity['spearman']:.4f}", "same" if top else "DIFFERENT"]
        else:
            cells += ["", "", ""]
        t, torch_t = last_timing(r), contender.get((r["model"], r["precision"]))
        cells += [f"{t['p50_ms']:.3f}", f"{t['pairs_per_s']:,.0f}"] if t else ["", ""]
        cells.append(f"{torch_t['p50_ms'] / t['p50_ms']:.2f}x" if t and torch_t and r["backend"] != "torch-cuda"
                     else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"- skipped {' '.join(str(s[k]) for k in ('backend', 'model', 'precision') if k in s)}: {s['reason']}"
              for s in report["skipped"]]
    lines += [f"- FAILED {f}" for f in report["failures"]]
    return "\n".join(lines)


def last_timing(result: dict[str, Any]) -> dict[str, Any] | None:
    rows = [t for t in result.get("timing", []) if "p50_ms" in t]
    return rows[-1] if rows else None


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu", help="folder for gpu_check.json/.md")
    p.add_argument("--models", nargs="+", help="built-in names or checkpoint directories (default: the tiny "
                   "trained checkpoint of every family, tiny-<family>-trained)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--cache", type=Path, default=HERE.parent / ".cache" / "gpu-check",
                   help="checkpoints (rerank/), exports, the TensorRT timing cache")
    p.add_argument("--prepare-only", action="store_true", help="only make the checkpoints and exports (CPU is fine)")
    p.add_argument("--pairs", type=int, default=200, help="parity pairs besides the 22 fixed ones")
    p.add_argument("--batch", type=int, default=32, help="batch size of the parity scoring")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256], help="max_length of the timed batches")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new work after this many seconds")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(argv)
    args.models = args.models or default_models()
    return args


def main(argv: list[str] | None = None) -> int:
    return run(parse(argv))


if __name__ == "__main__":
    sys.exit(main())
