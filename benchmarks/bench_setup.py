"""What a benchmark run needs before it times anything: the kinds and their calls, cached exports, the pair sets,
token statistics, and the contenders themselves (CPU and GPU)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bench_contenders import Contender, ContenderError, InProcess, WorkerContender, st_checkpoint

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class KindSetup:
    """One benchmarked kind: the built-in mid checkpoint (trained on the synthetic relevance task, so that the parity
    gates and the int8 ranking check compare real rankings), the export options and the compute_score call."""

    builtin: str
    export: dict[str, Any] = field(default_factory=dict)
    call: dict[str, Any] = field(default_factory=dict)


# The lightweight kind runs as its model card recommends (cutoff two thirds of the way down, compression ratio 2
# a few layers before it), scaled to the mid model's 8 layers; the others run FlagEmbedding's defaults.
KINDS: dict[str, KindSetup] = {
    "xlm-roberta": KindSetup("mid-xlm-roberta-trained"),
    "gemma": KindSetup("mid-gemma-trained"),
    "minicpm-layerwise": KindSetup("mid-minicpm-layerwise-trained"),
    "gemma2-lightweight": KindSetup(
        "mid-gemma2-lightweight-trained", export={"cutoff_layers": (5,), "compress_ratio": 2, "compress_layers": (4,)},
        call={"cutoff_layers": [5], "compress_ratio": 2, "compress_layers": [4]},
    ),
}
CPU_CONTENDERS = ("flagembedding", "reference", "ort-fp32", "ort-int8", "st-onnx", "st-onnx-o2", "st-onnx-o3")
GPU_CONTENDERS = ("flagembedding-fp16", "ort-cuda-fp32", "ort-cuda-fp16", "ort-tensorrt-fp16", "trt-engine-fp16")
# sentence-transformers' CrossEncoder serves sequence-classification models only: its plain ONNX export and its
# Optimum-optimised ones (O2: ONNX Runtime's transformer fusions; O3: O2 with GELU approximated)
ST_LEVELS = {"st-onnx": None, "st-onnx-o2": "O2", "st-onnx-o3": "O3"}
ENCODER_ONLY = tuple(ST_LEVELS)


def model_class_of(checkpoint: Path) -> str:
    from rerank_export.reference import detect_model_class

    return detect_model_class(str(checkpoint))


# --- exports ----------------------------------------------------------------------------------------------------------


def _export_key(checkpoint: Path, precision: str, options: dict[str, Any]) -> str:
    weights = checkpoint / "model.safetensors"
    stamp = [str(checkpoint.resolve()), weights.stat().st_size, weights.stat().st_mtime_ns, precision,
             sorted(options.items())]
    sources = [REPO / "export" / f"{m}.py" for m in ("exporter", "quantize", "onnx_export", "verify", "precision")]
    sources += sorted((REPO / "export" / "models").glob("*.py")) + sorted((REPO / "export" / "families").glob("*.py"))
    for source in sources:  # the export code's own version: the graph it traces and how
        stamp.append(hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else "")
    return hashlib.sha256(json.dumps(stamp, default=str).encode()).hexdigest()[:12]


def ensure_export(checkpoint: Path, precision: str, options: dict[str, Any], cache: Path) -> dict[str, Any]:
    """Export (verified) into the cache, or reuse an earlier export of the same checkpoint, options and code.

    Returns a record: path, seconds (0 when reused), verification, or error (a failed export is not retried until
    the checkpoint or the export code changes: its message is cached beside it).
    """
    from rerank_export.exporter import ExportOptions, export_onnx
    from rerank_export.progress import Progress
    from rerank_runtime.errors import RerankError

    key = _export_key(checkpoint, precision, options)
    out = cache / "exports" / f"{checkpoint.name}-{precision}-{key}"
    failure = out.with_suffix(".error.json")
    record: dict[str, Any] = {"precision": precision, "path": str(out), "options": {k: list(v) if isinstance(v, tuple)
                                                                                    else v for k, v in options.items()}}
    if (out / "manifest.json").is_file():
        manifest = json.loads((out / "manifest.json").read_text())
        return {**record, "seconds": 0.0, "reused": True, "verification": manifest.get("verification")}
    if failure.is_file():
        return {**record, **json.loads(failure.read_text()), "reused": True}
    start = time.perf_counter()
    try:
        export_onnx(ExportOptions(model=str(checkpoint), output=str(out), precision=precision, overwrite=True,
                                  **options), Progress([], quiet=True))
    except RerankError as exc:  # ParityError above all: recorded, never hidden
        error = {"error": {"type": type(exc).__name__, "message": str(exc)}, "seconds": time.perf_counter() - start}
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(json.dumps(error))
        return {**record, **error, "reused": False}
    manifest = json.loads((out / "manifest.json").read_text())
    return {**record, "seconds": time.perf_counter() - start, "reused": False,
            "verification": manifest.get("verification")}


# --- pair sets ----------------------------------------------------------------------------------------------------


def pair_sets(n_pairs: int, latency_passages: int, sweep_batches: tuple[int, ...]) -> dict[str, list[list[str]]]:
    """throughput: n pairs, 32-512 token passages; latency: one query with `latency_passages` passages;
    sweep_b<B>: B pairs with passages longer than 512 tokens (the sweep cuts them with max_length)."""
    from rerank_export.testing.pairs import benchmark_pairs

    sets = {"throughput": benchmark_pairs(n_pairs, seed=0)}
    latency = benchmark_pairs(latency_passages, seed=1)
    sets["latency"] = [[latency[0][0], passage] for _, passage in latency]
    for batch in sweep_batches:
        sets[f"sweep_b{batch}"] = benchmark_pairs(batch, seed=2, min_tokens=600, max_tokens=600)
    return sets


def gate_set(throughput: list[list[str]], size: int) -> list[list[str]]:
    """An evenly spaced subset of the throughput pairs (their mix of lengths), scored before anything is timed."""
    step = max(1, len(throughput) // max(1, size))
    return throughput[::step][:size]


# --- token statistics ---------------------------------------------------------------------------------------------


@dataclass
class TokenStats:
    lengths: list[int]
    keys: list[int]
    query_lengths: list[int] | None
    prompt_lengths: list[int] | None
    pad_multiple: int | None

    def fed(self, batch_size: int, max_batch_tokens: int | None = None, probe: bool = False) -> int:
        """Tokens a run feeds its model, padding included: the runtime's sort and batching; probe=True adds
        FlagEmbedding's extra forward of the first (longest) batch."""
        from rerank_runtime.batching import padded_length, plan_batches, sort_order

        lengths = np.asarray(self.lengths, dtype=np.int64)
        batches = plan_batches(sort_order(np.asarray(self.keys)), lengths, batch_size, max_batch_tokens,
                               self.pad_multiple)
        sizes = [len(b) * padded_length(int(lengths[b].max()), self.pad_multiple) for b in batches]
        return int(sum(sizes) + (sizes[0] if probe and sizes else 0))


