"""Guards: every registered family has a testing recipe, and through it is generated, detected, tested against
FlagEmbedding, exported by the tests and shown by the demo."""

from __future__ import annotations

import pytest

from rerank_export.families import REGISTRY, detect_family, get_family
from rerank_export.testing.factory import BUILTIN, SIZES, builtin_name
from rerank_export.testing.recipes import RECIPES, get_recipe
from rerank_runtime.errors import UnknownFamilyError
from rerank_runtime.spec import MODEL_CLASSES


def test_every_kind_has_a_family():
    assert sorted({f.model_class for f in REGISTRY.values()}) == sorted(MODEL_CLASSES)


def test_every_family_has_a_recipe_and_every_recipe_a_family():
    assert sorted(RECIPES) == sorted(REGISTRY)
    with pytest.raises(UnknownFamilyError, match="no testing recipe"):
        get_recipe("bert")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_recipe_covers_every_size_and_test(name):
    recipe = RECIPES[name]
    assert set(recipe.sizes) == set(recipe.init_std) == set(recipe.training) == set(SIZES)
    assert recipe.oracle, f"{name} has no FlagEmbedding parity scenario"
    assert recipe.runtime, f"{name} has no runtime parity scenario"
    assert recipe.token_id_lengths, f"{name} has no token-id parity case"
    for size in SIZES:
        assert detect_family(recipe.sizes[size]) is REGISTRY[name]
        assert BUILTIN[builtin_name(name, size)] == (name, size, False)
        assert BUILTIN[builtin_name(name, size, trained=True)] == (name, size, True)


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(UnknownFamilyError, match="known families"):
        get_family("bert")
    with pytest.raises(UnknownFamilyError, match="supported"):
        detect_family({"architectures": ["BertForSequenceClassification"]})


def test_checkpoint_generation_is_deterministic(tmp_path):
    from rerank_export.testing.factory import write_checkpoint

    a = write_checkpoint("gemma2_lightweight", "tiny", tmp_path / "a")
    b = write_checkpoint("gemma2_lightweight", "tiny", tmp_path / "b")
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
