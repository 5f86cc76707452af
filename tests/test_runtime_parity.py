"""The runtime (ONNX Runtime CPU on fp32 exports) is a drop-in FlagEmbedding replacement, on every kind.

Layers:
- scores vs the PyTorch reference (rerank_export.reference) at max_length 64 and 128, normalize on and off, layerwise
  one and several cutoffs from the all-heads export, lightweight with the export's baked settings;
- scores vs FlagEmbedding 1.4.2 itself (the oracle, one process for all jobs);
- the feeds: both backends receive exactly the same arrays (ids, masks, compression plans), truncation and the query
  cap included;
- invariances of the host loop on the real graphs: batch vs single, order, batch_size, token budget, chunking, and the
  padding side for the decoder graphs that accept both.
Every comparison uses the one tolerance table (rerank_runtime.tolerances).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rerank_export.reference as reference
import rerank_runtime as runtime
from oracle_client import run_oracle
from rerank_export.families import REGISTRY
from rerank_export.testing.pairs import parity_pairs
from rerank_export.testing.recipes import RECIPES
from rerank_export.testing.training import exit_layers
from rerank_runtime.artifact import load_artifact
from rerank_runtime.batching import pad_rows
from rerank_runtime.front import FeedRecorder
from rerank_runtime.kinds import get_kind
from rerank_runtime.manifest import Manifest
from rerank_runtime.spec import Loaded
from close import FP32, assert_close
KIND = {name: family.model_class for name, family in REGISTRY.items()}
FAMILIES = tuple(KIND)

# (family, constructor kwargs, compute_score kwargs), from the families' testing recipes. The runtime gets exactly
# these; the reference and FlagEmbedding also get the lightweight export's baked settings (they know nothing of the
# artifact), under the call's own values.
SCENARIOS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (f, init, call) for f, recipe in RECIPES.items() for init, call in recipe.runtime
]
SCENARIO_IDS = [f"{f}-{i}" for i, (f, _, _) in enumerate(SCENARIOS)]


def baked(export_dir: Path) -> dict[str, Any]:
    """The compute_score arguments an export was built with (its manifest's defaults)."""
    return {k: v for k, v in Manifest.read(export_dir).defaults.items() if v is not None}


def spread_guard(scores: np.ndarray) -> None:
    """Invariance checks only mean something if different pairs score visibly differently."""
    assert np.ptp(scores, axis=-1).min() > 1e3 * FP32.atol, f"scores too close together to test with: {scores}"


@pytest.fixture(scope="module")
def runtimes(exported):
    """runtimes(family, **init) -> runtime reranker, built once per (family, init)."""
    cache: dict[str, Any] = {}

    def get(family: str, **init: Any) -> Any:
        key = repr((family, sorted(init.items())))
        if key not in cache:
            cache[key] = runtime.FlagAutoReranker.from_finetuned(str(exported(family)), **init)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def reference_call(exported):
    """reference_call(family, call) -> the call's kwargs plus the export's baked settings, for checkpoint scorers."""

    def get(family: str, call: dict[str, Any]) -> dict[str, Any]:
        return {**baked(exported(family)), **call}

    return get


# ---------------------------------------------------------------- 1. vs the PyTorch reference


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=SCENARIO_IDS)
def test_scores_match_the_reference(index, runtimes, reference_call, checkpoint):
    family, init, call = SCENARIOS[index]
    ours = runtimes(family, **init)
    assert type(ours).__module__ == "rerank_runtime.rerankers"
    ref = reference.FlagAutoReranker.from_finetuned(str(checkpoint(family)), model_class=KIND[family], **init)
    want = ref.compute_score(parity_pairs(), **reference_call(family, call))
    got = ours.compute_score(parity_pairs(), **call)
    assert_close(got, want, f"{family} {init} {call}")


def test_every_registered_family_has_scenarios():
    assert {f for f, _, _ in SCENARIOS} == set(FAMILIES) == set(REGISTRY)


# ---------------------------------------------------------------- 2. vs FlagEmbedding itself


@pytest.fixture(scope="module")
def oracle(checkpoint, reference_call):
    jobs = [{"checkpoint": str(checkpoint(f)), "model_class": KIND[f], "init": init,
             "call": reference_call(f, call), "pairs": parity_pairs(), "capture_ids": False}
            for f, init, call in SCENARIOS]
    return run_oracle(jobs)


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=SCENARIO_IDS)
def test_scores_match_flagembedding(index, oracle, runtimes):
    family, init, call = SCENARIOS[index]
    expected = oracle[index]
    assert expected["error"] is None, expected["error"]
    got = runtimes(family, **init).compute_score(parity_pairs(), **call)
    assert_close(got, expected["scores"], f"runtime vs FlagEmbedding 1.4.2, {family} {init} {call}")


# ---------------------------------------------------------------- 3. the same feeds


def recording(loaded: Loaded, auto: Any, **init: Any) -> tuple[Any, FeedRecorder]:
    """A reranker over `loaded` (auto: the runtime's or the reference's FlagAutoReranker) that records its batches."""
    recorder = FeedRecorder(loaded.front)
    return auto.from_loaded(replace(loaded, front=recorder), **init), recorder


def recorded(reranker: Any, recorder: FeedRecorder, pairs: list[list[str]], **call: Any) -> list[Any]:
    recorder.calls.clear()
    reranker.compute_score(pairs, **call)
    return list(recorder.calls)


