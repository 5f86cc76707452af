"""The PyTorch reference against FlagEmbedding 1.4.2 itself (the oracle environment), on every kind.

Layers checked: the exact token ids FlagEmbedding feeds its model, and the scores (fp32, within the table's
tolerance) over a pair set with truncation, the query cap, non-English text, emoji, an empty passage and duplicates,
for normalize on and off, one and several cutoff layers, and compression off, at ratio 2, one and two layers.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from close import assert_close
from oracle_client import run_oracle
from rerank_export.reference import FlagAutoReranker, load_reference
from rerank_export.testing.pairs import parity_pairs
from rerank_runtime.front import FeedRecorder
from rerank_runtime.spec import DECODER, ENCODER, LAYERWISE, LIGHTWEIGHT
KIND = {"xlm_roberta": ENCODER, "gemma": DECODER, "minicpm_layerwise": LAYERWISE, "gemma2_lightweight": LIGHTWEIGHT}

# (family, constructor kwargs, compute_score kwargs)
SCENARIOS = [
    ("xlm_roberta", {"max_length": 64, "batch_size": 4}, {}),
    ("xlm_roberta", {"max_length": 128, "batch_size": 8}, {"normalize": True}),
    ("xlm_roberta", {"max_length": 64, "query_max_length": 20, "query_instruction_for_rerank": "Q: "}, {}),
    ("gemma", {"max_length": 64, "batch_size": 4}, {}),
    ("gemma", {"max_length": 128, "batch_size": 8, "normalize": True}, {}),
    ("gemma", {"max_length": 48}, {"prompt": "Is B relevant to A? Answer Yes or No."}),
    ("minicpm_layerwise", {"max_length": 64, "batch_size": 4}, {"cutoff_layers": [3]}),
    ("minicpm_layerwise", {"max_length": 128, "batch_size": 8}, {"cutoff_layers": [2, 4, 6], "normalize": True}),
    ("minicpm_layerwise", {"max_length": 64}, {}),
    ("minicpm_layerwise", {"max_length": 64}, {"cutoff_layers": [6, 2]}),  # FlagEmbedding's head-pairing quirk
    ("gemma2_lightweight", {"max_length": 64, "batch_size": 4}, {"cutoff_layers": [4]}),
    ("gemma2_lightweight", {"max_length": 64}, {"cutoff_layers": [3, 6], "compress_ratio": 2, "compress_layers": [2]}),
    ("gemma2_lightweight", {"max_length": 128, "batch_size": 8},
     {"cutoff_layers": [5], "compress_ratio": 2, "compress_layers": [2, 4], "normalize": True}),
    ("gemma2_lightweight", {"max_length": 64}, {"compress_ratio": 3, "compress_layers": [1, 3]}),
]
IDS = {"xlm_roberta": (64, 128), "gemma": (64, 128), "minicpm_layerwise": (64,), "gemma2_lightweight": (64,)}


@pytest.fixture(scope="module")
def oracle(checkpoint):
    pairs = parity_pairs()
    jobs = [{"checkpoint": str(checkpoint(f)), "model_class": KIND[f], "init": init, "call": call, "pairs": pairs,
             "capture_ids": False} for f, init, call in SCENARIOS]
    jobs += [{"checkpoint": str(checkpoint(f)), "model_class": KIND[f], "init": {"max_length": n}, "call": {},
              "pairs": pairs, "capture_ids": True} for f, lengths in IDS.items() for n in lengths]
    jobs.append({"checkpoint": str(checkpoint("gemma")), "model_class": DECODER, "init": {}, "call": {},
                 "pairs": pairs[1], "capture_ids": False})  # one pair given as [q, p]
    return run_oracle(jobs)


def _reference(checkpoint, family, init):
    return FlagAutoReranker.from_finetuned(str(checkpoint(family)), model_class=KIND[family], **init)


@pytest.mark.parametrize("index", range(len(SCENARIOS)),
                         ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(SCENARIOS)])
def test_scores_match_flagembedding(oracle, checkpoint, index):
    family, init, call = SCENARIOS[index]
    expected = oracle[index]
    assert expected["error"] is None, expected["error"]
    got = _reference(checkpoint, family, init).compute_score(parity_pairs(), **call)
    assert_close(got, expected["scores"], "reference vs FlagEmbedding")


@pytest.mark.parametrize("family,max_length", [(f, n) for f, lengths in IDS.items() for n in lengths])
def test_token_ids_match_flagembedding(oracle, checkpoint, family, max_length):
    index = len(SCENARIOS) + [(f, n) for f, ls in IDS.items() for n in ls].index((family, max_length))
    expected = oracle[index]
    assert expected["error"] is None, expected["error"]
    loaded = load_reference(str(checkpoint(family)), model_class=KIND[family])
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
