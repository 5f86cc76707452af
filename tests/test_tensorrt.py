"""Native TensorRT engines: planning, manifest recording and load checks on CPU; build and parity on a GPU (trt).

The run/capture/replay plumbing against fake TensorRT is in test_gpu_trt_fake.py. The trt-marked tests here build
real engines for the tiny export (tests/tiny_export.py: onnx.helper, no torch) and compare them with ONNX Runtime CPU;
they need TensorRT and a GPU and have not run yet: `pytest -q -m trt tests/test_tensorrt.py` on a GPU machine.
Every manifest here is one the schema accepts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank_export import tensorrt_build as tb
from rerank_runtime import trt_backend as tbe
from gpu_env import why_no_gpu
from rerank_runtime.errors import (ArtifactError, EngineError, ExportError, MissingDependencyError, UnsupportedRequestError)
from rerank_runtime.front import GraphFront, ServedGraph
from rerank_runtime.manifest import Manifest
from rerank_runtime.providers import DEFAULT_MAX_BATCH
from rerank_runtime.spec import ENCODER, LAYERWISE, LIGHTWEIGHT, GraphRequest
from tiny_export import expected, ort_cpu, tiny_export, tiny_feeds, tiny_manifest

REPO = Path(__file__).resolve().parent.parent  # install hints name the clone the package runs from

B = DEFAULT_MAX_BATCH  # the default largest batch of every profile


def make_manifest(kind: str = ENCODER, *, max_sequence_length: int = 512, compress_layers: tuple[int, ...] = (2, 4),
                  precision: str = "fp32") -> Manifest:
    """The tiny artifact's manifest at these sizes (compression only for the lightweight kind)."""
    return tiny_manifest(kind, compress_layers=compress_layers if kind == LIGHTWEIGHT else (), precision=precision,
                         max_length=max_sequence_length - 16, max_sequence_length=max_sequence_length)


def engine_export(path: Path, kind: str = ENCODER, precision: str = "fp32") -> Manifest:
    """The tiny artifact on disk, sized as the engine tests want it (one compression stage when lightweight)."""
    return tiny_export(path, model_class=kind, compress_layers=(2,) if kind == LIGHTWEIGHT else (),
                       precision=precision, external=True, max_length=284, max_sequence_length=300)

# ---------------------------------------------------------------------------------------------------------------
# plan_profiles

def test_encoder_profiles_cover_every_length_once() -> None:
    profiles = tb.plan_profiles(make_manifest(ENCODER), tb.EngineOptions())
    assert [(p.min_length, p.max_length) for p in profiles] == [(1, 64), (65, 128), (129, 256), (257, 512)]
    assert profiles[1].shapes == {n: ((1, 65), (B, 128), (B, 128)) for n in ("input_ids", "attention_mask")}
    assert [p.index for p in profiles] == [0, 1, 2, 3]


def test_layerwise_profiles_follow_options() -> None:
    options = tb.EngineOptions(max_batch_size=8, opt_batch_size=4, max_length=200)
    profiles = tb.plan_profiles(make_manifest(LAYERWISE), options)
    assert [p.max_length for p in profiles] == [64, 128, 200]
    assert profiles[-1].shapes["input_ids"] == ((1, 129), (4, 200), (8, 200))
    assert set(profiles[0].shapes) == {"input_ids", "attention_mask"}


def test_lightweight_profiles_bound_compressed_inputs_by_the_bucket() -> None:
    profiles = tb.plan_profiles(make_manifest(LIGHTWEIGHT, compress_layers=(2, 4)), tb.EngineOptions())
    last = profiles[-1]
    assert set(last.shapes) == {"input_ids", "attention_mask", "compress_index_0", "compress_weight_0",
                                "compress_index_1", "compress_weight_1"}
    assert last.shapes["compress_index_0"] == ((1, 1, 2), (B, 256, 2), (B, 512, 2))  # stage 0: ceil(512 / 2)
    assert last.shapes["compress_weight_1"] == ((1, 1, 2), (B, 128, 2), (B, 512, 2))  # stage 1: ceil(512 / 4)
    assert profiles[0].shapes["compress_index_0"][2] == (B, 64, 2)


def test_lightweight_without_compression_has_token_inputs_only() -> None:
    manifest = make_manifest(LIGHTWEIGHT, compress_layers=())
    assert set(tb.plan_profiles(manifest, tb.EngineOptions())[0].shapes) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(("max_length", "buckets", "expected"), [
    (512, None, [64, 128, 256, 512]),
    (530, None, [64, 128, 256, 530]),  # no 18-token sliver bucket
    (1100, None, [64, 128, 256, 512, 1100]),
    (1500, None, [64, 128, 256, 512, 1024, 1500]),
    (100, None, [64, 100]),
    (40, None, [40]),
    (128, (32, 96), [32, 96, 128]),
    (128, (32, 128), [32, 128]),
])
def test_length_buckets(max_length: int, buckets: tuple[int, ...] | None, expected: list[int]) -> None:
    assert tb.length_buckets(max_length, buckets) == expected


