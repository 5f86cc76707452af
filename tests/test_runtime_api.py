"""The runtime's public API on real exports: return contract, typed errors, concurrency and streaming.

Everything runs on the session's fp32 exports (ONNX Runtime, CPU). Scores are compared with the one tolerance table.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rerank_runtime as runtime
from rerank_export.testing.pairs import benchmark_pairs, parity_pairs
from rerank_runtime import (
    ArtifactError,
    FlagAutoReranker,
    FlagLLMReranker,
    FlagReranker,
    LayerWiseFlagLLMReranker,
    LightWeightFlagLLMReranker,
    ModelNotFoundError,
    ProviderUnavailableError,
    UnsupportedRequestError,
)
from close import FP32, assert_close
from rerank_runtime.front import backends_of
FAMILIES = ("xlm_roberta", "gemma", "minicpm_layerwise", "gemma2_lightweight")
PAIRS = parity_pairs()[:8]


@pytest.fixture(scope="module")
def loaded(exported):
    """loaded(family) -> a runtime reranker on the family's export, built once."""
    cache: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in cache:
            cache[family] = FlagAutoReranker.from_finetuned(str(exported(family)), max_length=64)
        return cache[family]

    return get


# ---------------------------------------------------------------- 5. return contract


@pytest.mark.parametrize("family", FAMILIES)
def test_return_types(family, loaded):
    r = loaded(family)
    many = r.compute_score(PAIRS)
    exits = 2 if family == "gemma2_lightweight" else 1  # the lightweight export's baked cutoffs are [4, 6]
    if exits == 1:
        assert isinstance(many, list) and len(many) == len(PAIRS) and all(type(x) is float for x in many)
    else:
        assert isinstance(many, list) and len(many) == exits
        assert all(isinstance(row, list) and len(row) == len(PAIRS) and all(type(x) is float for x in row)
                   for row in many)
    table = np.asarray(many)
    for i, pair in ((0, PAIRS[0]), (3, tuple(PAIRS[3]))):  # a pair as a list and as a tuple
        one = r.compute_score(pair)
        if exits == 1:
            assert type(one) is float
        else:
            assert isinstance(one, list) and len(one) == exits and all(type(x) is float for x in one)
        assert_close(one, table[..., i], f"{family}: pair {i} alone")
    assert r.compute_score([]) == [] and r.compute_score(()) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_compute_score_array(family, loaded):
    r = loaded(family)
    lead = (2,) if family == "gemma2_lightweight" else ()
    array = r.compute_score_array(PAIRS)
    assert isinstance(array, np.ndarray) and array.dtype == np.float64 and array.shape == lead + (len(PAIRS),)
    assert_close(array, r.compute_score(PAIRS), f"{family}: array vs list")
    assert r.compute_score_array(PAIRS[2]).shape == lead + (1,)
    assert r.compute_score_array([]).shape == lead + (0,)
    normalized = r.compute_score_array(PAIRS, normalize=True)
    assert np.all((normalized > 0) & (normalized < 1))
    assert_close(normalized, 1 / (1 + np.exp(-array)), f"{family}: normalize is the sigmoid of the raw scores")


def test_several_cutoffs_give_a_list_per_layer(loaded):
    r = loaded("minicpm_layerwise")
    scores = r.compute_score(PAIRS, cutoff_layers=[2, 4, 6])
    assert isinstance(scores, list) and len(scores) == 3 and all(len(row) == len(PAIRS) for row in scores)
    for layer, row in zip((2, 4, 6), scores):
        assert_close(row, r.compute_score(PAIRS, cutoff_layers=[layer]), f"layer {layer} alone")
    one = r.compute_score(PAIRS[1], cutoff_layers=[2, 4, 6])
    assert isinstance(one, list) and len(one) == 3 and all(type(x) is float for x in one)
    assert r.compute_score_array(PAIRS, cutoff_layers=[2, 6]).shape == (2, len(PAIRS))
    assert r.compute_score([], cutoff_layers=[2, 4]) == []
    assert r.compute_score_array(PAIRS, cutoff_layers=4).shape == (len(PAIRS),)  # an int is one layer