def token_stats(reranker: Any, pairs: list[list[str]], call: dict[str, Any]) -> tuple[TokenStats, Any]:
    """The ids the runtime's host code builds for these pairs (FlagEmbedding's layout) and the call's GraphRequest."""
    from rerank_runtime.layout import PairEncoder

    plan, _ = reranker._plan({k: v for k, v in call.items()})
    scorer = reranker._scorer
    queries, passages = scorer.instructions.apply([p[0] for p in pairs], [p[1] for p in pairs])
    chunk = PairEncoder(scorer.spec, scorer.kind, scorer.tokenizer, plan.layout).encode(queries, passages)

    def as_list(values: Any) -> list[int] | None:
        return None if values is None else [int(v) for v in values]

    stats = TokenStats([len(ids) for ids in chunk.ids], [int(k) for k in chunk.keys], as_list(chunk.query_lengths),
                       as_list(chunk.prompt_lengths), scorer.kind.pad_multiple)
    return stats, plan.request


# --- contenders -----------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """Shared settings for building contenders."""

    kind: str
    checkpoint: Path
    model_class: str
    exports: dict[str, dict[str, Any]]  # precision -> ensure_export record
    threads: int
    cache: Path
    oracle_python: str | None
    st_python: str | None
    max_batch_tokens: int | None
    logs: Path


def _runtime(ctx: Context, precision: str, name: str, provider: str = "cpu") -> Contender:
    import rerank_runtime
    from rerank_runtime.front import backends_of

    record = ctx.exports.get(precision)
    if record is None:
        raise ContenderError(f"no {precision} export was made for {ctx.kind}")
    if "error" in record:
        err = record["error"]
        raise ContenderError(f"the {precision} export failed: {err['type']}: {err['message']}")
    devices = "cpu" if provider == "cpu" else "cuda:0"
    reranker = rerank_runtime.FlagAutoReranker.from_finetuned(
        record["path"], model_class=ctx.model_class, devices=devices, provider=provider,
        max_batch_tokens=ctx.max_batch_tokens)
    info = {"export": record["path"], "provider": provider, "max_batch_tokens": ctx.max_batch_tokens,
            "session_providers": [b.session_providers() for b in backends_of(reranker.front.backend)]}
    return InProcess(name, precision, reranker, info)


