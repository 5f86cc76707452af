"""Run an exported graph with ONNX Runtime: one verified InferenceSession on one device (spec.Backend).

A CUDA or TensorRT session is verified at load twice: ONNX Runtime must not have fallen back to another provider
(session.get_providers()), and one profiled probe batch must show no node computing data on the CPU and, for
TensorRT, the graph taken as one TensorRT subgraph (placement.py). The CUDA paths have not run on a GPU yet.
Several devices are several OnnxBackends behind a front.RoundRobin (onnx_backends builds them).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .cores import default_threads
from .errors import ArtifactError, ProviderUnavailableError
from .front import ServedGraph, one_backend
from .manifest import Manifest
from .placement import NodePlacement, check_placement, profiled_placement
from .providers import Placement
from .spec import Backend, GraphRequest

_PROBE_LENGTH = 16  # tokens of the probe batch that checks placement (covered by every profile: min length 1)


def onnx_backends(export_dir: str | os.PathLike[str], manifest: Manifest, placements: Sequence[Placement],
                  session_options: Any = None) -> Backend:
    """One OnnxBackend per placement (the CPU threads split between them), round-robin when there are several."""
    return one_backend([OnnxBackend(export_dir, manifest, p, session_options, share=len(placements))
                        for p in placements])


class OnnxBackend:
    """spec.Backend over one ONNX Runtime session on one device.

    The session is built and checked at init, so a missing provider, a fallback or a graph that disagrees with the
    manifest is reported when the model loads rather than at the first call. run() is thread-safe (ONNX Runtime's
    run is, and a GPU run binds its own IOBinding).
    """

    concurrency = 1

    def __init__(self, export_dir: str | os.PathLike[str], manifest: Manifest, placement: Placement,
                 session_options: Any = None, *, share: int = 1) -> None:
        """session_options: an onnxruntime.SessionOptions used as given; by default the session takes 1/share of the
        CPU threads (share: how many sessions run side by side) and the graph is optimised fully in memory (nothing
        is written to disk)."""
        if placement.primary is None:
            raise ProviderUnavailableError(
                f"placement {placement.provider!r} on {placement.device} has no ONNX Runtime provider; "
                "native TensorRT engines are run by rerank_runtime.trt_backend, not OnnxBackend"
            )
        self.export_dir, self.manifest, self.placement = Path(export_dir), manifest, placement
        self.node_placement: NodePlacement | None = None  # checked on a GPU; None on the CPU (nothing to check)
        self.session = self._build(session_options, max(1, share))

    # --- building --------------------------------------------------------------------------------------------------

    def _build(self, session_options: Any, share: int) -> Any:
        ort, placement = require("onnxruntime"), self.placement
        options = session_options if session_options is not None else default_options(ort, placement, share)
        if placement.provider == "tensorrt":
            self._make_trt_cache()
            _preload_tensorrt_libs()
        model = self.export_dir / self.manifest.graph.file
        if not placement.on_gpu:
            return self._open(ort, model, options)
        session, found = profiled_placement(lambda o: self._open(ort, model, o), options, self._probe)
        check_placement(found, placement.provider, f"the ONNX Runtime session for {model} on {placement.device}")
        self.node_placement = found
        return session

    def _open(self, ort: Any, model: Path, options: Any) -> Any:
        placement = self.placement
        try:
            session = ort.InferenceSession(str(model), sess_options=options,
                                           providers=[(n, dict(o)) for n, o in placement.ort_providers])
        except Exception as exc:  # ORT raises its own pybind exception classes
            raise _session_error(exc, model, placement) from exc
        got = list(session.get_providers())
        if not got or got[0] != placement.primary:
            raise ProviderUnavailableError(
                f"ONNX Runtime fell back: asked for {placement.primary} on {placement.device}, got providers {got}; "
                "the provider's libraries (CUDA, cuDNN, TensorRT) or the device are not usable here: "
                "check the ONNX Runtime log above and `nvidia-smi`, or use provider='cpu'"
            )
        self.manifest.validate_against(session, where=str(model))
        return session

    def _probe(self, session: Any) -> None:
        """One small batch of pad tokens through the session, every output bound (it only has to run)."""
        length = min(_PROBE_LENGTH, self.manifest.max_sequence_length)
        ids = np.full((1, length), self.manifest.spec.pad_token_id, dtype=np.int64)
        feeds = ServedGraph.of(self.manifest, self.export_dir).complete(
            GraphRequest(), {"input_ids": ids, "attention_mask": np.ones_like(ids)})  # pass-through plans
        run_bound(session, feeds, list(self.manifest.exit_names()), "cuda", self.placement.device_id)

    def _make_trt_cache(self) -> None:
        cache = Path(dict(self.placement.ort_providers[0][1])["trt_engine_cache_path"])
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create the TensorRT engine cache folder {cache} ({exc}); pass trt_cache_dir= a writable folder"
            ) from exc

    # --- Backend protocol ------------------------------------------------------------------------------------------

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.placement.on_gpu:
            return run_bound(self.session, dict(feeds), list(names), "cuda", self.placement.device_id)
        return list(self.session.run(list(names), dict(feeds)))

    def session_providers(self) -> list[str]:
        """session.get_providers(), for diagnostics."""
        return list(self.session.get_providers())


def default_options(ort: Any, placement: Placement, share: int = 1) -> Any:
    """The runtime's session options: full graph optimisation in memory, 1/share of the physical cores per session."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = default_threads(share)  # physical cores, not SMT siblings
    so.inter_op_num_threads = 1
    if placement.provider == "cpu":
        # ONNX Runtime 1.32's CPU SkipLayerNormalization kernel is 5-10x slower than the Add, Add and
        # LayerNormalization it replaces (measured in benchmarks/README.md): the encoder runs ~13% faster unfused.
        so.add_session_config_entry("optimization.disable_specified_optimizers", "SkipLayerNormFusion")
    return so


