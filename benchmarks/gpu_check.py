"""GPU check of the native TensorRT engines: parity first, then speed. Run it on a GPU machine (never in CI).

    python benchmarks/gpu_check.py EXPORT_DIR [EXPORT_DIR ...]
    python benchmarks/gpu_check.py --make-tiny exports/gpu-check        # export the tiny models first (needs torch)

For every export directory: build its engine (`rerank-export engine`), score a pair set with ONNX Runtime CPU on the
fp32 export of the same model (the reference; pass it too, --make-tiny does), then with the CUDA EP, the TensorRT EP
and the native engine, checking every score against runtime/tolerances.py before timing anything. Then, for the
native engine at batch 1-4, latency with and without CUDA graphs. Prints markdown tables.

Set-up on the GPU machine: the `gpu` extra (onnxruntime-gpu instead of onnxruntime, tensorrt, cuda-python), plus
`export` for --make-tiny; ONNX Runtime's TensorRT EP needs the TensorRT major it was linked against (gpu-apis.md 4.3).

Exit status 1 on any failure (a backend that cannot run, a score beyond its tolerance or not finite, a missing fp32
reference): only measured numbers are printed, and the failures go to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("cpu", "cuda", "tensorrt", "trt-engine")
TINY = {  # built-in tiny model -> export options (the lightweight one with compression, so those inputs are covered)
    "tiny-xlm-roberta": {},
    "tiny-gemma": {},
    "tiny-minicpm-layerwise": {},
    "tiny-gemma2-lightweight": {"compress_ratio": 2, "compress_layers": (3,), "cutoff_layers": (4, 5)},
}


@dataclass
class Export:
    path: Path
    manifest: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest["spec"]["model_class"])

    @property
    def precision(self) -> str:
        return str(self.manifest["precision"])

    def same_model(self) -> str:
        m = self.manifest
        return json.dumps([m.get("source"), m["exits"], m.get("compress_ratio"), m.get("compress_layers"),
                           m["max_length"]])


class Recorder:
    """A Backend wrapper that keeps the (request, feeds) of every batch: real feeds for the CUDA graph timing."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.calls: list[tuple[Any, dict[str, np.ndarray]]] = []

    def check(self, request: Any) -> None:
        self.backend.check(request)

    def run(self, request: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append((request, {k: v.copy() for k, v in feeds.items()}))
        out: list[np.ndarray] = self.backend.run(request, feeds)
        return out


def make_tiny(out: Path, precisions: list[str], max_length: int) -> list[Path]:
    from rerank_export.exporter import ExportOptions, export_onnx

    dirs = []
    for name, extra in TINY.items():
        for precision in precisions:
            opts = ExportOptions(model=name, output=str(out / f"{name}-{precision}"), precision=precision,
                                 max_length=max_length, overwrite=True, **extra)
            dirs.append(export_onnx(opts))
    return dirs


def reranker(export: Export, provider: str, batch: int, record: bool = False) -> Any:
    from rerank_runtime import rerankers as r
    from rerank_runtime.spec import DECODER, ENCODER, LAYERWISE, LIGHTWEIGHT

    classes = {ENCODER: r.FlagReranker, DECODER: r.FlagLLMReranker, LAYERWISE: r.LayerWiseFlagLLMReranker,
               LIGHTWEIGHT: r.LightWeightFlagLLMReranker}
    cls: Any = classes[export.kind]
    if record:
        class Recording(cls):  # type: ignore[misc]  # _load is the documented hook
            def _load(self, *args: Any, **kwargs: Any) -> Any:
                loaded = super()._load(*args, **kwargs)
                loaded.backend = Recorder(loaded.backend)
                return loaded

        cls = Recording
    devices = "cpu" if provider == "cpu" else "cuda:0"
    return cls(str(export.path), provider=provider, devices=devices, batch_size=batch,
               max_length=int(export.manifest["max_length"]))


def scores(model: Any, pairs: list[list[str]]) -> np.ndarray:
    out = np.asarray(model.compute_score_array(pairs), dtype=np.float64)
    return out.reshape(-1, len(pairs))  # [n_exits, n]


def median_seconds(fn: Any, repeats: int) -> float:
    fn()  # warm-up (engine caches, CUDA context, arenas)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_parity(got: np.ndarray, ref: np.ndarray, precision: str, provider: str) -> tuple[float, str, bool]:
    from rerank_runtime.tolerances import tolerance

    tol = tolerance(precision, provider)
    diff = np.abs(got - ref)
    ok = bool(np.isfinite(got).all() and (diff <= tol.atol + tol.rtol * np.abs(ref)).all())
    return float(diff.max()), f"{tol.atol:g} + {tol.rtol:g}|ref|", ok


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.failures: list[str] = []
        self.builds: list[str] = []
        self.rows: list[str] = []
        self.graph_rows: list[str] = []

    def fail(self, what: str, exc: BaseException | None = None) -> None:
        self.failures.append(what)
        print(f"FAILED: {what}", file=sys.stderr)
        if exc is not None:
            traceback.print_exception(exc, file=sys.stderr)

    def build(self, export: Export) -> None:
        from rerank_export.tensorrt_build import EngineOptions, build_engine

        options = EngineOptions(max_batch_size=self.args.batch, overwrite=True)
        build_engine(export.path, options, progress=lambda line: print(line, file=sys.stderr))
        export.manifest = json.loads((export.path / "manifest.json").read_text())
        section = export.manifest["tensorrt"]
        self.builds.append(f"| {export.path.name} | {section['build_seconds']} | {section['engine_bytes'] / 2**20:.1f} "
                           f"| {len(section['profiles'])} | {section['precision_handling']} |")

    def backends(self, export: Export, reference: np.ndarray, pairs: list[list[str]]) -> None:
        for provider in self.args.backends:
            if provider == "cpu" and export.precision != "fp32":
                continue  # the CPU row is the fp32 reference itself
            name = f"{export.path.name} on {provider}"
            try:
                model = reranker(export, provider, self.args.batch)
                got = scores(model, pairs)
                diff, tol, ok = check_parity(got, reference, export.precision, provider)
                if not ok:
                    self.fail(f"{name}: max abs diff {diff:.3g} vs the fp32 CPU reference exceeds {tol}")
                    continue  # no timing for wrong scores
                seconds = median_seconds(lambda m=model: scores(m, pairs), self.args.repeats)
            except Exception as exc:  # report every backend, then exit 1
                self.fail(name, exc)
                continue
            self.rows.append(f"| {export.path.name} | {export.kind} | {export.precision} | {provider} | {diff:.2e} "
                             f"| {tol} | {len(pairs) / seconds:,.0f} |")

    def cuda_graphs(self, export: Export, ref_export: Export, pairs: list[list[str]]) -> None:
        from rerank_runtime.tolerances import tolerance
        from rerank_runtime.trt_backend import TensorRTBackend

        recorder_model = reranker(ref_export, "cpu", self.args.batch, record=True)
        plain = TensorRTBackend(export.path, export.manifest, 0)
        graphs = TensorRTBackend(export.path, export.manifest, 0, use_cuda_graphs=True)
        tol = tolerance(export.precision, "trt-engine")
        try:
            for batch in range(1, 5):
                recorder_model.compute_score_array(pairs[:batch], batch_size=batch)
                request, feeds = recorder_model.backend.calls[-1]
                a, b = np.stack(plain.run(request, feeds)), np.stack(graphs.run(request, feeds))
                diff = float(np.abs(a - b).max())
                if not np.isfinite(b).all() or diff > tol.atol:
                    self.fail(f"{export.path.name}: CUDA graph replay differs from plain execution by {diff:.3g}")
                    return
                t_plain = median_seconds(lambda r=request, f=feeds: plain.run(r, f), self.args.graph_iters)
                t_graph = median_seconds(lambda r=request, f=feeds: graphs.run(r, f), self.args.graph_iters)
                seq = feeds["input_ids"].shape[1]
                self.graph_rows.append(f"| {export.path.name} | {export.precision} | {batch} | {seq} | "
                                       f"{t_plain * 1e3:.3f} | {t_graph * 1e3:.3f} | {t_plain / t_graph:.2f}x "
                                       f"| {diff:.1e} |")
        finally:
            plain.close()
            graphs.close()


def environment() -> list[str]:
    import onnxruntime as ort
    import tensorrt as trt
    from rerank_runtime.cudart import CudaRuntime

    cuda = CudaRuntime()
    device = cuda.device_info(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return [f"- GPU 0: {device.name}, compute capability {device.compute_capability}, "
            f"CUDA driver {cuda.driver_version()}",
            f"- TensorRT {trt.__version__}; onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})",
            f"- commit {commit or 'unknown'}; Python {sys.version.split()[0]}"]


def load_exports(paths: list[Path]) -> list[Export]:
    return [Export(p, json.loads((p / "manifest.json").read_text())) for p in paths]


def run(args: argparse.Namespace) -> int:
    paths = list(args.exports)
    if args.make_tiny:
        paths += make_tiny(args.make_tiny, args.precisions, args.max_length)
    if not paths:
        print("no export directories: pass them as arguments or use --make-tiny DIR", file=sys.stderr)
        return 2
    from rerank_export.testing.pairs import benchmark_pairs

    exports = load_exports(paths)
    pairs = benchmark_pairs(args.pairs, max_tokens=args.max_tokens)
    check = Check(args)
    env = environment()
    references = {e.same_model(): e for e in exports if e.precision == "fp32"}
    ref_scores: dict[str, np.ndarray] = {}
    for export in exports:
        ref = references.get(export.same_model())
        if ref is None:
            check.fail(f"{export.path}: no fp32 export of the same model among the arguments (the reference)")
            continue
        try:
            check.build(export)
            if export.same_model() not in ref_scores:
                ref_scores[export.same_model()] = scores(reranker(ref, "cpu", args.batch), pairs)
            check.backends(export, ref_scores[export.same_model()], pairs)
            if "trt-engine" in args.backends:
                check.cuda_graphs(export, ref, pairs)
        except Exception as exc:
            check.fail(str(export.path), exc)
    print("## Environment\n" + "\n".join(env))
    print("\n## Engine builds\n| export | build s | engine MiB | profiles | precision |\n|---|---|---|---|---|")
    print("\n".join(check.builds))
    print(f"\n## Parity and end-to-end throughput ({len(pairs)} pairs, batch {args.batch}, median of {args.repeats})")
    print("| export | kind | precision | backend | max abs diff vs fp32 CPU | tolerance | pairs/s |")
    print("|---|---|---|---|---|---|---|\n" + "\n".join(check.rows))
    print(f"\n## CUDA graphs, native engine (median of {args.graph_iters} runs of one batch)")
    print("| export | precision | batch | seq | no graphs ms | graphs ms | speed-up | max diff |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(check.graph_rows))
    if check.failures:
        print(f"\n{len(check.failures)} failure(s):\n- " + "\n- ".join(check.failures), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exports", nargs="*", type=Path, help="export directories (include the fp32 ones)")
    parser.add_argument("--make-tiny", type=Path, help="first export the tiny built-in models into this folder")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"], help="for --make-tiny")
    parser.add_argument("--max-length", type=int, default=256, help="for --make-tiny")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=200, help="longest passage of the pair set, in words")
    parser.add_argument("--batch", type=int, default=32, help="batch size, and the engines' max batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--graph-iters", type=int, default=50)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
