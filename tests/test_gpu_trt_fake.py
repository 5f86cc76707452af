"""The TensorRT builder and backend against a fake `tensorrt` (tests/fake_tensorrt.py), on fake CUDA here and, marked
gpu, on a real GPU where the fake engine's enqueue launches a CuPy kernel on the backend's stream: staging, tensor
addresses, profile choice, scratch memory, CUDA graph capture and replay with new data, eviction, and the defects a
careful read found (one logger, IRuntimeConfig lifetime, refused addresses and profiles, TensorRT 10.0, typing)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fake_tensorrt import Knobs, expected_scores, make_tensorrt
from gpu_env import CudaEnv, cuda_env  # noqa: F401 (the fixture)
from rerank_export import tensorrt_build as tb
from rerank_runtime.errors import ArtifactError, EngineError
from rerank_runtime.manifest import Manifest
from rerank_runtime.spec import ENCODER, LAYERWISE, LIGHTWEIGHT, GraphRequest
from rerank_runtime.trt_backend import TensorRTBackend, select_profile
from tiny_export import tiny_export, tiny_feeds

OPTIONS = tb.EngineOptions(max_batch_size=8, length_buckets=(32, 64))  # profiles 1..32, 33..64, 65..300
Build = Callable[..., tuple[Path, Manifest, Any]]


@pytest.fixture
def build(cuda_env: CudaEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Build:
    """build(kind, version=..., knobs=..., options=...) -> (export dir, manifest with its engine, fake module)."""

    def make(kind: str = ENCODER, version: str = "10.16.1.11", knobs: Knobs | None = None,
             options: tb.EngineOptions = OPTIONS, precision: str = "fp32") -> tuple[Path, Manifest, Any]:
        if cuda_env.real and kind == LIGHTWEIGHT:
            pytest.skip("the CuPy kernel takes the two token inputs only")
        trt = make_tensorrt(version, cuda_env.trt_kernel(), cuda_env.alloc, knobs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        export = tmp_path / f"{kind}-{version}-{precision}"
        tiny_export(export, model_class=kind, compress_layers=(2,) if kind == LIGHTWEIGHT else (), precision=precision,
                    external=True, max_length=284, max_sequence_length=300)
        tb.build_engine(export, options, progress=lambda line: None)
        return export, Manifest.read(export), trt

    return make


def request_of(manifest: Manifest) -> GraphRequest:
    return GraphRequest(manifest.exits, manifest.compress_ratio, manifest.compress_layers)


def check_scores(backend: TensorRTBackend, manifest: Manifest, feeds: dict[str, np.ndarray]) -> None:
    request = request_of(manifest)
    batch, length = feeds["input_ids"].shape
    profile = select_profile(backend.profiles, batch, length, backend.export_dir).index
    outputs = [t.name for t in manifest.graph.outputs]
    want = expected_scores(feeds, len(outputs), profile)
    for name, got in zip(request.output_names, backend.run(request.output_names, feeds)):  # complete feeds
        assert got.dtype == np.float32 and got.shape == (batch,)
        np.testing.assert_array_equal(got, want[outputs.index(name)], err_msg=f"{name} at {batch}x{length}")


@pytest.mark.parametrize("kind", [ENCODER, LAYERWISE, LIGHTWEIGHT])
def test_staging_addresses_and_profile_choice(build: Build, kind: str) -> None:
    export, manifest, _ = build(kind)
    rng = np.random.default_rng(1)
    with TensorRTBackend(export, manifest) as backend:
        for batch, length in [(1, 5), (3, 32), (8, 40), (2, 300), (3, 32), (8, 64)]:  # every profile, twice
            check_scores(backend, manifest, tiny_feeds(manifest, batch, length, rng))


def test_stream_is_non_blocking(build: Build, cuda_env: CudaEnv) -> None:
    export, manifest, _ = build()
    with TensorRTBackend(export, manifest) as backend:
        assert cuda_env.stream_flags(backend._stream) == cuda_env.non_blocking()


def test_graph_replays_new_data_and_matches_plain_runs(build: Build, cuda_env: CudaEnv) -> None:
    export, manifest, _ = build(LAYERWISE)
    rng = np.random.default_rng(2)
    a, b = tiny_feeds(manifest, 3, 40, rng), tiny_feeds(manifest, 3, 40, rng)
    assert not np.array_equal(a["input_ids"], b["input_ids"])
    request = request_of(manifest)
    with TensorRTBackend(export, manifest, use_cuda_graphs=True) as graphs, TensorRTBackend(export, manifest) as plain:
        check_scores(graphs, manifest, a)  # captured here (its warm-up run gives A's scores)
        assert graphs.captured_shapes() == [(1, (3, 40), (3, 40))]
        freed = len(cuda_env.freed)
        replayed = graphs.run(request.output_names, b)  # same shape: a replay of A's graph on B's data
        assert len(cuda_env.freed) == freed and len(graphs.captured_shapes()) == 1  # nothing re-captured
        for got, want in zip(replayed, plain.run(request.output_names, b)):
            np.testing.assert_array_equal(got, want)
        check_scores(graphs, manifest, b)


def test_graphs_beyond_the_limit_are_evicted_with_their_memory(build: Build, cuda_env: CudaEnv) -> None:
    export, manifest, _ = build()
    rng = np.random.default_rng(3)
    shapes = [(1, 10), (2, 10), (2, 50)]
    with TensorRTBackend(export, manifest, use_cuda_graphs=True, max_cuda_graphs=2) as backend:
        for batch, length in shapes[:2]:
            check_scores(backend, manifest, tiny_feeds(manifest, batch, length, rng))
        first_scratch = backend._graphs[(0, (1, 10), (1, 10))].scratch
        check_scores(backend, manifest, tiny_feeds(manifest, *shapes[2], rng))
        assert backend.captured_shapes() == [(0, (2, 10), (2, 10)), (1, (2, 50), (2, 50))]
        assert first_scratch in cuda_env.freed
        check_scores(backend, manifest, tiny_feeds(manifest, *shapes[0], rng))  # captured again, still right
        assert backend.captured_shapes()[-1] == (0, (1, 10), (1, 10))


def test_batches_beyond_the_graph_limit_run_plain(build: Build) -> None:
    export, manifest, _ = build()
    with TensorRTBackend(export, manifest, use_cuda_graphs=True, cuda_graph_max_batch=2) as backend:
        check_scores(backend, manifest, tiny_feeds(manifest, 5, 20, np.random.default_rng(4)))
        assert backend.captured_shapes() == []


def test_runtime_config_lives_as_long_as_its_context(build: Build) -> None:
    export, manifest, _ = build(version="10.16.1.11")  # 10.11+: contexts come from an IRuntimeConfig
    with TensorRTBackend(export, manifest) as backend:
        check_scores(backend, manifest, tiny_feeds(manifest, 2, 20, np.random.default_rng(5)))
        gc.collect()  # a config kept only by TensorRT's raw pointer would be gone now
        assert backend._contexts[0].runtime_config is not None
        check_scores(backend, manifest, tiny_feeds(manifest, 2, 20, np.random.default_rng(6)))


def test_tensorrt_before_10_11_uses_the_strategy_argument(build: Build) -> None:
    export, manifest, _ = build(version="10.5.0.18")
    with TensorRTBackend(export, manifest, use_cuda_graphs=True) as backend:
        check_scores(backend, manifest, tiny_feeds(manifest, 2, 20, np.random.default_rng(7)))
        assert backend._graphs[(0, (2, 20), (2, 20))].context.runtime_config is None


def test_one_logger_for_builder_and_runtime_and_errors_per_call(build: Build) -> None:
    export, manifest, trt = build()
    engine = export / "model.engine"
    engine.write_bytes(b"\0" * engine.stat().st_size)  # same size as recorded, not a plan
    with pytest.raises(EngineError, match=r"could not deserialize .*Serialization \(not an engine plan\)"):
        TensorRTBackend(export, manifest)  # the builder handed TensorRT its logger first: ours, the same object
    with pytest.raises(EngineError, match=r"could not deserialize .*: Error Code 1: Serialization.*Rebuild") as info:
        TensorRTBackend(export, manifest)
    assert str(info.value).count("Error Code") == 1  # the first call's error is not reported again


def test_refused_tensor_address_is_an_engine_error(build: Build) -> None:
    export, manifest, _ = build(knobs=Knobs(reject_address=True))
    with TensorRTBackend(export, manifest) as backend, pytest.raises(
            EngineError, match=r"rejected the device address of input_ids .*setTensorAddress"):
        backend.run(request_of(manifest).output_names, tiny_feeds(manifest, 1, 8, np.random.default_rng(8)))


def test_profile_selection_errors_are_engine_errors(build: Build) -> None:
    export, manifest, _ = build(knobs=Knobs(profile_error=True))
    with TensorRTBackend(export, manifest) as backend, pytest.raises(
            EngineError, match=r"refused optimisation profile 0 .*setOptimizationProfileAsync"):
        backend.run(request_of(manifest).output_names, tiny_feeds(manifest, 1, 8, np.random.default_rng(9)))


def test_failed_capture_is_reported_and_leaves_the_stream_usable(build: Build, cuda_env: CudaEnv) -> None:
    export, manifest, _ = build(knobs=Knobs(refuse_enqueue=cuda_env.capturing))
    rng = np.random.default_rng(10)
    with TensorRTBackend(export, manifest, use_cuda_graphs=True, cuda_graph_max_batch=2) as backend:
        with pytest.raises(EngineError, match=r"cannot be captured into a CUDA graph .*returned False while "
                                              r"capturing.*use_cuda_graphs=False"):
            backend.run(request_of(manifest).output_names, tiny_feeds(manifest, 2, 20, rng))
        assert not cuda_env.capturing(backend.stream_handle) and backend.captured_shapes() == []
        check_scores(backend, manifest, tiny_feeds(manifest, 4, 20, rng))  # plain path, same stream


def test_tensorrt_10_0_is_refused(build: Build, cuda_env: CudaEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineError, match=r"TensorRT 10\.0\.1\.6 is too old: .*10\.1 or newer.*\[trt\]"):
        build(version="10.0.1.6")


def test_strongly_typed_by_default_on_10_as_on_11(build: Build) -> None:
    for version in ("10.16.1.11", "11.4.0.106"):
        _, manifest, trt = build(version=version, precision="fp16")
        plan = trt.state.plans[-1]
        assert plan["strongly_typed"] and plan["pinned"] == 0 and "FP16" not in plan["flags"], plan
        assert manifest.tensorrt is not None and manifest.tensorrt.strongly_typed is True
        assert manifest.tensorrt.precision_handling.startswith("strongly typed")
        assert "TF32" not in plan["flags"]


def test_weak_typing_is_an_opt_in_on_10_only(build: Build) -> None:
    weak = tb.EngineOptions(max_batch_size=8, length_buckets=(32, 64), strongly_typed=False)
    _, manifest, trt = build(version="10.16.1.11", precision="fp16", options=weak)
    plan = trt.state.plans[-1]
    assert not plan["strongly_typed"] and {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(plan["flags"])
    assert plan["pinned"] > 0 and manifest.tensorrt is not None and manifest.tensorrt.strongly_typed is False
    with pytest.raises(EngineError, match=r"strongly_typed=False \(weak typing\) needs TensorRT 10.*11\.4"):
        build(version="11.4.0.106", precision="fp16", options=weak)


def test_a_failed_build_says_what_tensorrt_logged(build: Build) -> None:
    with pytest.raises(EngineError, match=r"could not build an engine .*: IBuilder::buildSerializedNetwork: .*fake"):
        build(knobs=Knobs(build_error=True))


def test_a_directory_without_manifest_points_at_the_real_export_command(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=rf"not an export directory; rerank-export writes one: `rerank-export --model "
                                            rf"<checkpoint> --output {tmp_path}`"):
        tb.build_engine(tmp_path, OPTIONS, progress=lambda line: None)