# ---------------------------------------------------------------- 7. errors


def test_cutoff_layers_the_artifact_lacks(loaded):
    light = loaded("gemma2_lightweight")
    with pytest.raises(UnsupportedRequestError) as err:
        light.compute_score(PAIRS, cutoff_layers=[5])
    assert "layer 4 (head 0), layer 6 (head 1)" in str(err.value) and "layer 5" in str(err.value)
    with pytest.raises(UnsupportedRequestError, match=r"layer 2 \(head 0\), layer 3 \(head 1\).*layer 6 \(head 4\)"):
        loaded("minicpm_layerwise").compute_score(PAIRS, cutoff_layers=[6, 2])  # needs the layer-2 state, head 4
    with pytest.raises(ValueError, match=r"cutoff_layers must be values in \[2, 6\]"):
        loaded("minicpm_layerwise").compute_score(PAIRS, cutoff_layers=[7])


@pytest.mark.parametrize("call", [{"compress_ratio": 3}, {"compress_layers": [2]}, {"compress_ratio": 1}])
def test_compression_other_than_the_baked_settings(call, loaded):
    with pytest.raises(UnsupportedRequestError, match=r"exported with compress_ratio=2, compress_layers=\[2, 4\]"):
        loaded("gemma2_lightweight").compute_score(PAIRS, **call)


def copy_export(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


@pytest.mark.parametrize("name,error,match", [
    ("model.onnx", ArtifactError, r"model file .*model\.onnx is missing"),
    ("manifest.json", ArtifactError, r"has no manifest\.json"),
    ("tokenizer.json", ArtifactError, r"tokenizer file .*tokenizer\.json is missing"),
])
def test_missing_files(name, error, match, exported, tmp_path):
    broken = copy_export(exported("xlm_roberta"), tmp_path / "export")
    (broken / name).unlink()
    with pytest.raises(error, match=match):
        FlagReranker(str(broken))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_model_file(damage, exported, tmp_path):
    broken = copy_export(exported("gemma"), tmp_path / "export")
    model = broken / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(range(256)) * 64)
    with pytest.raises(ArtifactError, match=r"model\.onnx.*(truncated or corrupt|could not load)"):
        FlagLLMReranker(str(model.parent))


