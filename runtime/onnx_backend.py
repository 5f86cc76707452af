"""Run an exported graph with ONNX Runtime: one InferenceSession per placement, verified, round-robin.

A CUDA or TensorRT session is verified at load twice: ONNX Runtime must not have fallen back to another provider
(session.get_providers()), and one profiled probe batch must show no node computing data on the CPU and, for
TensorRT, the graph taken as one TensorRT subgraph (placement.py). The CUDA paths have not run on a GPU yet.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .compression import pass_through_stages, served_stages
from .cores import default_threads
from .errors import ArtifactError, ManifestMismatchError, ProviderUnavailableError, UnsupportedRequestError
from .manifest import Manifest
from .placement import NodePlacement, check_placement, profiled_placement
from .providers import Placement
from .spec import GraphRequest

_PROBE_LENGTH = 16  # tokens of the probe batch that checks placement (covered by every profile: min length 1)

# manifest dtype -> numpy dtype for feeds (bfloat16 has no numpy dtype: such inputs cannot be fed from the host)
_NUMPY = {"int64": np.int64, "int32": np.int32, "float32": np.float32, "float16": np.float16,
          "float64": np.float64, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


class OnnxBackend:
    """The Backend protocol over ONNX Runtime.

    Sessions are built at init, so a missing provider, a fallback or a graph that disagrees with the manifest is
    reported when the model loads rather than at the first call. run() is thread-safe: with several sessions it picks
    them round-robin, and `concurrency` tells the host how many batches to keep in flight.
    """

    def __init__(
        self,
        export_dir: str | os.PathLike[str],
        manifest: Manifest,
        placements: Sequence[Placement],
        session_options: Any = None,
    ):
        """session_options: an onnxruntime.SessionOptions used as given; by default threads are split between the
        sessions and the graph is optimised fully in memory (nothing is written to disk)."""
        if not placements:
            raise UnsupportedRequestError("OnnxBackend needs at least one placement (see providers.resolve)")
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.placements = tuple(placements)
        self.node_placements: list[NodePlacement | None] = []  # per session; None on the CPU (nothing to check)
        self._sessions = [self._build(p, session_options) for p in self.placements]
        self.concurrency = len(self._sessions)
        self._lock = threading.Lock()
        self._turn = 0

    # --- building --------------------------------------------------------------------------------------------------

    def _build(self, placement: Placement, session_options: Any) -> Any:
        ort = require("onnxruntime")
        if placement.primary is None:
            raise UnsupportedRequestError(
                f"placement {placement.provider!r} on {placement.device} has no ONNX Runtime provider; "
                "native TensorRT engines are run by rerank_runtime.trt_backend, not OnnxBackend"
            )
        options = session_options if session_options is not None else self._default_options(ort, placement)
        if placement.provider == "tensorrt":
            self._make_trt_cache(placement)
            _preload_tensorrt_libs()
        model = self.export_dir / self.manifest.graph.file
        if not placement.on_gpu:
            self.node_placements.append(None)
            return self._open(ort, model, options, placement)
        session, found = profiled_placement(lambda o: self._open(ort, model, o, placement), options,
                                            lambda s: self._probe(s, placement))
        check_placement(found, placement.provider, f"the ONNX Runtime session for {model} on {placement.device}")
        self.node_placements.append(found)
        return session

    def _open(self, ort: Any, model: Path, options: Any, placement: Placement) -> Any:
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

    def _probe(self, session: Any, placement: Placement) -> None:
        """One small batch of pad tokens through the session, every output bound (it only has to run)."""
        length = min(_PROBE_LENGTH, self.manifest.max_sequence_length)
        ids = np.full((1, length), self.manifest.spec.pad_token_id, dtype=np.int64)
        feeds = self._inputs({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        run_bound(session, feeds, list(self.manifest.exit_names()), "cuda", placement.device_id)

    def _default_options(self, ort: Any, placement: Placement) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = default_threads(len(self.placements))  # physical cores, not SMT siblings
        so.inter_op_num_threads = 1
        if placement.provider == "cpu":
            # ONNX Runtime 1.32's CPU SkipLayerNormalization kernel is 5-10x slower than the Add, Add and
            # LayerNormalization it replaces (measured in benchmarks/README.md): the encoder runs ~13% faster unfused.
            so.add_session_config_entry("optimization.disable_specified_optimizers", "SkipLayerNormFusion")
        return so

    def _make_trt_cache(self, placement: Placement) -> None:
        cache = Path(dict(placement.ort_providers[0][1])["trt_engine_cache_path"])
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create the TensorRT engine cache folder {cache} ({exc}); pass trt_cache_dir= a writable folder"
            ) from exc

    # --- Backend protocol ------------------------------------------------------------------------------------------

    def check(self, request: GraphRequest) -> None:
        m = self.manifest
        missing = [name for name in request.output_names if name not in m.exit_names()]
        if missing:
            wanted = ", ".join(f"layer {layer} (head {head})" for layer, head in request.exits) or "one score output"
            raise UnsupportedRequestError(
                f"the artifact in {self.export_dir} has {m.describe_heads()}; the call needs {wanted} "
                f"(missing outputs {missing}); use one of the artifact's cutoff layers, or export another artifact "
                f"with these cutoff_layers: rerank-export --model {m.source} --output <dir>"
            )
        have = _effective(*served_stages(m.compress_ratio, m.compress_layers, request.exits))
        want = _effective(request.compress_ratio, request.compress_layers)
        if have != want:
            raise UnsupportedRequestError(
                f"the artifact in {self.export_dir} was exported with compress_ratio={m.compress_ratio}, "
                f"compress_layers={list(m.compress_layers)}; the call needs compress_ratio={want[0]}, "
                f"compress_layers={list(want[1])}; token compression is baked into the graph: call with the "
                f"artifact's settings, or export another artifact with these: rerank-export --model {m.source} "
                "--output <dir>"
            )

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.check(request)
        inputs = self._inputs(feeds, len(request.compress_layers))
        names = list(request.output_names)
        with self._lock:
            index = self._turn % len(self._sessions)
            self._turn += 1
        session, placement = self._sessions[index], self.placements[index]
        if placement.on_gpu:
            raw = run_bound(session, inputs, names, "cuda", placement.device_id)
        else:
            raw = session.run(names, inputs)
        batch = next(iter(inputs.values())).shape[0]
        return [_score_vector(name, out, batch) for name, out in zip(names, raw)]

    def session_providers(self) -> list[list[str]]:
        """session.get_providers() of each session, for diagnostics."""
        return [list(s.get_providers()) for s in self._sessions]

    def _inputs(self, feeds: dict[str, np.ndarray], planned: int = 0) -> dict[str, np.ndarray]:
        graph_inputs = self.manifest.graph.inputs
        m = self.manifest
        if m.compress_ratio > 1 and len(m.compress_layers) > planned:
            feeds = pass_through_stages(feeds, planned, len(m.compress_layers), m.compress_ratio)
        absent = [t.name for t in graph_inputs if t.name not in feeds]
        if absent:
            raise UnsupportedRequestError(
                f"the graph {self.manifest.graph.file} needs inputs {absent} that the host did not provide "
                f"(given: {sorted(feeds)}); the artifact and the call disagree on compression or inputs"
            )
        out: dict[str, np.ndarray] = {}
        for t in graph_inputs:
            dtype = _NUMPY.get(t.dtype)
            if dtype is None:
                raise UnsupportedRequestError(f"graph input {t.name!r} is {t.dtype}, which numpy cannot feed; "
                                              "re-export with float32/int64 graph inputs")
            out[t.name] = np.ascontiguousarray(feeds[t.name], dtype=dtype)
        return out


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


def _effective(ratio: int, layers: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """No stage that runs means no compression, whatever the ratio."""
    return (1, ()) if ratio == 1 or not layers else (ratio, tuple(layers))


def _score_vector(name: str, out: Any, batch: int) -> np.ndarray:
    scores = np.asarray(out, dtype=np.float32).reshape(-1)
    if scores.shape[0] != batch:
        raise ManifestMismatchError(
            f"graph output {name!r} has shape {np.shape(out)}, expected one score per row ({batch}); "
            "the artifact does not follow the score contract: re-export it"
        )
    return scores


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
