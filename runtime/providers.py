"""Resolve FlagEmbedding's `devices` and our `provider` into explicit ONNX Runtime placements.

Nothing is chosen implicitly: `devices=None` means the CPU (never "whatever GPU is there"), a provider that ONNX Runtime
lacks raises ProviderUnavailableError naming the ones it has, and the backend checks after building each session that
ONNX Runtime did not fall back to another provider.

Providers:
  "cpu"        ONNX Runtime's CPU execution provider.
  "cuda"       ONNX Runtime's CUDA execution provider.
  "tensorrt"   ONNX Runtime's TensorRT execution provider, listed as [TensorRT EP, CUDA EP]: this is ORT's documented
               arrangement, in which TensorRT takes the subgraphs it supports and the CUDA EP runs the rest.
  "trt-engine" a native TensorRT engine run by rerank_runtime.trt_backend (no ONNX Runtime involved).

GPU-only paths (CUDA/TensorRT option names and values) follow ONNX Runtime's provider option parsers but have not
run on a GPU yet: they are marked UNVERIFIED below.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ._deps import install_hint, require
from .cudart import visible_cuda_devices
from .errors import ProviderUnavailableError
from .manifest import Manifest

PROVIDERS = ("cpu", "cuda", "tensorrt", "trt-engine")
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
# FlagEmbedding's default batch_size, hence the largest batch of every TensorRT profile by default: ONNX Runtime's
# TensorRT provider here, native engines in rerank_export.tensorrt_build (EngineOptions, --max-batch-size).
DEFAULT_MAX_BATCH = 128
DEFAULT_OPT_SEQUENCE = 256
TRT_CACHE_DIR = "trt_cache"
GPU_HINT = f"install the GPU flavour instead of the CPU one: pip uninstall onnxruntime, then {install_hint('cuda')}"

DeviceArg = Union[str, int, Sequence[Union[str, int]], None]
ProviderList = tuple[tuple[str, dict[str, str]], ...]


@dataclass(frozen=True)
class Placement:
    """Where one session runs. ort_providers is empty for "trt-engine" (no ONNX Runtime session)."""

    provider: str  # one of PROVIDERS
    device: str  # "cpu" or "cuda:N"
    device_id: int  # 0 for the CPU
    ort_providers: ProviderList = ()

    @property
    def primary(self) -> str | None:
        """The ONNX Runtime provider that must come first in session.get_providers()."""
        return self.ort_providers[0][0] if self.ort_providers else None

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


def resolve(
    provider: str | None,
    devices: DeviceArg,
    *,
    manifest: Manifest | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    trt_cache_dir: str | os.PathLike[str] | None = None,
    provider_options: Mapping[str, object] | None = None,
) -> list[Placement]:
    """One Placement per device.

    devices: FlagEmbedding's argument: "cpu", "cuda", "cuda:N", an int N, a list of those, or None. None means "cpu",
    except with a GPU provider, which then means "cuda:0" (the caller asked for the GPU by name).
    provider: one of PROVIDERS, or None for "cpu" on CPU devices and "cuda" on CUDA devices.
    manifest, export_dir: needed for "tensorrt" (profile shapes and the engine cache `<export_dir>/trt_cache`).
    provider_options: extra options for the first ONNX Runtime provider; they override ours.
    """
    if provider is not None and provider not in PROVIDERS:
        raise ProviderUnavailableError(f"unknown provider {provider!r}; expected one of {list(PROVIDERS)} or None")
    names = device_names(devices, gpu_default=provider not in (None, "cpu"))
    kinds = {"cpu" if d == "cpu" else "cuda" for d in names}
    chosen = provider or ("cpu" if kinds == {"cpu"} else "cuda")
    if chosen == "cpu" and kinds != {"cpu"}:
        raise ProviderUnavailableError(
            f"provider 'cpu' cannot run on {names}; pass devices='cpu', or provider='cuda' for these devices"
        )
    if chosen != "cpu" and kinds == {"cpu"}:
        raise ProviderUnavailableError(
            f"provider {chosen!r} needs a CUDA device but devices is {names}; pass devices='cuda:0' (or an index)"
        )
    if chosen in ORT_NAMES:
        check_available(chosen)
    if chosen != "cpu":
        _check_device_ids([_device_id(d) for d in names])
    return [_placement(chosen, d, manifest, export_dir, trt_cache_dir, provider_options) for d in names]


def check_available(provider: str) -> None:
    """Raise ProviderUnavailableError unless ONNX Runtime was built with this provider."""
    ort = require("onnxruntime")
    available: list[str] = list(ort.get_available_providers())
    wanted = ORT_NAMES[provider]
    needed = [wanted] if provider != "tensorrt" else [wanted, ORT_NAMES["cuda"]]
    missing = [n for n in needed if n not in available]
    if missing:
        raise ProviderUnavailableError(
            f"provider {provider!r} needs ONNX Runtime's {missing}, but this onnxruntime "
            f"{getattr(ort, '__version__', '?')} only has {available}; {GPU_HINT}"
        )


# --- devices ---------------------------------------------------------------------------------------------------------


def device_names(devices: DeviceArg, gpu_default: bool = False) -> list[str]:
    """FlagEmbedding's `devices` as a list of "cpu" / "cuda:N" names (None: ["cpu"], or ["cuda:0"] with gpu_default);
    anything else raises ProviderUnavailableError naming what is accepted."""
    if devices is None:
        return ["cuda:0" if gpu_default else "cpu"]
    items: list[object] = [devices] if isinstance(devices, (str, int, numbers.Integral)) else list(devices)
    if not items:
        raise ProviderUnavailableError("devices is an empty list; pass 'cpu', 'cuda:N', an index, or a list of those")
    names = [_device_name(d) for d in items]
    if "cpu" in names and any(n != "cpu" for n in names):
        raise ProviderUnavailableError(
            f"devices {names} mix the CPU and CUDA devices; give only 'cpu' entries or only CUDA ones"
        )
    return names


def _device_name(d: object) -> str:
    if isinstance(d, numbers.Integral) and not isinstance(d, bool):
        if int(d) < 0:
            raise ProviderUnavailableError(f"device index {int(d)} is negative; CUDA devices are numbered from 0")
        return f"cuda:{int(d)}"
    if isinstance(d, str):
        name = d.strip().lower()
        if name == "cpu":
            return "cpu"
        if name == "cuda":
            return "cuda:0"
        if name.startswith("cuda:") and name[5:].isdigit():
            return f"cuda:{int(name[5:])}"
    raise ProviderUnavailableError(
        f"device {d!r} is not supported by this runtime; use 'cpu', 'cuda', 'cuda:N' or an index N "
        "(FlagEmbedding's npu, musa and mps devices have no ONNX Runtime provider here)"
    )


def _device_id(name: str) -> int:
    return 0 if name == "cpu" else int(name.split(":")[1])


def _check_device_ids(ids: list[int]) -> None:
    count = visible_cuda_devices()
    beyond = sorted({i for i in ids if i >= count})
    if beyond:
        raise ProviderUnavailableError(
            f"CUDA device(s) {beyond} requested but {count} visible (ids 0..{count - 1}); "
            "check CUDA_VISIBLE_DEVICES and `nvidia-smi -L`"
        )


# --- provider options ------------------------------------------------------------------------------------------------


def _placement(
    provider: str,
    device: str,
    manifest: Manifest | None,
    export_dir: str | os.PathLike[str] | None,
    trt_cache_dir: str | os.PathLike[str] | None,
    extra: Mapping[str, object] | None,
) -> Placement:
    device_id = _device_id(device)
    providers: list[tuple[str, dict[str, str]]]
    if provider == "cpu":
        providers = [(ORT_NAMES["cpu"], {})]
    elif provider == "cuda":
        providers = [(ORT_NAMES["cuda"], cuda_options(device_id))]
    elif provider == "tensorrt":
        if manifest is None or export_dir is None:
            raise ProviderUnavailableError("provider 'tensorrt' needs the artifact's manifest and export_dir "
                                           "(for its profile shapes and engine cache); load it with load_artifact")
        cache = Path(trt_cache_dir) if trt_cache_dir is not None else Path(export_dir) / TRT_CACHE_DIR
        providers = [(ORT_NAMES["tensorrt"], tensorrt_options(device_id, manifest, cache)),
                     (ORT_NAMES["cuda"], cuda_options(device_id))]
    else:  # trt-engine: no ONNX Runtime session
        providers = []
    if extra and providers:
        first_name, first_opts = providers[0]
        providers[0] = (first_name, {**first_opts, **{k: _opt(v) for k, v in extra.items()}})
    return Placement(provider, device, device_id, tuple(providers))


def cuda_options(device_id: int) -> dict[str, str]:
    """CUDA EP options (names from ONNX Runtime's CUDA provider options; UNVERIFIED on a GPU)."""
    return {
        "device_id": str(device_id),
        # grow the arena by what is asked, not to the next power of two: batches change shape on every call
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",  # no convolutions in these models; skip the exhaustive search
        "do_copy_in_default_stream": "1",  # the documented default: copies on the compute stream, no races
        # TF32 matmuls change fp32 scores at the 1e-3 level; parity with FlagEmbedding is the product
        "use_tf32": "0",
    }


def tensorrt_options(device_id: int, manifest: Manifest, cache_dir: Path) -> dict[str, str]:
    """TensorRT EP options (names from ONNX Runtime's TensorRT provider options; UNVERIFIED on a GPU).

    trt_fp16_enable stays off (and trt_bf16_enable is left unset, as older ORT builds reject the key): those flags
    are TensorRT "weak typing" switches that let the builder pick fp16 for any layer, which would undo the fp32
    islands (norms, softmax, residual adds) that a mixed-precision artifact keeps on purpose. The precision comes
    from the types in the ONNX graph.
    """
    lo, opt, hi = profile_shapes(manifest)
    return {
        "device_id": str(device_id),
        "trt_fp16_enable": "0",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": str(cache_dir),  # a folder: ORT names the file after the GPU's compute capability
        "trt_profile_min_shapes": lo,
        "trt_profile_opt_shapes": opt,
        "trt_profile_max_shapes": hi,
    }


def profile_shapes(manifest: Manifest) -> tuple[str, str, str]:
    """min/opt/max strings ("name:AxB,...", one group per profile) covering every dynamic graph input.

    With an engine record (manifest "tensorrt", written by `rerank-export engine`), its profiles are used as they are
    (the manifest guarantees shapes for every graph input). Without one, a single profile: axis 0 is the batch
    (1..DEFAULT_MAX_BATCH), every other named axis a sequence length (1..max_sequence_length).
    """
    dynamic = [t for t in manifest.graph.inputs if not all(isinstance(d, int) for d in t.shape)]
    if manifest.tensorrt is not None:
        groups = [{t.name: p.shapes[t.name] for t in dynamic} for p in manifest.tensorrt.profiles]
    else:
        max_b, max_s = DEFAULT_MAX_BATCH, manifest.max_sequence_length
        opt = (max_b, min(DEFAULT_OPT_SEQUENCE, max_s))
        groups = [{t.name: tuple(_dims(t.shape, b, s) for b, s in ((1, 1), opt, (max_b, max_s))) for t in dynamic}]

    def level(k: int) -> str:  # repeating the names declares the next profile
        return ",".join(f"{name}:{'x'.join(map(str, shapes[k]))}" for g in groups for name, shapes in g.items())

    return level(0), level(1), level(2)


def _dims(shape: tuple[int | str, ...], batch: int, seq: int) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else (batch if i == 0 else seq) for i, d in enumerate(shape))


def _opt(v: object) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)
