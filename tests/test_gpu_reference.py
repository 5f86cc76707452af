"""The PyTorch reference on CUDA (devices="cuda:N", FlagEmbedding-style use_fp16 / use_bf16): the device handling on
CPU, and, marked gpu, fp32/fp16/bf16 on CUDA against fp32 on the CPU within the GPU rows of the tolerance table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from rerank_export.checkpoint import resolve_model
from rerank_export.reference import FlagAutoReranker, ReferenceFront, load_reference
from rerank_export.testing.factory import BUILTIN, builtin_name
from rerank_export.testing.pairs import parity_pairs
from rerank_runtime.errors import ProviderUnavailableError
from rerank_runtime.tolerances import tolerance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from gpu_check import settings_for  # noqa: E402 (benchmarks/ is not a package)
from gpu_measure import compare  # noqa: E402

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason=f"torch {torch.__version__} sees no CUDA device")


def model(family: str) -> str:
    """The trained tiny checkpoint where the factory has one (scores spread like a real model's), else the random
    one."""
    trained = builtin_name(family, "tiny", trained=True)
    return trained if trained in BUILTIN else builtin_name(family, "tiny")


def scores(family: str, **load: object) -> np.ndarray:
    _, settings = settings_for(resolve_model(model(family)))  # gpu_check's: the deepest exit, compression on
    reranker = FlagAutoReranker.from_finetuned(model(family), **load, **settings)
    return np.atleast_2d(reranker.compute_score_array(parity_pairs(), batch_size=8, max_length=128))


def test_several_cpu_devices_take_batches_in_turn() -> None:
    loaded = load_reference(model("xlm_roberta"), model_class=None, devices=["cpu", "cpu"])
    assert isinstance(loaded.front, ReferenceFront) and loaded.front.concurrency == 2  # one model copy per device
    np.testing.assert_array_equal(scores("xlm_roberta", devices=["cpu", "cpu"]), scores("xlm_roberta"))


def test_use_fp16_is_switched_off_on_the_cpu_as_flagembedding_does() -> None:
    assert load_reference(model("gemma"), model_class=None, devices="cpu", use_fp16=True).front.dtype == "fp32"
    assert load_reference(model("gemma"), model_class=None, devices="cpu", use_bf16=True).front.dtype == "bf16"


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_devices_without_cuda_say_what_torch_sees() -> None:
    with pytest.raises(ProviderUnavailableError, match=r"\['cuda:0', 'cuda:1'\] asked for, but torch .* sees 0 CUDA"):
        load_reference(model("gemma"), model_class=None, devices=[0, 1])


@pytest.mark.parametrize(("devices", "provider", "error", "match"), [
    ("mps", None, ProviderUnavailableError, "'mps' is not supported"),
    (["cpu", "cuda:0"], None, ProviderUnavailableError, "mix the CPU and CUDA devices"),
    ("cpu", "tensorrt", ProviderUnavailableError, "provider 'tensorrt' is not available"),
])
def test_device_refusals(devices: object, provider: str | None, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_reference(model("gemma"), model_class=None, devices=devices, provider=provider)


@pytest.mark.gpu
@cuda_only
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("family", ["xlm_roberta", "gemma", "minicpm_layerwise", "gemma2_lightweight"])
def test_cuda_reference_matches_cpu_fp32(family: str, precision: str) -> None:
    want = scores(family, devices="cpu")
    got = scores(family, devices="cuda:0", use_fp16=precision == "fp16", use_bf16=precision == "bf16")
    result = compare(got, want, tolerance(precision, "cuda"))
    assert result["passed"], (result["problems"], result["max_abs_diff"], result["spearman"])