def test_buckets_beyond_max_length_are_refused() -> None:
    with pytest.raises(ExportError, match=r"\[256\] exceed max_length 128"):
        tb.length_buckets(128, (64, 256))


def test_max_length_beyond_the_artifact_is_refused() -> None:
    with pytest.raises(ExportError, match="exceeds the artifact's max_sequence_length 512"):
        tb.plan_profiles(make_manifest(ENCODER), tb.EngineOptions(max_length=1024))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_batch_size": 4, "opt_batch_size": 8}, "opt_batch_size"),
    ({"max_length": -1}, "max_length"),
    ({"length_buckets": (128, 64)}, "length_buckets"),
    ({"length_buckets": ()}, "length_buckets"),
    ({"workspace_bytes": 0}, "workspace_bytes"),
    ({"builder_optimization_level": 6}, "builder_optimization_level"),
    ({"device_id": -1}, "device_id"),
    ({"max_batch_size": True}, "max_batch_size"),
])
def test_options_validation(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ExportError, match=f"EngineOptions.{field} must be"):
        tb.EngineOptions(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# recording in manifest.json and checking before loading

def fake_record(profiles: tuple[tbe.Profile, ...], **changes: Any) -> tbe.EngineRecord:
    values: dict[str, Any] = dict(
        tensorrt_version="10.12.0.36", gpu_name="NVIDIA L4", compute_capability="8.9", profiles=profiles,
        engine_bytes=11, engine_sha256="ab" * 32, precision_handling="strongly typed", strongly_typed=True,
        tf32=False, builder_optimization_level=3)
    values.update(changes)
    return tbe.EngineRecord(**values)


def test_an_engine_record_round_trips_through_the_manifest_and_keeps_the_rest(tmp_path: Path) -> None:
    manifest = tiny_export(tmp_path / "exp", model_class=LIGHTWEIGHT, compress_layers=(2,), max_length=284,
                           max_sequence_length=300)
    export = tmp_path / "exp"
    record = fake_record(tb.plan_profiles(manifest, tb.EngineOptions(max_batch_size=4)))
    manifest.with_engine(record).write(export)
    text = (export / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    written = Manifest.read(export)
    assert written.tensorrt == record and written == manifest.with_engine(record)
    assert json.loads(text)["tensorrt"]["profiles"][0]["shapes"]["compress_index_0"]["max"] == [4, 64, 2]
    tbe.check_engine_compatibility(record, tensorrt_version="10.12.0.36", compute_capability="8.9",
                                   gpu_name="NVIDIA L4", export_dir=export)
    assert sorted(p.name for p in export.iterdir()) == ["manifest.json", "model.onnx", "tokenizer.json"]  # no tmp


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: t.pop("engine_sha256"), "'tensorrt.engine_sha256' is missing"),
    (lambda t: t.update(build_seconds=1.0), r"unknown field\(s\) \['build_seconds'\] in 'tensorrt.'"),
    (lambda t: t.update(engine_file="../model.engine"), "'tensorrt.engine_file' must be a file name"),
    (lambda t: t.update(strongly_typed="yes"), "'tensorrt.strongly_typed' must be true or false"),
    (lambda t: t.update(profiles=[]), "'tensorrt.profiles' must be a non-empty list"),
    (lambda t: t["profiles"][0].update(index=3), "numbered 0, 1, ... in order"),
    (lambda t: t["profiles"][0].update(min_length=65), r"'tensorrt.profiles\[0\].max_length' must be at least"),
    (lambda t: t["profiles"][0]["shapes"].pop("attention_mask"), r"profiles\[0\].shapes' must give"),
    (lambda t: t["profiles"][0]["shapes"]["input_ids"].update(opt=[200, 64]), "min <= opt <= max"),
    (lambda t: t["profiles"][-1].update(max_length=513), r"'tensorrt.profiles\[3\].max_length' \(513\) is beyond"),
])
def test_the_schema_refuses_a_broken_engine_record(tmp_path: Path, edit: Any, match: str) -> None:
    manifest = tiny_export(tmp_path, max_length=496, max_sequence_length=512)
    data = manifest.with_engine(fake_record(tb.plan_profiles(manifest, tb.EngineOptions()))).to_dict()
    edit(data["tensorrt"])
    with pytest.raises(ArtifactError, match=match):
        Manifest.from_dict(data)


