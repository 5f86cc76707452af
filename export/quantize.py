"""int8: ONNX Runtime's dynamic quantisation of the weight matmuls, for CPUs (VNNI where available).

Weights are int8 per output channel, activations uint8 per tensor, quantised on the fly (ONNX Runtime's dynamic
mode supports nothing else: ActivationSymmetric and reduce_range were measured and change nothing or make it worse).
Two kinds of matmul stay fp32 because they carry most of the error (measured one node at a time on the built-in
tiny and mid models, mean |int8 - fp32| over the score spread, 96 pairs):

- every MLP down projection (`mlp.down_proj`; `layer.N.output.dense` in XLM-R): its input is the product of the
  gate/activation, the most heavy-tailed tensor in the block, and a per-tensor uint8 scale loses its small values;
  each one alone costs 2-10x what a q/k/v projection does;
- the first transformer layer: its error travels through every later layer (alone it is the largest single
  contributor on the lightweight model: o_proj of layer 0 is two thirds of the whole error there).

Keeping them halves the error of the decoders (mid gemma: Spearman 0.957 -> 0.992 on 96 pairs) for about 15% of the
int8 speed-up (mid gemma, 16 x 128 tokens on 2 threads: fp32 529 ms, all int8 356 ms, this plan 412 ms). The score
heads (a MatMul with a 1-D weight row) stay fp32 as well: they are cheap and the per-channel kernels reject 1-D weights.
Nodes are recognised by the module path that torch.onnx's dynamo exporter records on each node ("name scopes").
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

from rerank_runtime._deps import require
from rerank_runtime.errors import ExportError

SCOPE_KEY = "pkg.torch.onnx.name_scopes"
KEEP_FP32_LAYERS = (0,)
_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)(?:\.|$)")
_DOWN_PROJECTION = re.compile(r"(?:^|\.)(?:mlp\.down_proj|layer\.\d+\.output\.dense)$")


def node_scope(node: Any) -> str | None:
    """The innermost module path the exporter recorded for a node ("model.layers.0.mlp.down_proj"), if any."""
    for prop in node.metadata_props:
        if prop.key == SCOPE_KEY:
            scopes = ast.literal_eval(prop.value)
            modules = [s for s in scopes[:-1] if s]  # the last entry is the op itself ("linear")
            return modules[-1] if modules else ""
    return None


def keeps_fp32(scope: str) -> bool:
    """True for the matmuls this plan leaves in fp32: the first layer's and every MLP down projection."""
    layer = _LAYER.search(scope)
    return bool(_DOWN_PROJECTION.search(scope)) or (layer is not None and int(layer.group(1)) in KEEP_FP32_LAYERS)


def int8_plan(path: Path) -> tuple[list[str], list[str]]:
    """(MatMul/Gemm nodes to quantise, those that stay fp32) for the exported graph at `path`."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    rank = {t.name: len(t.dims) for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    scopes = {n.name: node_scope(n) for n in matmuls}
    if matmuls and all(s is None for s in scopes.values()):
        raise ExportError(
            f"{path} records no module names on its nodes ({SCOPE_KEY!r}), so the int8 plan cannot tell the "
            "sensitive matmuls apart; export with torch.onnx.export(dynamo=True) as rerank-export does"
        )
    quantise, keep = [], []
    for node in matmuls:
        weight = rank.get(node.input[1], 0) == 2
        (quantise if weight and not keeps_fp32(scopes[node.name] or "") else keep).append(node.name)
    return quantise, keep


def quantize_int8(path: Path, external: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Quantise model.onnx in place; returns the external data files it now uses.

    A graph whose fp32 weights needed external data (over protobuf's 2 GB) is written with external data again, in
    one file `<name>.data` beside it, and the fp32 data files are removed.
    """
    quantization = require("onnxruntime.quantization")
    quantise, keep = int8_plan(path)
    if not quantise:
        raise ExportError(f"{path} has no weight matmul to quantise; int8 would be the fp32 graph: export fp32")
    staging = path.parent / ".int8"
    staging.mkdir()
    quantization.quantize_dynamic(
        str(path), str(staging / path.name), weight_type=quantization.QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep, use_external_data_format=bool(external),
    )
    for name in external:
        (path.parent / name).unlink()
    written = sorted(p.name for p in staging.iterdir())
    for name in written:
        os.replace(staging / name, path.parent / name)
    staging.rmdir()
    return [name for name in written if name != path.name]
