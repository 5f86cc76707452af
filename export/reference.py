"""The PyTorch reference: FlagEmbedding's reranker classes and compute_score over our torch modules.

Host-side logic (token layout, truncation, sorting, batching, readout order) is rerank_runtime's, shared with the ONNX
runtime; only the graph runs in torch here. This is the yardstick of every parity test.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank_runtime import rerankers as _rt
from rerank_runtime._deps import require
from rerank_runtime.errors import ProviderUnavailableError, UnsupportedRequestError
from rerank_runtime.front import GraphFront, ServedGraph, one_backend
from rerank_runtime.kinds import AUTO_RERANKER_MAPPING, auto_lookup_key
from rerank_runtime.providers import device_names
from rerank_runtime.spec import GraphRequest, Loaded, ModelSpec

from .checkpoint import load_model, model_spec, read_json, resolve_model, tokenizer_file
from .families import FamilySpec, detect_family


class TorchModel:
    """The family's torch model on one device ("cpu" or "cuda:N"), cast to the precision it runs in."""

    def __init__(self, model: Any, config: dict[str, Any], family: FamilySpec, spec: ModelSpec, dtype: str = "fp32",
                 device: str = "cpu"):
        from .precision import cast_weights

        # in place: the model, its heads and every wrapper share one dtype and one device
        self.model = cast_weights(model, dtype).to(device)
        self.config, self.family, self.spec, self.dtype, self.device = config, family, spec, dtype, device

    def graph(self, request: GraphRequest) -> TorchGraph:
        """The score wrapper an export for `request` would trace, on this device."""
        wrapper = self.family.build_wrapper(self.model, self.config, request, {"yes_token_id": self.spec.yes_token_id})
        return TorchGraph(wrapper.to(self.device).eval(), self.input_names(request), request.output_names,
                          self.device)  # the heads are built on the CPU

    def input_names(self, request: GraphRequest) -> tuple[str, ...]:
        """The score wrapper's positional inputs for `request`."""
        return ("input_ids", "attention_mask") + self.family.extra_inputs(request)

    def inputs(self, request: GraphRequest, feeds: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
        """The wrapper's positional input tensors for `request`, on this device, from the host's feeds."""
        torch = require("torch")
        return tuple(torch.from_numpy(np.asarray(feeds[n])).to(self.device) for n in self.input_names(request))


class TorchGraph:
    """spec.Backend: one request's score wrapper on one device, run in torch."""

    concurrency = 1

    def __init__(self, module: Any, inputs: tuple[str, ...], outputs: tuple[str, ...], device: str):
        self.module, self.inputs, self.outputs, self.device = module, inputs, outputs, device

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = require("torch")
        if tuple(names) != self.outputs:
            raise UnsupportedRequestError(f"this graph gives {list(self.outputs)}, not {list(names)}")
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.asarray(feeds[n])).to(self.device) for n in self.inputs))
        return [o.float().cpu().numpy() for o in (out if isinstance(out, tuple) else (out,))]


class ReferenceFront:
    """spec.Front of the PyTorch reference. A checkpoint has no baked graph: for each request the reference builds the
    graph `rerank-export` would bake for it (one wrapper per device), and serves it through the same request front
    as an export (front.GraphFront over a ServedGraph.baked_for the request)."""

    def __init__(self, models: Sequence[TorchModel], source: str):
        self.models, self.source = tuple(models), source
        self.concurrency, self.dtype = len(self.models), self.models[0].dtype
        self._fronts: dict[GraphRequest, GraphFront] = {}
        self._lock = threading.Lock()

    def check(self, request: GraphRequest) -> None:
        self._front(request).check(request)

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._front(request).run(request, feeds)

    def _front(self, request: GraphRequest) -> GraphFront:
        with self._lock:
            if request not in self._fronts:
                self._check_buildable(request)
                graph = ServedGraph.baked_for(request, f"the PyTorch reference of {self.source}", self.source)
                self._fronts[request] = GraphFront(graph, one_backend([m.graph(request) for m in self.models]))
            return self._fronts[request]

    def _check_buildable(self, request: GraphRequest) -> None:
        """The model has the heads and the compression the request's graph needs."""
        family, config = self.models[0].family, self.models[0].config
        layers = family.layers(config)
        if request.exits and layers is None:
            raise UnsupportedRequestError(f"{family.name} has a single score head; it takes no cutoff layers")
        if layers:
            n, start, sep = layers
            heads = len(range(start, n + 1, sep))
            bad = [(layer, h) for layer, h in request.exits if not (0 <= layer <= n and 0 <= h < heads)]
            if bad:
                raise UnsupportedRequestError(f"exits {bad} are outside layers 0..{n} / heads 0..{heads - 1}")
        if request.compress_ratio > 1 and not family.extra_inputs(request):
            raise UnsupportedRequestError(f"{family.name} does not compress tokens")