def test_failed_manifest_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = engine_export(tmp_path / "exp")
    export = tmp_path / "exp"
    before = (export / "manifest.json").read_bytes()
    files = sorted(p.name for p in export.iterdir())
    record = fake_record(tb.plan_profiles(manifest, tb.EngineOptions()))

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        manifest.with_engine(record).write(export)
    assert (export / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in export.iterdir()) == files  # no temporary file left


@pytest.mark.parametrize(("version", "cc", "expected"), [
    ("10.13.0.35", "8.9", [r"built with TensorRT 10\.12\.0\.36 but this process runs TensorRT 10\.13\.0\.35"]),
    ("10.12.0.36", "9.0", [r"built for compute capability 8\.9 \(NVIDIA L4\) but this GPU is 9\.0 \(H100\)"]),
    ("11.1.0.106", "8.6", ["TensorRT 11.1.0.106", "this GPU is 8.6"]),
])
def test_version_or_gpu_mismatch_says_how_to_rebuild(version: str, cc: str, expected: list[str]) -> None:
    record = fake_record(tb.plan_profiles(make_manifest(ENCODER), tb.EngineOptions()))
    with pytest.raises(EngineError) as info:
        tbe.check_engine_compatibility(record, tensorrt_version=version, compute_capability=cc, gpu_name="H100",
                                       export_dir="/exports/enc")
    for pattern in expected:
        assert re.search(pattern, str(info.value)), str(info.value)
    assert "rerank-export engine /exports/enc --overwrite" in str(info.value)


def test_an_export_without_an_engine_says_how_to_build_one() -> None:
    with pytest.raises(EngineError, match=r"has no TensorRT engine.*rerank-export engine /x"):
        tbe.engine_record(make_manifest(ENCODER), "/x")


@pytest.mark.parametrize(("batch", "length", "index"), [(1, 1, 0), (B, 64, 0), (1, 65, 1), (5, 300, 3), (B, 512, 3)])
def test_select_profile_takes_the_smallest_bucket(batch: int, length: int, index: int) -> None:
    profiles = tb.plan_profiles(make_manifest(ENCODER), tb.EngineOptions())
    assert tbe.select_profile(profiles, batch, length, "/e").index == index


@pytest.mark.parametrize(("batch", "length", "hints"), [
    (1, 600, ["--max-length 600"]),
    (B + 1, 8, [f"--max-batch-size {B + 1}"]),
    (B + 8, 700, ["--max-length 700", f"--max-batch-size {B + 8}"]),
])
def test_select_profile_beyond_every_profile(batch: int, length: int, hints: list[str]) -> None:
    profiles = tb.plan_profiles(make_manifest(ENCODER), tb.EngineOptions())
    with pytest.raises(UnsupportedRequestError) as info:
        tbe.select_profile(profiles, batch, length, "/e")
    assert f"rerank-export engine /e --overwrite {' '.join(hints)}" in str(info.value), str(info.value)


def test_select_profile_beyond_the_artifact_points_at_max_length() -> None:
    manifest = make_manifest(ENCODER, max_sequence_length=160)
    profiles = tb.plan_profiles(manifest, tb.EngineOptions())
    with pytest.raises(UnsupportedRequestError, match=r"beyond the 160 .* /e .* pass max_length <= 144 or re-export"):
        tbe.select_profile(profiles, 2, 384, "/e", manifest)


# ---------------------------------------------------------------------------------------------------------------
# missing dependencies, import boundary

no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")


@no_tensorrt
def test_build_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    engine_export(tmp_path / "exp")
    with pytest.raises(MissingDependencyError, match=r"tensorrt is required for native TensorRT engines.*"
                                                     + re.escape(f"`pip install '{REPO}[trt]'`")
                                                     + ".*pypi\\.nvidia\\.com"):
        tb.build_engine(tmp_path / "exp", tb.EngineOptions(), progress=lambda _: None)


def with_fake_engine(export: Path, manifest: Manifest, engine: bytes = b"x" * 11) -> Manifest:
    """The export recording an 11-byte engine (fake_record), with `engine` as model.engine."""
    (export / "model.engine").write_bytes(engine)
    recorded = manifest.with_engine(fake_record(tb.plan_profiles(manifest, tb.EngineOptions()),
                                                engine_sha256=hashlib.sha256(b"x" * 11).hexdigest()))
    recorded.write(export)
    return recorded


@no_tensorrt
def test_backend_without_tensorrt_says_what_to_install(tmp_path: Path) -> None:
    manifest = with_fake_engine(tmp_path, engine_export(tmp_path))
    with pytest.raises(MissingDependencyError, match=re.escape(f"pip install '{REPO}[trt]'")):
        tbe.TensorRTBackend(tmp_path, manifest)


