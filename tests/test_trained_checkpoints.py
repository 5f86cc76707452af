"""The trained test checkpoints: they rank held-out pairs of the synthetic task on every exit, keep the real
checkpoints' names and config, are trained on exactly what compute_score feeds, are deterministic, and are retrained
when their recipe changes."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from safetensors import safe_open

from conftest import FAMILIES
from rerank_export.probe import PROBE_PAIRS
from rerank_export.reference import load_reference
from rerank_export.testing import factory
from rerank_export.testing.measure import MIN_AUC, MIN_STD
from rerank_export.testing.pairs import QUERY_WORDS, relevance_pairs
from rerank_export.testing.recipes import RECIPES
from rerank_export.testing.training import _Feeder, auc, evaluate, evaluation_calls


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_tiny_checkpoints_rank_held_out_pairs_on_every_exit(checkpoint, family):
    result = evaluate(checkpoint(family), n=300)
    spec = load_reference(checkpoint(family), model_class=None).spec
    exits = {name for name in result if not name.endswith("compressed")}
    if spec.num_layers is not None:  # every head at its own layer is among the measured exits
        assert {f"score_l{layer}_h{layer - spec.start_layer}" for layer in range(spec.start_layer,
                                                                                 spec.num_layers + 1)} <= exits
    weak = {name: m for name, m in result.items() if m["std"] < MIN_STD or m["auc"] < MIN_AUC}
    assert not weak, f"{family}: exits below std {MIN_STD} / AUC {MIN_AUC}: {weak}"


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_checkpoints_keep_names_shapes_and_config(checkpoint, family):
    random, trained = checkpoint(family, trained=False), checkpoint(family)
    assert json.loads((trained / "config.json").read_text()) == json.loads((random / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (trained / name).read_bytes() == (random / name).read_bytes(), name
    shapes = []
    for ckpt in (random, trained):
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            shapes.append({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    assert shapes[0] == shapes[1]
    record = json.loads((trained / "training.json").read_text())
    assert record["recipe"] == RECIPES[family].training["tiny"].to_dict() and record["family"] == family
    assert record["run"]["last_loss"] < record["run"]["first_loss"]


def test_training_targets_follow_the_rows_compute_score_builds(checkpoint):
    """The host sorts pairs by length: each row's target must be its own pair's grade."""
    loaded = load_reference(checkpoint("gemma2_lightweight", trained=False), model_class=None)
    feed = _Feeder(loaded, "tiny")
    pairs, _ = relevance_pairs(12, seed=5)
    index = [float(i) for i in range(len(pairs))]
    request, inputs, target = feed(pairs, index, {"cutoff_layers": [3, 5], "compress_ratio": 2, "compress_layers": [2]})
    assert request.exits == ((3, 0), (5, 1)) and request.compress_layers == (2,)
    assert len(inputs) == 4  # ids, mask and one compression plan (index, weight)
    ids, mask = inputs[0].numpy(), inputs[1].numpy()
    assert sorted(target.tolist()) == index and mask.sum(axis=1).tolist() == sorted(mask.sum(axis=1), reverse=True)
    for row, pair in zip(range(len(pairs)), target.long().tolist()):
        text = loaded.tokenizer.decode(ids[row][mask[row] > 0].tolist())
        assert pairs[pair][0] in text and pairs[pair][1].split()[-1] in text, (text, pairs[pair])


def test_every_exit_and_compression_is_judged():
    spec = load_reference(factory.builtin_checkpoint("tiny-gemma2-lightweight"), model_class=None).spec
    calls = evaluation_calls(spec)
    assert {"cutoff_layers": [2, 3, 4, 5, 6]} in calls and {"cutoff_layers": [2]} in calls
    assert any(call.get("compress_ratio") == 2 for call in calls)


def test_relevance_pairs_hold_what_their_grade_says():
    pairs, grades = relevance_pairs(300, seed=3, max_sentences=3)
    assert pairs == relevance_pairs(300, seed=3, max_sentences=3)[0]
    assert {round(g, 2) for g in grades} == {0.0, 0.33, 0.5, 0.67, 1.0}
    assert grades.count(1.0) == grades.count(0.0) == 100
    for (query, passage), grade in zip(pairs, grades):
        named = [w for w in QUERY_WORDS if w in re.findall(r"[A-Za-z]+", query)]
        held = [w for w in named if w in re.findall(r"[A-Za-z]+", passage)]
        assert 2 <= len(named) <= 3 and len(held) / len(named) == grade, (query, passage, grade)
        for word in set(named) - set(held):
            assert word.lower() not in passage.lower()


def test_probe_set_holds_the_synthetic_task():
    pairs, grades = relevance_pairs(12, seed=2027, max_sentences=1)
    assert PROBE_PAIRS[-12:] == pairs and len(set(grades)) >= 3


def test_auc_counts_ties_as_half():
    assert auc(np.array([3.0, 1.0, 2.0]), np.array([True, False, False])) == 1.0
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert auc(np.array([0.0, 1.0]), np.array([True, False])) == 0.0


def test_training_is_deterministic(checkpoint, tmp_path):
    fresh = factory.write_trained_checkpoint("xlm_roberta", "tiny", tmp_path / "again")
    cached = checkpoint("xlm_roberta")
    assert (fresh / "model.safetensors").read_bytes() == (cached / "model.safetensors").read_bytes()


def test_a_changed_recipe_or_training_code_trains_afresh(monkeypatch):
    key = factory.training_key("gemma", "tiny")
    recipe = RECIPES["gemma"]
    changed = replace(recipe, training={**recipe.training, "tiny": replace(recipe.training["tiny"], steps=1)})
    monkeypatch.setitem(RECIPES, "gemma", changed)
    assert factory.training_key("gemma", "tiny") != key
    monkeypatch.setitem(RECIPES, "gemma", recipe)
    assert factory.training_key("gemma", "tiny") == key
    monkeypatch.setattr(factory, "TRAINING_VERSION", factory.TRAINING_VERSION + "x")
    assert factory.training_key("gemma", "tiny") != key