def load_reference(path: str | os.PathLike, *, model_class: str | None, devices: Any = None, use_fp16: bool = False,
                   use_bf16: bool = False, provider: str | None = None) -> Loaded:
    """A checkpoint (directory, hub id or built-in name) as a Loaded bundle: a ReferenceFront over one TorchModel per
    device.

    devices: FlagEmbedding's: None or "cpu", "cuda", "cuda:N", an index N, or a list of those (one model copy per
    device, batches taken in turn). Precision as FlagEmbedding: on CUDA use_fp16 runs fp16 and use_bf16 bf16; on the
    CPU use_fp16 is switched off and use_bf16 runs bf16. Reduced precision is the exported graphs' mixed precision
    (matmul weights low, norms, residual stream, softmax and heads fp32), so the reference and the artifacts agree on
    what "fp16" means.
    """
    from tokenizers import Tokenizer

    names = _reference_devices(devices, provider)
    directory = resolve_model(str(path))
    config = read_json(directory / "config.json")
    family = detect_family(config, model_class)
    spec = model_spec(directory, config, family)
    tokenizer = Tokenizer.from_file(str(tokenizer_file(directory)))
    models = []
    for name in names:
        dtype = "fp16" if use_fp16 and name != "cpu" else "bf16" if use_bf16 else "fp32"
        models.append(TorchModel(load_model(directory, config, family), config, family, spec, dtype, name))
    return Loaded(spec=spec, tokenizer=tokenizer, front=ReferenceFront(models, str(directory)))


def _reference_devices(devices: Any, provider: str | None) -> list[str]:
    """FlagEmbedding's devices as torch device names; CUDA ones must exist in this torch."""
    if provider not in (None, "torch", "cpu"):
        raise ProviderUnavailableError(f"the PyTorch reference runs in torch; provider {provider!r} is not available "
                                      "(pass provider=None, or load an export with rerank_runtime for ONNX Runtime)")
    names = device_names(devices)
    cuda = [n for n in names if n != "cpu"]  # all or none: device_names refuses a mix
    if cuda and provider == "cpu":
        raise ProviderUnavailableError(f"provider 'cpu' cannot run on {names}; pass provider=None for CUDA devices")
    if cuda:
        torch = require("torch")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        beyond = sorted({n for n in cuda if int(n.split(":")[1]) >= count})
        if beyond:
            raise ProviderUnavailableError(
                f"devices {beyond} asked for, but torch {torch.__version__} sees {count} CUDA device(s) "
                f"(torch.cuda.is_available() is {torch.cuda.is_available()}); use devices='cpu', or a CUDA build "
                "of torch on a machine with an NVIDIA GPU"
            )
    return names


def detect_model_class(path: str | os.PathLike) -> str:
    """FlagAutoReranker's rule: the name mapping on the directory's base name, then the config's architecture."""
    key = auto_lookup_key(os.path.normpath(str(path)))
    if key in AUTO_RERANKER_MAPPING:
        return AUTO_RERANKER_MAPPING[key][0]
    directory = resolve_model(str(path))
    return detect_family(read_json(Path(directory) / "config.json")).model_class


class _Reference:
    """The runtime class's constructor, serving the checkpoint through its `loaded=` argument (nothing else differs;
    a checkpoint has no recorded hashes, so verify_hashes does not apply)."""

    def __init__(self, model_name_or_path: str, *args: Any, **kwargs: Any) -> None:
        mro = type(self).__mro__
        runtime_class = mro[mro.index(_Reference) + 1]
        if kwargs.get("loaded") is None:
            call = inspect.signature(runtime_class.__init__).bind(self, model_name_or_path, *args, **kwargs)
            call.apply_defaults()
            given = call.arguments
            kwargs["loaded"] = load_reference(model_name_or_path, model_class=runtime_class._KIND,
                                              devices=given["devices"], use_fp16=given["use_fp16"],
                                              use_bf16=given.get("use_bf16", False), provider=given["provider"])
        runtime_class.__init__(self, model_name_or_path, *args, **kwargs)  # type: ignore[misc]


class FlagReranker(_Reference, _rt.FlagReranker):
    pass


class FlagLLMReranker(_Reference, _rt.FlagLLMReranker):
    pass


class LayerWiseFlagLLMReranker(_Reference, _rt.LayerWiseFlagLLMReranker):
    pass


class LightWeightFlagLLMReranker(_Reference, _rt.LightWeightFlagLLMReranker):
    pass


_CLASSES = {c._KIND: c for c in (FlagReranker, FlagLLMReranker, LayerWiseFlagLLMReranker, LightWeightFlagLLMReranker)}


class FlagAutoReranker(_rt.FlagAutoReranker):
    _classes = _CLASSES

    @classmethod
    def _detect_model_class(cls, path) -> str:
        return detect_model_class(path)
