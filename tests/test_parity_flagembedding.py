"""The PyTorch reference against FlagEmbedding 1.4.2 itself (the oracle environment), on every kind.

Layers checked: the exact token ids FlagEmbedding feeds its model, and the scores (fp32, within the table's
tolerance) over a pair set with truncation, the query cap, non-English text, emoji, an empty passage and duplicates,
for normalize on and off, one and several cutoff layers, and compression off, at ratio 2, one and two layers, on the
random and on the trained tiny checkpoint of every kind. The scenarios are the families' testing recipes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from close import assert_close
from oracle_client import run_oracle
from rerank_export.families import REGISTRY
from rerank_export.reference import FlagAutoReranker, load_reference
from rerank_export.testing.pairs import parity_pairs
from rerank_export.testing.recipes import RECIPES
from rerank_runtime.front import FeedRecorder
from rerank_runtime.spec import DECODER

KIND = {name: family.model_class for name, family in REGISTRY.items()}
# (family, trained, constructor kwargs, compute_score kwargs): each family's recipe scenarios on its random tiny
# checkpoint and on its trained one (whose larger, structured activations are what real models have).
SCENARIOS = [(f, trained, init, call) for trained in (False, True) for f, recipe in RECIPES.items()
             for init, call in recipe.oracle]
# Token ids depend on the tokenizer only, which random and trained checkpoints share.
IDS = [(f, n) for f, recipe in RECIPES.items() for n in recipe.token_id_lengths]


@pytest.fixture(scope="module")
def oracle(checkpoint):
    pairs = parity_pairs()
    jobs = [{"checkpoint": str(checkpoint(f, trained=t)), "model_class": KIND[f], "init": init, "call": call,
             "pairs": pairs, "capture_ids": False} for f, t, init, call in SCENARIOS]
    jobs += [{"checkpoint": str(checkpoint(f, trained=False)), "model_class": KIND[f], "init": {"max_length": n},
              "call": {}, "pairs": pairs, "capture_ids": True} for f, n in IDS]
    jobs.append({"checkpoint": str(checkpoint("gemma")), "model_class": DECODER, "init": {}, "call": {},
                 "pairs": pairs[1], "capture_ids": False})  # one pair given as [q, p]
    return run_oracle(jobs)


def _reference(checkpoint, family, init, trained=True):
    return FlagAutoReranker.from_finetuned(str(checkpoint(family, trained=trained)), model_class=KIND[family], **init)


@pytest.mark.parametrize("index", range(len(SCENARIOS)),
                         ids=[f"{f}{'-trained' * t}-{i}" for i, (f, t, _, _) in enumerate(SCENARIOS)])
def test_scores_match_flagembedding(oracle, checkpoint, index):
    family, trained, init, call = SCENARIOS[index]
    expected = oracle[index]
    assert expected["error"] is None, expected["error"]
    got = _reference(checkpoint, family, init, trained).compute_score(parity_pairs(), **call)
    assert_close(got, expected["scores"], "reference vs FlagEmbedding")


@pytest.mark.parametrize("family,max_length", IDS)
def test_token_ids_match_flagembedding(oracle, checkpoint, family, max_length):
    expected = oracle[len(SCENARIOS) + IDS.index((family, max_length))]
    assert expected["error"] is None, expected["error"]
    loaded = load_reference(str(checkpoint(family, trained=False)), model_class=KIND[family])
    recorder = FeedRecorder(loaded.front)
    reranker = FlagAutoReranker.from_loaded(replace(loaded, front=recorder), max_length=max_length)
    ours = []
    for pair in parity_pairs():
        recorder.calls.clear()
        reranker.compute_score([pair])
        assert len(recorder.rows()) == 1
        ours.append(recorder.rows()[0])
    assert ours == expected["ids"]
    assert any(len(row) >= max_length for row in ours), "the pair set must hit truncation"


def test_single_pair_returns_a_float(oracle, checkpoint):
    expected = oracle[-1]
    got = _reference(checkpoint, "gemma", {}).compute_score(parity_pairs()[1])
    assert isinstance(got, float)  # FlagEmbedding 1.4.2 returns [float]: a deliberate change
    assert_close(got, expected["scores"][0], "one pair")
