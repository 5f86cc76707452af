"""One place for optional imports, so every missing extra gives the same actionable message."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

DIST = "bge-rerank-fast"

# import name -> (what it is for, the extra that installs it)
_EXTRAS = {
    "onnxruntime": ("running ONNX artifacts", "cpu] or [gpu"),
    "torch": ("exporting and the PyTorch reference", "export"),
    "transformers": ("converting tokenizers without tokenizer.json", "export"),
    "onnx": ("exporting", "export"),
    "onnxscript": ("exporting", "export"),
    "safetensors": ("loading checkpoints", "export"),
    "tensorrt": ("TensorRT engines", "gpu"),
    "cuda": ("TensorRT engines (cuda-python)", "gpu"),
    "matplotlib": ("benchmark charts", "bench"),
    "starlette": ("rerank-serve", "serve"),
    "uvicorn": ("rerank-serve", "serve"),
    "prometheus_client": ("rerank-serve's /metrics", "serve"),
    "ray": ("rerank-serve --ray", "ray"),
}


def require(module: str) -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        purpose, extra = _EXTRAS.get(top, ("this feature", "export"))
        raise MissingDependencyError(
            f"{module} is required for {purpose} but is not installed ({exc}); "
            f"install it with: pip install '{DIST}[{extra}]'"
        ) from exc