def reference(ctx: Context) -> InProcess:
    import torch
    from rerank_export import reference as ref

    torch.set_num_threads(ctx.threads)
    reranker = ref.FlagAutoReranker.from_finetuned(str(ctx.checkpoint), model_class=ctx.model_class, devices="cpu",
                                                   max_batch_tokens=ctx.max_batch_tokens)
    info = {"torch_threads": torch.get_num_threads(), "max_batch_tokens": ctx.max_batch_tokens}
    return InProcess("reference", "fp32", reranker, info)


def _worker(ctx: Context, name: str, backend: str, python: str | None, hint: str, device: str = "cpu",
            fp16: bool = False, optimization: str | None = None) -> Contender:
    if python is None:
        raise ContenderError(f"no interpreter for {name}: {hint}")
    checkpoint = ctx.checkpoint if backend == "flagembedding" else st_checkpoint(ctx.checkpoint, ctx.cache)
    load = {"backend": backend, "checkpoint": str(checkpoint), "model_class": ctx.model_class, "init": {},
            "device": device, "fp16": fp16, "threads": ctx.threads, "optimization": optimization}
    return WorkerContender(name, "fp16" if fp16 else "fp32", python, load, ctx.logs / f"{ctx.kind}-{name}.log",
                           call_filter=() if backend == "st-onnx" else None)


def _trt_engine(ctx: Context) -> Contender:
    from rerank_export.tensorrt_build import EngineOptions, build_engine

    record = ctx.exports.get("fp16") or {}
    if "error" in record or "path" not in record:
        raise ContenderError(f"no usable fp16 export for the TensorRT engine: {record.get('error')}")
    start = time.perf_counter()
    if not (Path(record["path"]) / "model.engine").is_file():  # built once per export, then loaded
        build_engine(Path(record["path"]), EngineOptions(max_batch_size=128), progress=lambda line: None)
    contender = _runtime(ctx, "fp16", "trt-engine-fp16", provider="trt-engine")
    contender.info["engine_build_or_load_seconds"] = time.perf_counter() - start
    return contender


ORACLE_HINT = "run `make oracle` (creates .venv-oracle) or pass --oracle-python / set RERANK_ORACLE_PYTHON"
ST_HINT = ("create it with `python -m venv .cache/bench/venv-st && .cache/bench/venv-st/bin/pip install -r "
           "benchmarks/st-requirements.txt`, or pass --st-python")
BUILDERS: dict[str, Callable[[Context], Contender]] = {
    "flagembedding": lambda c: _worker(c, "flagembedding", "flagembedding", c.oracle_python, ORACLE_HINT),
    "reference": reference,
    "ort-fp32": lambda c: _runtime(c, "fp32", "ort-fp32"),
    "ort-int8": lambda c: _runtime(c, "int8", "ort-int8"),
    **{name: (lambda c, name=name, level=level: _worker(c, name, "st-onnx", c.st_python, ST_HINT,
                                                         optimization=level)) for name, level in ST_LEVELS.items()},
    "flagembedding-fp16": lambda c: _worker(c, "flagembedding-fp16", "flagembedding", c.oracle_python, ORACLE_HINT,
                                            device="cuda:0", fp16=True),
    "ort-cuda-fp32": lambda c: _runtime(c, "fp32", "ort-cuda-fp32", provider="cuda"),
    "ort-cuda-fp16": lambda c: _runtime(c, "fp16", "ort-cuda-fp16", provider="cuda"),
    "ort-tensorrt-fp16": lambda c: _runtime(c, "fp16", "ort-tensorrt-fp16", provider="tensorrt"),
    "trt-engine-fp16": _trt_engine,
}
PRECISIONS_NEEDED = {"ort-fp32": "fp32", "ort-int8": "int8", "ort-cuda-fp32": "fp32", "ort-cuda-fp16": "fp16",
                     "ort-tensorrt-fp16": "fp16", "trt-engine-fp16": "fp16"}


def default_python(env_var: str, default: Path) -> str | None:
    value = os.environ.get(env_var, "").strip()
    if value:
        return value
    return str(default) if default.exists() else None
