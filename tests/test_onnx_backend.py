"""OnnxBackend and load_artifact on the tiny export (tests/tiny_export.py: onnx.helper, no torch), whose every
expected score is computed in numpy. The request front itself (checks, feed completion) is test_front.py's."""

from __future__ import annotations

import re
import sys
import threading
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from rerank_runtime import providers
from rerank_runtime.artifact import check_model_files, detect_model_class, external_refs, load_artifact
from rerank_runtime.errors import (ArtifactError, ManifestMismatchError, ModelNotFoundError, ProviderUnavailableError,
                                   UnknownFamilyError, UnsupportedRequestError)
from rerank_runtime.front import GraphFront, RoundRobin, ServedGraph
from rerank_runtime.manifest import GraphInfo, Manifest
from rerank_runtime.onnx_backend import OnnxBackend, onnx_backends, run_bound
from rerank_runtime.providers import Placement, resolve
from rerank_runtime.spec import ENCODER, LAYERWISE, GraphRequest
from tiny_export import TWO_EXITS, VOCAB, batch, expected, tiny_export, tiny_manifest

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="onnxruntime has no CUDAExecutionProvider (CPU build or no GPU)")
ROWS = [[3, 7, 11, 39], [5, 1], [20, 21, 22, 23, 24, 25]]


def cpu_backend(root: Path, manifest: Manifest) -> OnnxBackend:
    [placement] = resolve("cpu", "cpu")
    return OnnxBackend(root, manifest, placement)


class Counting:
    """A backend that counts the runs it passes on."""

    concurrency = 1

    def __init__(self, backend: OnnxBackend) -> None:
        self.backend, self.runs = backend, 0

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.runs += 1
        return self.backend.run(names, feeds)


# --- run -------------------------------------------------------------------------------------------------------------


def test_one_session_runs_the_named_outputs_in_order(tmp_path: Path) -> None:
    manifest = tiny_export(tmp_path, model_class=LAYERWISE)
    backend = cpu_backend(tmp_path, manifest)
    assert backend.concurrency == 1 and backend.session_providers() == ["CPUExecutionProvider"]
    feeds = batch(ROWS)
    (only,) = backend.run(["score_l3_h1"], feeds)
    assert only.dtype == np.float32 and only.shape == (3,)
    np.testing.assert_allclose(only, expected(feeds, -2.0, 0.5), atol=1e-5)
    second, first = backend.run(("score_l3_h1", "score_l2_h0"), feeds)
    np.testing.assert_allclose(second, expected(feeds, -2.0, 0.5), atol=1e-5)
    np.testing.assert_allclose(first, expected(feeds), atol=1e-5)


