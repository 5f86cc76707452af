"""Timing worker for the contenders that live in their own environments, driven over stdin/stdout.

    .venv-oracle/bin/python benchmarks/bench_worker.py          # FlagEmbedding 1.4.2 (transformers 4.47.1)
    .cache/bench/venv-st/bin/python benchmarks/bench_worker.py  # sentence-transformers' CrossEncoder, ONNX backend

One JSON object per line each way, so that the harness pays process start and model load once and the timings
cover compute_score / predict alone (FlagEmbedding's per-call probe forward included: it is part of its cost).

Requests:
  {"op": "load", "backend": "flagembedding" | "st-onnx", "checkpoint": dir, "model_class": str, "init": {...},
   "device": "cpu" | "cuda:N", "fp16": bool, "threads": int,
   "optimization": null | "O1" | "O2" | "O3"}                 -> {"seconds": load time, "versions": {...}}
  {"op": "pairs", "name": str, "pairs": [[q, p], ...]}         -> {"count": n}    (sent once, reused by name)
  {"op": "score", "name": str, "call": {...}}                  -> {"seconds": one call's time, "scores": [...]}
  {"op": "quit"}
Every response carries "ok"; a failed request answers {"ok": false, "error": {"type", "message"}} and the worker
keeps serving. Stdout carries only the JSON lines: whatever the libraries print goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Callable

FE_CLASSES = {
    "encoder-only-base": "FlagReranker",
    "decoder-only-base": "FlagLLMReranker",
    "decoder-only-layerwise": "LayerWiseFlagLLMReranker",
    "decoder-only-lightweight": "LightWeightFlagLLMReranker",
}


class Worker:
    def __init__(self) -> None:
        self.score_fn: Callable[[list[list[str]], dict[str, Any]], list[float]] | None = None
        self.pairs: dict[str, list[list[str]]] = {}
        self.sync: Callable[[], None] = lambda: None

    def load(self, req: dict[str, Any]) -> dict[str, Any]:
        import torch

        torch.set_num_threads(int(req.get("threads") or os.cpu_count() or 1))
        device = req.get("device", "cpu")
        if device != "cpu":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {device!r} was asked for, but torch sees no CUDA device in this worker")
            self.sync = torch.cuda.synchronize
        start = time.perf_counter()
        backend = req["backend"]
        if backend == "flagembedding":
            self.score_fn = self._flagembedding(req, device)
        elif backend == "st-onnx":
            self.score_fn = self._st_onnx(req, device)
        else:
            raise ValueError(f"unknown backend {backend!r}; expected 'flagembedding' or 'st-onnx'")
        return {"seconds": time.perf_counter() - start, "versions": versions()}

    def _flagembedding(self, req: dict[str, Any], device: str) -> Callable[..., list[float]]:
        import FlagEmbedding

        cls = getattr(FlagEmbedding, FE_CLASSES[req["model_class"]])
        reranker = cls(req["checkpoint"], devices=device, use_fp16=bool(req.get("fp16")), **(req.get("init") or {}))

        def score(pairs: list[list[str]], call: dict[str, Any]) -> list[float]:
            out = reranker.compute_score(pairs, **call)
            return [float(x) for x in (out.tolist() if hasattr(out, "tolist") else out)]

        return score

    def _st_onnx(self, req: dict[str, Any], device: str) -> Callable[..., list[float]]:
        """sentence-transformers' ONNX CrossEncoder; with "optimization" (O1/O2/O3) its Optimum-optimised export of
        the same model (export_optimized_onnx_model, made once into the checkpoint copy's onnx/ folder)."""
        import onnxruntime as ort
        import torch
        from sentence_transformers import CrossEncoder

        path, level = req["checkpoint"], req.get("optimization")
        provider = "CPUExecutionProvider" if device == "cpu" else "CUDAExecutionProvider"
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(req.get("threads") or 0)  # the same thread count as every contender

        def load(file_name: str | None) -> Any:
            kwargs = {"provider": provider, "session_options": options, **({"file_name": file_name} if file_name
                                                                           else {})}
            return CrossEncoder(path, backend="onnx", device=device, max_length=512,
                                activation_fn=torch.nn.Identity(), model_kwargs=kwargs)

        model = load("onnx/model.onnx" if os.path.isfile(os.path.join(path, "onnx", "model.onnx")) else None)
        if not os.path.isfile(os.path.join(path, "onnx", "model.onnx")):
            model.save_pretrained(path)  # a private copy of the checkpoint (bench_contenders.st_checkpoint)
        if level:
            from sentence_transformers.backend import export_optimized_onnx_model

            optimised = f"onnx/model_{level}.onnx"
            if not os.path.isfile(os.path.join(path, optimised)):
                export_optimized_onnx_model(model, level, path)
            model = load(optimised)
        got = model.model.providers if hasattr(model.model, "providers") else [provider]
        if got[0] != provider:
            raise RuntimeError(f"sentence-transformers' ONNX model runs on {got}, not {provider}")

        def score(pairs: list[list[str]], call: dict[str, Any]) -> list[float]:
            out = model.predict([tuple(p) for p in pairs], show_progress_bar=False, convert_to_numpy=True, **call)
            return [float(x) for x in out.reshape(-1)]

        return score

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "load":
            return self.load(req)
        if op == "pairs":
            self.pairs[req["name"]] = [list(p) for p in req["pairs"]]
            return {"count": len(self.pairs[req["name"]])}
        if op == "score":
            if self.score_fn is None:
                raise RuntimeError("score before load: send a load request first")
            if req["name"] not in self.pairs:
                raise KeyError(f"no pair set named {req['name']!r}; send it with a pairs request first")
            pairs = self.pairs[req["name"]]
            self.sync()
            start = time.perf_counter()
            scores = self.score_fn(pairs, req.get("call") or {})
            self.sync()
            return {"seconds": time.perf_counter() - start, "scores": scores}
        raise ValueError(f"unknown op {op!r}; expected load, pairs, score or quit")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("FlagEmbedding", "sentence-transformers", "optimum-onnx", "onnxruntime", "torch", "transformers",
                 "tokenizers", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def main() -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"  # a missing checkpoint must fail, never download
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # from here on, anything printed (Python or C level) lands on stderr
    sys.stdout = sys.stderr
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if req.get("op") == "quit":
                break
            response = {"ok": True, **worker.handle(req)}
        except Exception as exc:  # a failed request is an answer; the harness decides what it means
            traceback.print_exc(file=sys.stderr)
            response = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        out.write(json.dumps(response) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