def test_importing_the_engine_modules_loads_nothing_heavy() -> None:
    code = ("import sys, rerank_runtime.trt_backend, rerank_runtime.cudart, rerank_export.tensorrt_build\n"
            "print(sorted(m for m in ('torch', 'transformers', 'tensorrt', 'cuda', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------
# the tiny export (tiny_export.py), checked on ONNX Runtime CPU

@pytest.mark.parametrize(("kind", "precision", "tolerance"), [
    (ENCODER, "fp32", 1e-5), (LAYERWISE, "fp32", 1e-5), (LIGHTWEIGHT, "fp32", 1e-5), (ENCODER, "fp16", 2e-2)])
def test_the_tiny_export_computes_what_it_should(tmp_path: Path, kind: str, precision: str, tolerance: float) -> None:
    manifest = engine_export(tmp_path / kind, kind, precision)
    assert (tmp_path / kind / "model.onnx.data").is_file()
    feeds = tiny_feeds(manifest, 3, 20, np.random.default_rng(1))
    got = ort_cpu(tmp_path / kind, feeds)
    heads = {"score": (1.0, 0.0), "score_l2_h0": (1.0, 0.0), "score_l3_h1": (-2.0, 0.5)}
    for name in manifest.exit_names():
        np.testing.assert_allclose(got[name], expected(feeds, *heads[name]), rtol=tolerance, atol=tolerance)


# ---------------------------------------------------------------------------------------------------------------
# GPU: build and run with real TensorRT (not run yet)

_NO_TRT = why_no_gpu({"tensorrt": "tensorrt", "cuda-bindings": "cuda"})  # the [trt] extra
gpu = pytest.mark.skipif(_NO_TRT is not None, reason=_NO_TRT or "")


@pytest.mark.trt
@gpu
@pytest.mark.parametrize(("kind", "precision", "tolerance"), [
    (ENCODER, "fp32", 1e-4), (LAYERWISE, "fp32", 1e-4), (LIGHTWEIGHT, "fp32", 1e-4), (ENCODER, "fp16", 2e-2)])
def test_engine_matches_onnx_runtime_cpu(tmp_path: Path, kind: str, precision: str, tolerance: float) -> None:
    engine_export(tmp_path / kind, kind, precision)
    export = tmp_path / kind
    messages: list[str] = []
    options = tb.EngineOptions(max_batch_size=8, length_buckets=(32, 64))
    assert tb.build_engine(export, options, progress=messages.append) == export / "model.engine"
    assert any("wrote" in m for m in messages), messages
    manifest = Manifest.read(export)
    assert manifest.tensorrt is not None and [p.max_length for p in manifest.tensorrt.profiles] == [32, 64, 300]
    request = GraphRequest(manifest.exits, manifest.compress_ratio, manifest.compress_layers)
    rng = np.random.default_rng(2)
    for graphs in (False, True):
        with tbe.TensorRTBackend(export, manifest, 0, use_cuda_graphs=graphs) as backend:
            front = GraphFront(ServedGraph.of(manifest, export), backend)
            front.check(request)
            for batch, length in [(1, 5), (3, 32), (8, 40), (2, 300), (3, 32)]:
                feeds = tiny_feeds(manifest, batch, length, rng)
                want = ort_cpu(export, feeds)
                got = front.run(request, feeds)
                for name, scores in zip(request.output_names, got):
                    assert scores.dtype == np.float32 and scores.shape == (batch,)
                    np.testing.assert_allclose(scores, want[name], rtol=tolerance, atol=tolerance)
            with pytest.raises(UnsupportedRequestError, match="--max-batch-size 9"):
                front.run(request, tiny_feeds(manifest, 9, 8, rng))


@pytest.mark.trt
@gpu
def test_engine_from_another_tensorrt_is_refused(tmp_path: Path) -> None:
    engine_export(tmp_path / "enc")
    export = tmp_path / "enc"
    tb.build_engine(export, tb.EngineOptions(max_batch_size=2, length_buckets=(64,)), progress=lambda _: None)
    with pytest.raises(ExportError, match="exists; pass overwrite=True"):
        tb.build_engine(export, tb.EngineOptions(max_batch_size=2), progress=lambda _: None)
    manifest = Manifest.read(export)
    assert manifest.tensorrt is not None
    older = manifest.with_engine(replace(manifest.tensorrt, tensorrt_version="9.0.0"))
    with pytest.raises(EngineError, match=r"built with TensorRT 9\.0\.0"):
        tbe.TensorRTBackend(export, older)