def test_two_sessions_round_robin_from_threads(tmp_path: Path) -> None:
    manifest = tiny_export(tmp_path, model_class=LAYERWISE)
    pair = onnx_backends(tmp_path, manifest, resolve("cpu", ["cpu", "cpu"]))
    assert isinstance(pair, RoundRobin) and pair.concurrency == 2
    assert all(isinstance(b, OnnxBackend) for b in pair.backends)
    counted = [Counting(b) for b in pair.backends]  # type: ignore[arg-type]
    front = GraphFront(ServedGraph.of(manifest, tmp_path), RoundRobin(counted))
    request = GraphRequest(exits=((2, 0), (3, 1)))
    work = [batch([[(i * 7 + j) % VOCAB for j in range(1 + i % 5)], [i % VOCAB, 3]]) for i in range(24)]
    results: list[Any] = [None] * len(work)

    def worker(k: int) -> None:
        for i in range(k, len(work), 4):
            results[i] = front.run(request, work[i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for feeds, (a, b) in zip(work, results):
        np.testing.assert_allclose(a, expected(feeds), atol=1e-5)
        np.testing.assert_allclose(b, expected(feeds, -2.0, 0.5), atol=1e-5)
    assert [c.runs for c in counted] == [12, 12]


def test_io_binding_path_matches_plain_run(tmp_path: Path) -> None:
    backend = cpu_backend(tmp_path, tiny_export(tmp_path, model_class=LAYERWISE))
    feeds = batch(ROWS)
    bound = run_bound(backend.session, feeds, ["score_l3_h1"], "cpu", 0)
    np.testing.assert_allclose(bound[0], expected(feeds, -2.0, 0.5), atol=1e-5)


# --- provider verification and graph/manifest agreement --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_fallback_to_another_provider_is_an_error(tmp_path: Path) -> None:
    manifest = tiny_export(tmp_path)
    # ORT's CPU build warns and runs on the CPU when asked for CUDA: the backend must refuse that
    asked = Placement("cuda", "cuda:0", 0, (("CUDAExecutionProvider", {"device_id": "0"}),))
    if not HAS_CUDA:
        with pytest.raises(ProviderUnavailableError, match="fell back.*CUDAExecutionProvider"):
            OnnxBackend(tmp_path, manifest, asked)


def test_fallback_detected_through_get_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tiny_export(tmp_path)
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: ["AzureExecutionProvider"])
    with pytest.raises(ProviderUnavailableError) as err:
        cpu_backend(tmp_path, manifest)
    assert "CPUExecutionProvider" in str(err.value) and "AzureExecutionProvider" in str(err.value)


def test_graph_that_disagrees_with_the_manifest(tmp_path: Path) -> None:
    tiny_export(tmp_path)
    other = tiny_manifest(ENCODER, {"score": (1.0, 0.0), "extra": (1.0, 0.0)})
    with pytest.raises(ManifestMismatchError) as err:
        cpu_backend(tmp_path, other)
    assert "['extra', 'score']" in str(err.value) and "graph has ['score']" in str(err.value)


def test_ort_load_error_is_wrapped(tmp_path: Path) -> None:
    manifest = tiny_export(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07" + b"\xff" * 64)
    with pytest.raises(ArtifactError, match="model.onnx"):
        cpu_backend(tmp_path, manifest)


# --- load_artifact ---------------------------------------------------------------------------------------------------


def test_load_artifact_end_to_end(tmp_path: Path) -> None:
    manifest = tiny_export(tmp_path, TWO_EXITS, model_class=LAYERWISE, external=True)
    loaded = load_artifact(tmp_path, model_class=LAYERWISE, devices=["cpu", "cpu"])
    assert loaded.spec == manifest.spec and loaded.defaults == {"cutoff_layers": [2, 3]}
    assert loaded.tokenizer.encode("hello world nope", add_special_tokens=False).ids == [2, 3, 1]
    assert isinstance(loaded.front, GraphFront) and loaded.front.concurrency == 2
    assert isinstance(loaded.front.backend, RoundRobin)
    assert [b.placement.device for b in loaded.front.backend.backends] == ["cpu", "cpu"]  # type: ignore[attr-defined]
    feeds = batch(ROWS)
    (scores,) = loaded.front.run(GraphRequest(exits=((2, 0),)), feeds)
    np.testing.assert_allclose(scores, expected(feeds), atol=1e-5)
    assert detect_model_class(tmp_path) == LAYERWISE


def test_missing_directory_and_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="rerank-export --model"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="Hugging Face checkpoint.*rerank-export"):
        load_artifact(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        detect_model_class(tmp_path)


def test_model_class_and_precision_requests(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    tiny_export(tmp_path)
    with pytest.raises(UnsupportedRequestError, match=rf"{tmp_path} holds a encoder-only-base model, which "
                       r"FlagReranker scores; LayerWiseFlagLLMReranker scores decoder-only-layerwise models only"):
        load_artifact(tmp_path, model_class=LAYERWISE)
    with pytest.raises(UnknownFamilyError):
        load_artifact(tmp_path, model_class="cross-encoder")
    for flag in ("use_fp16", "use_bf16"):  # as FlagEmbedding on the CPU: served as it is, with one warning
        precision = flag[4:]
        with pytest.warns(UserWarning, match=rf"{flag}=True asks for {precision}, but {tmp_path} is a fp32 export .*"
                          rf"serving fp32. For {precision}, export it: `rerank-export --model tests --{precision} "
                          rf"--max-length 16 --output {tmp_path}-{precision}`"):
            assert isinstance(load_artifact(tmp_path, **{flag: True}).front.backend, OnnxBackend)  # type: ignore
    recwarn.clear()
    half = tmp_path / "half"
    tiny_export(half, precision="fp16")
    assert isinstance(load_artifact(half, use_fp16=True).front.backend, OnnxBackend)  # type: ignore[attr-defined]
    load_artifact(half)  # a flag left at its default says nothing
    load_artifact(half, use_bf16=False)  # nor does refusing a precision the export does not have
    assert not recwarn.list
    for flags, match in (({"use_fp16": False}, r"use_fp16=False asks for full precision, but .* is a fp16 export .*"
                          r"serving fp16. For fp32, export it: `rerank-export --model tests --max-length 16 --output "
                          r".*/half-fp32`"),
                         ({"use_bf16": True}, "use_bf16=True asks for bf16, but .* is a fp16 export")):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            load_artifact(half, **flags)
        assert [re.search(match, str(w.message)) is not None for w in got] == [True]  # one warning, this one


def test_missing_tokenizer(tmp_path: Path) -> None:
    tiny_export(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        load_artifact(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("external", [False, True])
def test_truncated_or_corrupt_model_file(tmp_path: Path, external: bool) -> None:
    tiny_export(tmp_path, external=external)
    model = tmp_path / "model.onnx"
    data = model.read_bytes()
    for broken in (data[: len(data) // 2], data[:-3], b"", b"not a protobuf at all"):
        model.write_bytes(broken)
        with pytest.raises(ArtifactError, match=r"model.onnx is (empty|truncated or corrupt)"):  # before ORT
            load_artifact(tmp_path)
    for cut in range(1, len(data), 3):  # truncation anywhere is caught by the framing walk
        model.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match="truncated or corrupt"):
            external_refs(model)
    model.unlink()
    with pytest.raises(ArtifactError, match="model file .*model.onnx is missing"):
        load_artifact(tmp_path)


def test_external_data_missing_short_or_unlisted(tmp_path: Path) -> None:
    manifest = tiny_export(tmp_path, external=True)
    data = tmp_path / "model.onnx.data"
    [(location, needed)] = external_refs(tmp_path / "model.onnx")
    assert location == "model.onnx.data" and needed == data.stat().st_size
    content = data.read_bytes()
    data.write_bytes(content[:-4])
    with pytest.raises(ArtifactError, match="model.onnx.data has .* bytes .* truncated"):
        load_artifact(tmp_path)
    data.unlink()
    with pytest.raises(ArtifactError, match="model.onnx.data.*missing"):
        load_artifact(tmp_path)
    data.write_bytes(content)
    unlisted = Manifest(**{**manifest.__dict__, "graph": GraphInfo(**{**manifest.graph.__dict__, "external_data": ()})})
    with pytest.raises(ManifestMismatchError, match="does not list"):
        check_model_files(tmp_path, unlisted)


def test_trt_engine_provider_builds_one_backend_per_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_export(tmp_path, TWO_EXITS, model_class=LAYERWISE)
    made: list[tuple[Path, Manifest, int]] = []

    class Engine:
        concurrency = 1

        def __init__(self, export_dir: Path, manifest: Manifest, device_id: int):
            made.append((export_dir, manifest, device_id))
            self.device_id = device_id

        def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return [np.full(len(feeds["input_ids"]), self.device_id, dtype=np.float32) for _ in names]

    module = types.ModuleType("rerank_runtime.trt_backend")
    module.TensorRTBackend = Engine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rerank_runtime.trt_backend", module)
    monkeypatch.setattr(providers, "visible_cuda_devices", lambda: 2)
    loaded = load_artifact(tmp_path, provider="trt-engine", devices=[0, 1])
    assert [(p, d) for p, _, d in made] == [(tmp_path, 0), (tmp_path, 1)]
    assert made[0][1] == Manifest.read(tmp_path)  # the validated, typed manifest
    assert isinstance(loaded.front.backend, RoundRobin) and loaded.front.concurrency == 2  # type: ignore[attr-defined]
    request, feeds = GraphRequest(exits=((2, 0),)), batch(ROWS)
    firsts = [float(loaded.front.run(request, feeds)[0][0]) for _ in range(4)]
    assert firsts == [0.0, 1.0, 0.0, 1.0]


# --- GPU (skipped without onnxruntime-gpu) ---------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_match_cpu(tmp_path: Path, provider: str) -> None:
    if provider == "tensorrt" and "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no TensorrtExecutionProvider")
    tiny_export(tmp_path, TWO_EXITS, model_class=LAYERWISE, external=True)
    feeds = batch(ROWS)
    request = GraphRequest(exits=((2, 0), (3, 1)))
    cpu = load_artifact(tmp_path).front.run(request, feeds)
    loaded = load_artifact(tmp_path, provider=provider, devices="cuda:0")
    assert loaded.front.backend.session_providers()[0] == providers.ORT_NAMES[provider]  # type: ignore[attr-defined]
    for got, want in zip(loaded.front.run(request, feeds), cpu):
        np.testing.assert_allclose(got, want, atol=1e-4)
    if provider == "tensorrt":
        assert (tmp_path / "trt_cache").is_dir()