def real_rows(calls: list[tuple[Any, dict[str, np.ndarray]]]) -> list[list[int]]:
    return [ids[mask > 0].tolist() for _, f in calls for ids, mask in zip(f["input_ids"], f["attention_mask"])]


@pytest.mark.parametrize("family", FAMILIES)
def test_both_backends_get_identical_feeds(family, exported, checkpoint, reference_call):
    init = {"max_length": 64, "batch_size": 5}
    ours, mine = recording(load_artifact(exported(family)), runtime.FlagAutoReranker, **init)
    ref, theirs = recording(reference.load_reference(str(checkpoint(family)), model_class=KIND[family]),
                            reference.FlagAutoReranker, **init)
    pairs = parity_pairs()
    for call in ({}, {"query_max_length": 6}):
        got = recorded(ours, mine, pairs, **call)
        want = recorded(ref, theirs, pairs, **reference_call(family, call))
        assert [r for r, _ in got] == [r for r, _ in want]
        assert len(got) == -(-len(pairs) // init["batch_size"])
        for (_, a), (_, b) in zip(got, want):
            assert sorted(a) == sorted(b)
            for name in a:
                assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
        if RECIPES[family].export.get("compress_ratio", 1) > 1:
            assert any(name.startswith("compress_index") for name in got[0][1])
    # truncation bites at max_length 64 (the layout is longer than 64 for some pair), and the query cap changes ids
    rows = real_rows(recorded(ours, mine, pairs))
    assert max(len(r) for r in rows) >= init["max_length"]
    capped = real_rows(recorded(ours, mine, pairs, query_max_length=6))
    assert sum(len(r) for r in capped) < sum(len(r) for r in rows)


# ---------------------------------------------------------------- 4. invariances on the real graphs


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_single_and_order_is_restored(family, runtimes):
    r = runtimes(family, max_length=64)
    pairs = parity_pairs()
    batched = r.compute_score_array(pairs)
    spread_guard(batched)
    alone = np.concatenate([r.compute_score_array(pair) for pair in pairs], axis=-1)
    assert_close(alone, batched, f"{family}: each pair alone vs in a batch of mixed lengths")
    perm = np.random.default_rng(7).permutation(len(pairs))
    shuffled = r.compute_score_array([pairs[i] for i in perm])
    assert_close(shuffled, batched[..., perm], f"{family}: shuffled input")


@pytest.mark.parametrize("family", FAMILIES)
def test_batching_knobs_do_not_change_scores(family, runtimes, exported):
    pairs = parity_pairs()[:20]
    want = runtimes(family, max_length=64).compute_score_array(pairs)
    spread_guard(want)
    for batch_size in (1, 3, 128):
        got = runtimes(family, max_length=64).compute_score_array(pairs, batch_size=batch_size)
        assert_close(got, want, f"{family}: batch_size={batch_size}")
    for budget in (64, 300, 2000):
        got = runtimes(family, max_length=64, max_batch_tokens=budget).compute_score_array(pairs)
        assert_close(got, want, f"{family}: max_batch_tokens={budget}")
    # reversed, so that a slot the chunking skipped cannot pass by holding the previous call's freed values
    got = runtimes(family, max_length=64, chunk_size=3).compute_score_array(pairs[::-1])
    assert_close(got, want[..., ::-1], f"{family}: chunk_size=3")


# The decoder kinds that pad on the tokenizer's side (the encoder needs <s> first; the lightweight kind forces right).
EITHER_SIDE = [f for f, k in KIND.items() if get_kind(k).default_prompt and not get_kind(k).force_right_padding]


@pytest.mark.parametrize("family", EITHER_SIDE)
def test_padding_side_does_not_change_graph_outputs(family, exported):
    r, recorder = recording(load_artifact(exported(family)), runtime.FlagAutoReranker, max_length=64, batch_size=8)
    native = r.spec.padding_side  # the tokenizer's side, which compute_score uses for these kinds
    cutoffs = exit_layers(r.spec) if get_kind(r.spec.model_class).takes_cutoff else None  # every exit at once
    calls = recorded(r, recorder, parity_pairs(), **({} if cutoffs is None else {"cutoff_layers": cutoffs}))
    assert len(calls) == 3
    outputs: dict[str, list[np.ndarray]] = {"left": [], "right": []}
    for request, feeds in calls:
        rows = [ids[mask > 0].tolist() for ids, mask in zip(feeds["input_ids"], feeds["attention_mask"])]
        for side in outputs:
            ids, mask = pad_rows(rows, r.spec.pad_token_id, side, multiple=8)
            if side == native:  # re-padding on compute_score's own side rebuilds its feeds exactly
                assert np.array_equal(ids, feeds["input_ids"]) and np.array_equal(mask, feeds["attention_mask"])
            assert not mask.all() and mask[:, -1 if side == "left" else 0].all()
            outputs[side].append(np.stack(r.front.run(request, {"input_ids": ids, "attention_mask": mask})))
    left, right = np.concatenate(outputs["left"], axis=-1), np.concatenate(outputs["right"], axis=-1)
    assert left.shape == (1 if cutoffs is None else len(cutoffs), len(parity_pairs()))
    spread_guard(left)
    assert_close(left, right, f"{family}: the same rows padded left vs right")
