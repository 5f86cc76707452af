"""Trace a family's score wrapper to ONNX with torch.onnx.export(dynamo=True), dynamic batch and sequence axes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rerank_runtime.compression import build_plan
from rerank_runtime.spec import GraphRequest

from .families import FamilySpec

# Opset 20: GELU is one Gelu node (ONNX Runtime runs it as one kernel, or fuses it with the bias as BiasGelu) instead
# of Erf/Mul/Div/Add or Mul/Pow/Tanh/Add; measured 6-14% faster on the mid models with GELU (benchmarks/README.md).
# One graph serves every target: TensorRT's ONNX parser takes opsets 9-20 from 10.0 on (11.x: up to 25), and so
# ONNX Runtime's TensorRT provider (TensorRT 10.x). Opset 23's RMSNormalization / Attention would need TensorRT 10.15
# / 10.14, newer than the [trt] extra's minimum, so norms and attention stay in standard ops.
OPSET = 20
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GB; larger models keep weights beside it


def input_names(family: FamilySpec, request: GraphRequest) -> tuple[str, ...]:
    return ("input_ids", "attention_mask") + family.extra_inputs(request)


def example_feeds(request: GraphRequest, pad_id: int, batch: int = 2, seq: int = 24) -> dict[str, np.ndarray]:
    """A right-padded example batch (row 1 shorter), with a compression plan when the request compresses."""
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 64, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[batch - 1, seq - min(5, seq - 1) :] = 0 if batch > 1 else 1
    ids[mask == 0] = pad_id
    feeds = {"input_ids": ids, "attention_mask": mask}
    if request.compress_ratio > 1:
        ql = np.full(batch, 4, dtype=np.int64)
        pl = np.full(batch, 3, dtype=np.int64)
        feeds.update(build_plan(mask, ql, pl, request.compress_ratio, len(request.compress_layers)))
    return feeds


def dynamic_shapes(names: tuple[str, ...]) -> tuple[Any, ...]:
    """Dynamic axes in the structure of the wrapper's signature: (input_ids, attention_mask, *plan)."""
    from torch.export import Dim

    batch, seq = Dim("batch", min=1), Dim("sequence", min=1)
    plan = tuple({0: batch, 1: Dim(f"compressed_{n.rsplit('_', 1)[1]}", min=1)} for n in names[2:])
    return ({0: batch, 1: seq}, {0: batch, 1: seq}) + ((plan,) if plan else ())


def trace_to_onnx(wrapper: Any, family: FamilySpec, request: GraphRequest, pad_id: int, path: Path) -> list[str]:
    """Export the wrapper to `path`; returns the external data file names written beside it (none for small models)."""
    import torch

    names = input_names(family, request)
    feeds = example_feeds(request, pad_id)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    weight_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, args, input_names=list(names), output_names=list(request.output_names),
            dynamic_shapes=dynamic_shapes(names), dynamo=True, opset_version=OPSET, optimize=True, verbose=False,
        )
    external = weight_bytes > EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=external)
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path) if external else []