def run_bound(session: Any, inputs: dict[str, np.ndarray], outputs: list[str], device: str, device_id: int
              ) -> list[np.ndarray]:
    """Run through an IOBinding: inputs copied to `device` from numpy, outputs bound to the CPU.

    One IOBinding per call, so concurrent calls never share one. The CUDA path is UNVERIFIED on a GPU here; the same
    code runs with device="cpu" in the tests.
    """
    ort = require("onnxruntime")
    io = session.io_binding()
    for name, array in inputs.items():
        io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, device_id))
    for name in outputs:
        io.bind_output(name, "cpu")
    session.run_with_iobinding(io)
    return list(io.copy_outputs_to_cpu())


def _preload_tensorrt_libs() -> None:
    """Load the TensorRT libraries of the tensorrt-cu13-libs wheel ([cuda] extra) so that ONNX Runtime's TensorRT
    provider finds libnvinfer.so.10 in site-packages; the package's import does that (TensorRT's own Python bindings
    rely on it). Without the wheel, the libraries must be on the loader's path, or the session build says so."""
    try:
        importlib.import_module("tensorrt_libs")
    except ImportError:
        pass


def _session_error(exc: Exception, model: Path, placement: Placement) -> Exception:
    """ORT's EPFail means the provider broke; every other load error means the file is unusable."""
    kind = type(exc).__name__
    if kind == "EPFail":
        return ProviderUnavailableError(
            f"ONNX Runtime could not start {placement.primary} on {placement.device} for {model}: {exc}; "
            "check the CUDA/cuDNN/TensorRT installation, or use provider='cpu'"
        )
    return ArtifactError(
        f"ONNX Runtime could not load {model} on {placement.primary} ({kind}: {exc}); the file may be corrupt, "
        "truncated or from a newer exporter: re-export it with `rerank-export`"
    )