def test_not_an_export(checkpoint, tmp_path):
    with pytest.raises(ArtifactError, match=r"Hugging Face checkpoint.*export it first: `rerank-export --model"):
        FlagReranker(str(checkpoint("xlm_roberta")))
    with pytest.raises(ModelNotFoundError, match="no export directory"):
        FlagReranker(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("pairs,error,match", [
    (None, TypeError, r"sentence_pairs must be"),
    ("just a string", TypeError, r"sentence_pairs must be"),
    ([["q", "p"], ["only one"]], ValueError, r"sentence_pairs\[1\] must hold exactly two"),
    ([["q", "p"], ["q", "p", "x"]], ValueError, r"sentence_pairs\[1\] must hold exactly two"),
    ([["q", "p"], ["q", 3]], TypeError, r"sentence_pairs\[1\]\[1\] \(the passage\) must be a str"),
    ([[None, "p"]], TypeError, r"sentence_pairs\[0\]\[0\] \(the query\) must be a str"),
    ([["q", "p"], None], TypeError, r"sentence_pairs\[1\] must be a \[query, passage\]"),
    (("q",), ValueError, r"sentence_pairs must hold exactly two"),
])
def test_bad_pairs_name_the_index(pairs, error, match, loaded):
    with pytest.raises(error, match=match):
        loaded("gemma").compute_score(pairs)


def test_unknown_keyword_arguments(exported, loaded):
    assert FlagReranker(str(exported("xlm_roberta")), passage_max_length=512).passage_max_length == 512
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['passage_max_len'\]"):
        FlagReranker(str(exported("xlm_roberta")), passage_max_len=512)
    with pytest.raises(TypeError, match="unexpected keyword"):
        loaded("xlm_roberta").compute_score(PAIRS, passage_max_length=512)  # a constructor argument only
    with pytest.raises(TypeError, match=r"does not take \['cutoff_layers'\]"):
        loaded("xlm_roberta").compute_score(PAIRS, cutoff_layers=[2])
    with pytest.raises(TypeError, match=r"does not take \['compress_ratio'\]"):
        loaded("minicpm_layerwise").compute_score(PAIRS, compress_ratio=2)


def test_use_fp16_against_an_fp32_artifact(exported):
    """As FlagEmbedding on the CPU: use_fp16=True serves the export as it is, and one warning says so."""
    with pytest.warns(UserWarning, match=r"use_fp16=True asks for fp16, but .* is a fp32 export .*: serving fp32. "
                      r"For fp16, export it: `rerank-export --model \S+ --fp16 --output \S+-fp16`"):
        halved = LayerWiseFlagLLMReranker(str(exported("minicpm_layerwise")), use_fp16=True, max_length=64)
    plain = LayerWiseFlagLLMReranker(str(exported("minicpm_layerwise")), max_length=64)
    assert halved.compute_score(PAIRS) == plain.compute_score(PAIRS)


def test_cuda_provider_on_a_cpu_only_machine(exported):
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ProviderUnavailableError) as err:
        FlagReranker(str(exported("xlm_roberta")), provider="cuda")
    assert "CUDAExecutionProvider" in str(err.value) and "CPUExecutionProvider" in str(err.value)
    with pytest.raises(ProviderUnavailableError, match="CPUExecutionProvider"):
        FlagReranker(str(exported("xlm_roberta")), devices="cuda:0")


# ---------------------------------------------------------------- 8. concurrency


@pytest.mark.parametrize("family", ["gemma", "gemma2_lightweight"])
def test_threads_share_one_reranker(family, exported):
    r = FlagAutoReranker.from_finetuned(str(exported(family)), max_length=64, batch_size=4)
    pairs = parity_pairs()
    calls = [{}, {"normalize": True}, {"max_length": 32}, {"batch_size": 1}]
    serial = [r.compute_score_array(pairs, **c) for c in calls]
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(len(calls))}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                got[i].append(r.compute_score_array(pairs, **calls[i]))
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not np.allclose(serial[0], serial[2])  # the calls really differ, so a mix-up would show
    for i, want in enumerate(serial):
        assert len(got[i]) == 3
        for result in got[i]:
            assert_close(result, want, f"{family}: thread {i} {calls[i]}")


def test_two_cpu_sessions(exported, loaded):
    path = str(exported("gemma2_lightweight"))
    two = LightWeightFlagLLMReranker(path, devices=["cpu", "cpu"], max_length=64, batch_size=3)
    assert two.front.concurrency == 2
    assert [b.session_providers() for b in backends_of(two.front.backend)] == [["CPUExecutionProvider"]] * 2
    one = LightWeightFlagLLMReranker(path, devices="cpu", max_length=64, batch_size=3)
    pairs = parity_pairs()
    want = one.compute_score(pairs)
    assert_close(two.compute_score(pairs), want, "devices=['cpu', 'cpu']")
    assert isinstance(two.compute_score(pairs[0]), list)  # the same return contract as one device


# ---------------------------------------------------------------- 9. streaming


def test_streaming_in_chunks(exported):
    pairs = benchmark_pairs(3000, seed=5, min_tokens=2, max_tokens=12)
    path = str(exported("xlm_roberta"))
    chunked = FlagReranker(path, chunk_size=256, batch_size=64)
    whole = FlagReranker(path, batch_size=64)
    got = chunked.compute_score(pairs)
    assert len(got) == 3000 and all(type(x) is float for x in got)
    want = whole.compute_score(pairs)
    assert_close(got, want, "chunk_size=256 vs one chunk")
    assert np.ptp(want) > 1e3 * FP32.atol
    assert runtime.__name__ == "rerank_runtime"
