"""rank(): sentence-transformers' CrossEncoder.rank shape on every reranker class (runtime and PyTorch reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from serve_util import NAN_CHAR, GatedBackend, gated_reranker

from rerank_runtime.rerankers import FlagAutoReranker, Reranker

QUERY = "q"
PASSAGES = ["aa", "b", "abc", "b", "zz"]  # "b" twice: a tie that must keep input order


def test_sorted_best_first_with_ties_in_input_order():
    r = gated_reranker(GatedBackend())
    scores = r.compute_score([(QUERY, p) for p in PASSAGES])
    ranked = r.rank(QUERY, PASSAGES)
    assert [x["index"] for x in ranked] == sorted(range(len(PASSAGES)), key=lambda i: (-scores[i], i))
    assert [x["score"] for x in ranked] == sorted(scores, reverse=True)
    ties = [x["index"] for x in ranked if PASSAGES[x["index"]] == "b"]
    assert ties == [1, 3]
    assert all(set(x) == {"index", "score"} for x in ranked)


def test_top_k_documents_and_call_options():
    r = gated_reranker(GatedBackend())
    top = r.rank(QUERY, PASSAGES, top_k=2, return_documents=True)
    assert len(top) == 2 and all(x["document"] == PASSAGES[x["index"]] for x in top)
    normed = r.rank(QUERY, PASSAGES, normalize=True)
    raw = {x["index"]: x["score"] for x in r.rank(QUERY, PASSAGES)}
    assert all(x["score"] == 1 / (1 + math.exp(-raw[x["index"]])) for x in normed)
    assert r.rank(QUERY, []) == []
    assert len(r.rank(QUERY, PASSAGES, top_k=99)) == len(PASSAGES)


def test_bad_arguments():
    r = gated_reranker(GatedBackend())
    with pytest.raises(TypeError, match="passages must be a list"):
        r.rank(QUERY, "one string")
    with pytest.raises(TypeError, match="query must be a str"):
        r.rank(None, PASSAGES)
    with pytest.raises(ValueError, match="top_k"):
        r.rank(QUERY, PASSAGES, top_k=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        r.rank(QUERY, PASSAGES, batchsize=4)


def test_non_finite_scores_raise_or_sort_last():
    from rerank_runtime.errors import NonFiniteScoreError

    r = gated_reranker(GatedBackend())
    passages = ["a", f"b{NAN_CHAR}", "c"]
    with pytest.raises(NonFiniteScoreError):
        r.rank(QUERY, passages)
    ranked = r.rank(QUERY, passages, non_finite="nan")
    assert ranked[-1]["index"] == 1 and np.isnan(ranked[-1]["score"])


def test_several_cutoff_layers_are_refused(exported):
    r = FlagAutoReranker.from_finetuned(str(exported("minicpm_layerwise")))
    with pytest.raises(ValueError, match="one score per passage"):
        r.rank(QUERY, PASSAGES, cutoff_layers=[2, 4])
    one = r.rank(QUERY, PASSAGES, cutoff_layers=[4])
    want = r.compute_score([(QUERY, p) for p in PASSAGES], cutoff_layers=[4])
    assert [x["score"] for x in one] == sorted(want, reverse=True)


def test_the_reference_inherits_rank(checkpoint):
    from rerank_export import reference

    assert reference.FlagReranker.rank is Reranker.rank
    ref = reference.FlagAutoReranker.from_finetuned(str(checkpoint("xlm_roberta")))
    scores = ref.compute_score([(QUERY, p) for p in PASSAGES])
    assert [x["score"] for x in ref.rank(QUERY, PASSAGES)] == sorted(scores, reverse=True)
