"""OnnxBackend and load_artifact on the tiny export (tests/tiny_export.py: onnx.helper, no torch), whose every
expected score is computed in numpy."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from rerank_runtime.compression import build_plan, pass_through_stages

from rerank_runtime import providers
from rerank_runtime.artifact import RoundRobin, check_model_files, detect_model_class, external_refs, load_artifact
from rerank_runtime.errors import (ArtifactError, ManifestMismatchError, ModelNotFoundError, ProviderUnavailableError,
                                   UnknownFamilyError, UnsupportedRequestError)
from rerank_runtime.manifest import GraphInfo, Manifest, TensorSpec
from rerank_runtime.onnx_backend import OnnxBackend, run_bound
from rerank_runtime.providers import Placement, resolve
from rerank_runtime.spec import ENCODER, LAYERWISE, LIGHTWEIGHT, GraphRequest
from tiny_export import TWO_EXITS, VOCAB, batch, expected, tiny_export, tiny_manifest

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
gpu = pytest.mark.skipif(not HAS_CUDA, reason="onnxruntime has no CUDAExecutionProvider (CPU build or no GPU)")


def build_artifact(root: Path, outputs: dict[str, tuple[float, float]] | None = None, *, model_class: str = ENCODER,
                   **fields: Any) -> Manifest:
    return tiny_export(root, outputs, model_class=model_class, **fields)


ROWS = [[3, 7, 11, 39], [5, 1], [20, 21, 22, 23, 24, 25]]


def cpu_backend(root: Path, manifest: Manifest, devices: Any = "cpu") -> OnnxBackend:
    return OnnxBackend(root, manifest, resolve("cpu", devices))


# --- run and check ---------------------------------------------------------------------------------------------------


def test_single_score_matches_numpy_and_feeds_are_converted(tmp_path: Path) -> None:
    manifest = build_artifact(tmp_path)
    backend = cpu_backend(tmp_path, manifest)
    feeds = batch(ROWS)
    narrow = {k: v.astype(np.int32) for k, v in feeds.items()} | {"query_lengths": np.array([1, 2, 3])}
    (scores,) = backend.run(GraphRequest(), narrow)  # int32 feeds converted, an input the graph lacks dropped
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, expected(feeds), rtol=0, atol=1e-5)
    assert backend.concurrency == 1


def test_requested_outputs_are_selected_in_request_order(tmp_path: Path) -> None:
    manifest = build_artifact(tmp_path, TWO_EXITS, model_class=LAYERWISE)
    backend = cpu_backend(tmp_path, manifest)
    feeds = batch(ROWS)
    (only,) = backend.run(GraphRequest(exits=((3, 1),)), feeds)
    np.testing.assert_allclose(only, expected(feeds, -2.0, 0.5), atol=1e-5)
    second, first = backend.run(GraphRequest(exits=((3, 1), (2, 0))), feeds)
    np.testing.assert_allclose(second, expected(feeds, -2.0, 0.5), atol=1e-5)
    np.testing.assert_allclose(first, expected(feeds), atol=1e-5)


def test_check_names_the_heads_the_artifact_has(tmp_path: Path) -> None:
    backend = cpu_backend(tmp_path, build_artifact(tmp_path, TWO_EXITS, model_class=LAYERWISE))
    backend.check(GraphRequest(exits=((2, 0),)))
    with pytest.raises(UnsupportedRequestError) as err:
        backend.check(GraphRequest(exits=((2, 0), (5, 0))))
    assert "layer 2 (head 0), layer 3 (head 1)" in str(err.value) and "layer 5 (head 0)" in str(err.value)
    with pytest.raises(UnsupportedRequestError, match="score"):
        backend.check(GraphRequest())  # a single-score request on a multi-exit artifact


def test_check_compression_against_the_baked_stages(tmp_path: Path) -> None:
    outputs = {"score_l2_h0": (1.0, 0.0), "score_l4_h1": (3.0, 0.0)}
    manifest = build_artifact(tmp_path, outputs, model_class=LIGHTWEIGHT, compress_layers=(3,))
    backend = cpu_backend(tmp_path, manifest)
    backend.check(GraphRequest(exits=((2, 0), (4, 1)), compress_ratio=2, compress_layers=(3,)))
    backend.check(GraphRequest(exits=((2, 0),)))  # the stage at layer 3 does not touch the layer-2 exit
    only_first = backend.run(GraphRequest(exits=((2, 0),)), batch(ROWS))  # its plan is filled with a pass-through
    filled = pass_through_stages(batch(ROWS), 0, 1, 2)
    assert filled["compress_weight_0"].sum() == sum(map(len, ROWS))  # one weight per real token, nothing merged
    np.testing.assert_allclose(only_first[0], expected(batch(ROWS), 1.0), atol=1e-5)
    with pytest.raises(UnsupportedRequestError) as err:
        backend.check(GraphRequest(exits=((4, 1),)))
    assert "compress_ratio=2, compress_layers=[3]" in str(err.value) and "rerank-export" in str(err.value)
    with pytest.raises(UnsupportedRequestError, match="compress_ratio=4"):
        backend.check(GraphRequest(exits=((4, 1),), compress_ratio=4, compress_layers=(3,)))
    plan = build_plan(batch(ROWS)["attention_mask"], np.array([1, 1, 1]), np.array([1, 0, 2]), 2, 1)
    feeds = batch(ROWS) | {k: v.astype(np.float64) if "weight" in k else v for k, v in plan.items()}  # float64 in
    scores = backend.run(GraphRequest(exits=((4, 1),), compress_ratio=2, compress_layers=(3,)), feeds)
    np.testing.assert_allclose(scores[0], expected(feeds, 3.0), atol=1e-5)
    with pytest.raises(UnsupportedRequestError, match="compress_index_0"):
        backend.run(GraphRequest(exits=((4, 1),), compress_ratio=2, compress_layers=(3,)), batch(ROWS))


def test_two_sessions_round_robin_from_threads(tmp_path: Path) -> None:
    manifest = build_artifact(tmp_path, TWO_EXITS, model_class=LAYERWISE)
    backend = cpu_backend(tmp_path, manifest, devices=["cpu", "cpu"])
    assert backend.concurrency == 2
    calls = [0, 0]
    for i, session in enumerate(backend._sessions):  # pyright: ignore[reportPrivateUsage]
        original = session.run

        def counted(*args: Any, _i: int = i, _run: Any = original) -> Any:
            calls[_i] += 1
            return _run(*args)

        session.run = counted
    request = GraphRequest(exits=((2, 0), (3, 1)))
    work = [batch([[(i * 7 + j) % VOCAB for j in range(1 + i % 5)], [i % VOCAB, 3]]) for i in range(24)]
    results: list[Any] = [None] * len(work)

    def worker(k: int) -> None:
        for i in range(k, len(work), 4):
            results[i] = backend.run(request, work[i])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for feeds, (a, b) in zip(work, results):
        np.testing.assert_allclose(a, expected(feeds), atol=1e-5)
        np.testing.assert_allclose(b, expected(feeds, -2.0, 0.5), atol=1e-5)
    assert calls == [12, 12]


def test_io_binding_path_matches_plain_run(tmp_path: Path) -> None:
    backend = cpu_backend(tmp_path, build_artifact(tmp_path, TWO_EXITS, model_class=LAYERWISE))
    feeds = batch(ROWS)
    bound = run_bound(backend._sessions[0], feeds, ["score_l3_h1"], "cpu", 0)  # pyright: ignore[reportPrivateUsage]
    np.testing.assert_allclose(bound[0], expected(feeds, -2.0, 0.5), atol=1e-5)


# --- provider verification and graph/manifest agreement --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_fallback_to_another_provider_is_an_error(tmp_path: Path) -> None:
    manifest = build_artifact(tmp_path)
    # ORT's CPU build warns and runs on the CPU when asked for CUDA: the backend must refuse that
    asked = Placement("cuda", "cuda:0", 0, (("CUDAExecutionProvider", {"device_id": "0"}),))
    if not HAS_CUDA:
        with pytest.raises(ProviderUnavailableError, match="fell back.*CUDAExecutionProvider"):
            OnnxBackend(tmp_path, manifest, [asked])


def test_fallback_detected_through_get_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = build_artifact(tmp_path)
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: ["AzureExecutionProvider"])
    with pytest.raises(ProviderUnavailableError) as err:
        cpu_backend(tmp_path, manifest)
    assert "CPUExecutionProvider" in str(err.value) and "AzureExecutionProvider" in str(err.value)


def test_graph_that_disagrees_with_the_manifest(tmp_path: Path) -> None:
    build_artifact(tmp_path)
    other = tiny_manifest(ENCODER, {"score": (1.0, 0.0), "extra": (1.0, 0.0)})
    with pytest.raises(ManifestMismatchError) as err:
        cpu_backend(tmp_path, other)
    assert "['extra', 'score']" in str(err.value) and "graph has ['score']" in str(err.value)


def test_ort_load_error_is_wrapped(tmp_path: Path) -> None:
    manifest = build_artifact(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07" + b"\xff" * 64)
    with pytest.raises(ArtifactError, match="model.onnx"):
        cpu_backend(tmp_path, manifest)


# --- load_artifact ---------------------------------------------------------------------------------------------------


def test_load_artifact_end_to_end(tmp_path: Path) -> None:
    manifest = build_artifact(tmp_path, TWO_EXITS, model_class=LAYERWISE, external=True)
    loaded = load_artifact(tmp_path, model_class=LAYERWISE, devices=["cpu", "cpu"])
    assert loaded.spec == manifest.spec and loaded.defaults == {"cutoff_layers": [2, 3]}
    assert loaded.tokenizer.encode("hello world nope", add_special_tokens=False).ids == [2, 3, 1]
    assert isinstance(loaded.backend, OnnxBackend) and loaded.backend.concurrency == 2
    feeds = batch(ROWS)
    (scores,) = loaded.backend.run(GraphRequest(exits=((2, 0),)), feeds)
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


def test_model_class_and_precision_requests(tmp_path: Path) -> None:
    build_artifact(tmp_path)
    with pytest.raises(UnsupportedRequestError, match="'decoder-only-layerwise' was asked for"):
        load_artifact(tmp_path, model_class=LAYERWISE)
    with pytest.raises(UnknownFamilyError):
        load_artifact(tmp_path, model_class="cross-encoder")
    for flag in ("use_fp16", "use_bf16"):
        with pytest.raises(UnsupportedRequestError, match=f"{flag}=True but .* is a fp32 export"):
            load_artifact(tmp_path, **{flag: True})
    half = tmp_path / "half"
    build_artifact(half, precision="fp16")
    assert isinstance(load_artifact(half, use_fp16=True).backend, OnnxBackend)
    with pytest.raises(UnsupportedRequestError, match="fp16 export"):
        load_artifact(half, use_bf16=True)


def test_missing_tokenizer(tmp_path: Path) -> None:
    build_artifact(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        load_artifact(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="tokenizer.json"):
        load_artifact(tmp_path)


@pytest.mark.parametrize("external", [False, True])
def test_truncated_or_corrupt_model_file(tmp_path: Path, external: bool) -> None:
    build_artifact(tmp_path, external=external)
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
    manifest = build_artifact(tmp_path, external=True)
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
    build_artifact(tmp_path, TWO_EXITS, model_class=LAYERWISE)
    made: list[tuple[Path, Manifest, int]] = []

    class Engine:
        def __init__(self, export_dir: Path, manifest: Manifest, device_id: int):
            made.append((export_dir, manifest, device_id))
            self.device_id = device_id

        def check(self, request: GraphRequest) -> None: ...

        def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.full(len(feeds["input_ids"]), self.device_id, dtype=np.float32)]

    module = types.ModuleType("rerank_runtime.trt_backend")
    module.TensorRTBackend = Engine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rerank_runtime.trt_backend", module)
    monkeypatch.setattr(providers, "visible_cuda_devices", lambda: 2)
    loaded = load_artifact(tmp_path, provider="trt-engine", devices=[0, 1])
    assert [(p, d) for p, _, d in made] == [(tmp_path, 0), (tmp_path, 1)]
    assert made[0][1] == Manifest.read(tmp_path)  # the validated, typed manifest
    assert isinstance(loaded.backend, RoundRobin) and loaded.backend.concurrency == 2
    request, feeds = GraphRequest(exits=((2, 0),)), batch(ROWS)
    firsts = [float(loaded.backend.run(request, feeds)[0][0]) for _ in range(4)]
    assert firsts == [0.0, 1.0, 0.0, 1.0]


# --- GPU (skipped without onnxruntime-gpu) ---------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_providers_match_cpu(tmp_path: Path, provider: str) -> None:
    if provider == "tensorrt" and "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no TensorrtExecutionProvider")
    build_artifact(tmp_path, TWO_EXITS, model_class=LAYERWISE, external=True)
    feeds = batch(ROWS)
    request = GraphRequest(exits=((2, 0), (3, 1)))
    cpu = load_artifact(tmp_path).backend.run(request, feeds)
    loaded = load_artifact(tmp_path, provider=provider, devices="cuda:0")
    assert loaded.backend.session_providers()[0][0] == providers.ORT_NAMES[provider]  # type: ignore[attr-defined]
    for got, want in zip(loaded.backend.run(request, feeds), cpu):
        np.testing.assert_allclose(got, want, atol=1e-4)
    if provider == "tensorrt":
        assert (tmp_path / "trt_cache").is_dir()
