"""Precision policies for export: which weights take the low-precision dtype, and the tolerance table's keys."""

from __future__ import annotations

from typing import Any

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def cast_weights(module: Any, precision: str) -> Any:
    """Cast Linear and Embedding weights (the matmuls) to the precision; norms, heads and maths stay fp32.

    The models compute norms, the residual stream, softmax, rotary maths and the score heads in fp32 whatever the
    weight dtype (models/decoder.py), so the exported graph is mixed precision by construction: what TensorRT 11's
    strongly typed networks and ONNX Runtime both execute as written.
    """
    from torch import nn

    if precision == "fp32":
        return module
    dtype = torch_dtype(precision)
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            sub.to(dtype)
    return module
