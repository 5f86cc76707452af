"""The request front (rerank_runtime.front): one check of a request against the served graph, one completion of its
feeds, one round-robin and one feed recorder, for every backend. Run over the tiny export on ONNX Runtime CPU, whose
every score is computed in numpy (tests/tiny_export.py)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from rerank_runtime.compression import build_plan, pass_through_stages
from rerank_runtime.errors import ArtifactError, UnsupportedRequestError
from rerank_runtime.front import FeedRecorder, GraphFront, RoundRobin, ServedGraph
from rerank_runtime.manifest import Manifest, TensorSpec
from rerank_runtime.onnx_backend import OnnxBackend
from rerank_runtime.providers import resolve
from rerank_runtime.spec import LAYERWISE, LIGHTWEIGHT, GraphRequest
from tiny_export import TWO_EXITS, batch, expected, tiny_export

ROWS = [[3, 7, 11, 39], [5, 1], [20, 21, 22, 23, 24, 25]]
FOUR = {"score_l2_h0": (1.0, 0.0), "score_l4_h1": (3.0, 0.0)}  # a stage at layer 3 lies between the two exits


def front(root: Path, manifest: Manifest) -> GraphFront:
    [placement] = resolve("cpu", "cpu")
    return GraphFront(ServedGraph.of(manifest, root), OnnxBackend(root, manifest, placement))


def test_feeds_are_coerced_to_the_graph_types_and_extra_ones_dropped(tmp_path: Path) -> None:
    f = front(tmp_path, tiny_export(tmp_path))
    feeds = batch(ROWS)
    narrow = {k: v.astype(np.int32) for k, v in feeds.items()} | {"query_lengths": np.array([1, 2, 3])}
    (scores,) = f.run(GraphRequest(), narrow)
    assert scores.dtype == np.float32 and scores.shape == (3,) and f.concurrency == 1
    np.testing.assert_allclose(scores, expected(feeds), rtol=0, atol=1e-5)
    completed = f.graph.complete(GraphRequest(), narrow)
    assert list(completed) == ["input_ids", "attention_mask"] and completed["input_ids"].dtype == np.int64


def test_requested_outputs_come_back_in_request_order(tmp_path: Path) -> None:
    f = front(tmp_path, tiny_export(tmp_path, TWO_EXITS, model_class=LAYERWISE))
    feeds = batch(ROWS)
    second, first = f.run(GraphRequest(exits=((3, 1), (2, 0))), feeds)
    np.testing.assert_allclose(second, expected(feeds, -2.0, 0.5), atol=1e-5)
    np.testing.assert_allclose(first, expected(feeds), atol=1e-5)


def test_check_names_the_heads_the_graph_has_and_the_export_command(tmp_path: Path) -> None:
    f = front(tmp_path, tiny_export(tmp_path, TWO_EXITS, model_class=LAYERWISE))
    f.check(GraphRequest(exits=((2, 0),)))
    with pytest.raises(UnsupportedRequestError) as err:
        f.check(GraphRequest(exits=((2, 0), (5, 0))))
    message = str(err.value)
    assert f"the artifact in {tmp_path} serves layer 2 (head 0), layer 3 (head 1)" in message
    assert "the call needs layer 2 (head 0), layer 5 (head 0) (missing: layer 5 (head 0))" in message
    # the command that makes an export for the call, every setting of this one kept (its max_length 16)
    command = f"rerank-export --model tests --max-length 16 --cutoff-layers 2 5 --output {tmp_path}-cutoff2-5-fp32"
    assert f"call with the export's cutoff_layers [2, 3], or export one for cutoff_layers [2, 5]: `{command}`" \
        in message
    with pytest.raises(UnsupportedRequestError, match=r"the call needs one score output \('score'\)"):
        f.check(GraphRequest())  # a single-score request on a multi-exit artifact
    with pytest.raises(UnsupportedRequestError, match=r"missing: layer 5 \(head 0\)"):
        f.run(GraphRequest(exits=((5, 0),)), batch(ROWS))  # run checks too


def test_compression_is_checked_against_the_baked_stages(tmp_path: Path) -> None:
    f = front(tmp_path, tiny_export(tmp_path, FOUR, model_class=LIGHTWEIGHT, compress_layers=(3,)))
    f.check(GraphRequest(exits=((2, 0), (4, 1)), compress_ratio=2, compress_layers=(3,)))
    f.check(GraphRequest(exits=((2, 0),)))  # the stage at layer 3 does not touch the layer-2 exit
    f.check(GraphRequest(exits=((2, 0),), compress_ratio=2))  # no stage that runs: the same as ratio 1
    with pytest.raises(UnsupportedRequestError) as err:
        f.check(GraphRequest(exits=((4, 1),)))
    assert "exported with compress_ratio=2, compress_layers=[3]; the call needs compress_ratio=1" in str(err.value)
    assert (f"`rerank-export --model tests --max-length 16 --cutoff-layers 4 --output {tmp_path}-cutoff4-fp32`"
            in str(err.value))
    with pytest.raises(UnsupportedRequestError, match=r"the call needs compress_ratio=4, compress_layers=\[3\]"):
        f.check(GraphRequest(exits=((4, 1),), compress_ratio=4, compress_layers=(3,)))


def test_stages_past_the_deepest_exit_get_pass_through_plans(tmp_path: Path) -> None:
    f = front(tmp_path, tiny_export(tmp_path, FOUR, model_class=LIGHTWEIGHT, compress_layers=(3,)))
    completed = f.graph.complete(GraphRequest(exits=((2, 0),)), batch(ROWS))
    assert completed["compress_weight_0"].sum() == sum(map(len, ROWS))  # one weight per real token, nothing merged
    np.testing.assert_array_equal(completed["compress_index_0"], pass_through_stages(batch(ROWS), 0, 1, 2)[
        "compress_index_0"])
    (only_first,) = f.run(GraphRequest(exits=((2, 0),)), batch(ROWS))
    np.testing.assert_allclose(only_first, expected(batch(ROWS)), atol=1e-5)  # as if no stage ran


def test_a_stage_the_request_runs_needs_its_plan(tmp_path: Path) -> None:
    f = front(tmp_path, tiny_export(tmp_path, FOUR, model_class=LIGHTWEIGHT, compress_layers=(3,)))
    request = GraphRequest(exits=((4, 1),), compress_ratio=2, compress_layers=(3,))
    plan = build_plan(batch(ROWS)["attention_mask"], np.array([1, 1, 1]), np.array([1, 0, 2]), 2, 1)
    feeds = batch(ROWS) | {k: v.astype(np.float64) if "weight" in k else v for k, v in plan.items()}  # float64 in
    (scores,) = f.run(request, feeds)
    np.testing.assert_allclose(scores, expected(feeds, 3.0), atol=1e-5)
    with pytest.raises(UnsupportedRequestError, match=r"takes inputs \['compress_index_0', 'compress_weight_0'\] "
                                                      "that the call's feeds lack"):
        f.run(request, batch(ROWS))


def test_a_graph_input_numpy_cannot_feed_is_an_artifact_error(tmp_path: Path) -> None:
    inputs = (TensorSpec("input_ids", "int64", ("batch", "sequence")),
              TensorSpec("attention_mask", "bfloat16", ("batch", "sequence")))
    with pytest.raises(ArtifactError, match=r"graph inputs \['attention_mask \(bfloat16\)'\] that the host cannot"):
        ServedGraph(inputs, (), 1, (), "the artifact in x", "ckpt")


def test_the_reference_graph_is_the_one_an_export_would_bake() -> None:
    request = GraphRequest(exits=((2, 0), (4, 1)), compress_ratio=2, compress_layers=(1, 3))
    graph = ServedGraph.baked_for(request, "the PyTorch reference of ckpt", "ckpt")
    assert [t.name for t in graph.inputs] == ["input_ids", "attention_mask", "compress_index_0", "compress_weight_0",
                                              "compress_index_1", "compress_weight_1"]
    assert graph.output_names == request.output_names and graph.stages == 2
    graph.check(request)
    plain = ServedGraph.baked_for(GraphRequest(), "the PyTorch reference of ckpt", "ckpt")
    assert [t.name for t in plain.inputs] == ["input_ids", "attention_mask"] and plain.output_names == ("score",)


class Tagged:
    """A backend whose every score is its own tag; it records the names it was asked for."""

    concurrency = 1

    def __init__(self, tag: float) -> None:
        self.tag = tag
        self.names: list[Sequence[str]] = []

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.names.append(tuple(names))
        return [np.full(len(feeds["input_ids"]), self.tag, np.float32) for _ in names]


def test_round_robin_takes_its_backends_in_turn_from_threads() -> None:
    backends = [Tagged(0.0), Tagged(1.0), Tagged(2.0)]
    both = RoundRobin(backends)
    assert both.concurrency == 3
    tags: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            (scores,) = both.run(("score",), batch(ROWS))
            with lock:
                tags.append(float(scores[0]))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(tags) == [0.0] * 10 + [1.0] * 10 + [2.0] * 10  # each backend one run in three
    with pytest.raises(ValueError, match="at least one backend"):
        RoundRobin([])


def test_the_feed_recorder_keeps_copies_of_what_ran(tmp_path: Path) -> None:
    f = front(tmp_path, tiny_export(tmp_path))
    recorder = FeedRecorder(f)
    feeds = batch(ROWS)
    (scores,) = recorder.run(GraphRequest(), feeds)
    feeds["input_ids"][:] = 0  # the caller reuses its buffer: the record is a copy
    [(request, recorded)] = recorder.calls
    assert request == GraphRequest() and recorder.concurrency == f.concurrency
    np.testing.assert_allclose(scores, expected(recorded), atol=1e-5)
    assert recorder.rows() == ROWS
