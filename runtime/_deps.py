"""One place for optional imports, so every missing extra gives the same actionable message."""

from __future__ import annotations

import importlib
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from types import ModuleType

from .errors import MissingDependencyError

DIST = "bge-rerank-fast"


def _repository() -> Path | None:
    """The clone this package runs from (an editable install, or a checkout on sys.path), if it is one."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "runtime" / "_deps.py").is_file() else None

# import name -> (what it is for, the extras that bring it, a note)
_EXTRAS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "onnxruntime": ("running ONNX artifacts", ("cpu", "cuda"),
                    "; [cpu] brings onnxruntime, [cuda] onnxruntime-gpu: install one, never both"),
    "torch": ("exporting and the PyTorch reference", ("export",), ""),
    "transformers": ("converting tokenizers without tokenizer.json", ("export",), ""),
    "onnx": ("exporting", ("export",), ""),
    "onnxscript": ("exporting", ("export",), ""),
    "safetensors": ("loading checkpoints", ("export",), ""),
    "tensorrt": ("native TensorRT engines", ("trt",),
                 "; the TensorRT packages on the index are stubs whose libraries come from NVIDIA's own index "
                 "(pypi.nvidia.com) at install time, so that index must be reachable"),
    "cuda": ("native TensorRT engines (cuda-bindings)", ("trt",), ""),
    "matplotlib": ("benchmark charts", ("bench",), ""),
    "starlette": ("rerank-serve", ("serve",), ""),
    "uvicorn": ("rerank-serve", ("serve",), ""),
    "prometheus_client": ("rerank-serve's /metrics", ("serve",), ""),
    "ray": ("rerank-serve --ray (Ray Serve)", ("ray",), ""),
}


def install_command(*extras: str) -> str:
    """`pip install '<clone>[extras]'`: the clone this package runs from when it is one, else '.' (run in a clone)."""
    root = _repository()
    return f"pip install '{root if root is not None else '.'}[{','.join(extras)}]'"


def install_where() -> str:
    """Where an install_command runs, and why from a clone: said once per message."""
    where = "" if _repository() is not None else f" in a clone of the {DIST} repository"
    return f"{where} (the package is not on the package index)"


def install_hint(*extras: str) -> str:
    """The command that installs these extras, with where it runs."""
    return install_command(*extras) + install_where()


def require(module: str) -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        purpose, extras, note = _EXTRAS.get(top, ("this feature", ("export",), ""))
        commands = " or ".join(f"`{install_command(extra)}`" for extra in extras)
        raise MissingDependencyError(
            f"{module} is required for {purpose} but is not installed ({exc}); install it with {commands}"
            f"{install_where()}{note}"
        ) from exc


def installed_versions(dists: Iterable[str], *, python: bool = False) -> dict[str, str]:
    """{distribution: version} of those of `dists` that are installed, with the Python version first when asked.

    What manifest.json records as the tools an export was made with, and what rerank-serve's /info and the
    benchmarks report."""
    out = {"python": platform.python_version()} if python else {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
