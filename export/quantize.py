"""int8: ONNX Runtime's dynamic quantisation of the weight matmuls, for CPUs (VNNI where available)."""

from __future__ import annotations

import os
from pathlib import Path

from rerank_runtime._deps import require


def weight_matmuls(path: Path) -> tuple[list[str], list[str]]:
    """(MatMul nodes with a 2-D weight initializer, the other MatMul/Gemm nodes): only the first are quantised.

    The score heads (a MatMul with a 1-D weight row) stay fp32: they are cheap, and ONNX Runtime's per-channel
    kernels reject 1-D weights.
    """
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    rank = {t.name: len(t.dims) for t in model.graph.initializer}
    quantise, keep = [], []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            (quantise if rank.get(node.input[1], 0) == 2 else keep).append(node.name)
    return quantise, keep


def quantize_int8(path: Path) -> list[str]:
    """Quantise model.onnx in place (per-channel int8 weights, dynamic int8 activations); no external data."""
    quantization = require("onnxruntime.quantization")
    _, keep = weight_matmuls(path)
    tmp = path.with_name("model.int8.onnx")
    quantization.quantize_dynamic(
        str(path), str(tmp), weight_type=quantization.QuantType.QInt8, per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=keep, use_external_data_format=False,
    )
    os.replace(tmp, path)
    return []
