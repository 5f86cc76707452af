"""Guards: every registered family is generated, detected, tested against FlagEmbedding and exported by the tests."""

from __future__ import annotations

import pytest

import test_parity_flagembedding as parity
from conftest import EXPORT_SETTINGS
from rerank_export.demo import SETTINGS as DEMO
from rerank_export.families import REGISTRY, detect_family, get_family
from rerank_runtime.errors import UnknownFamilyError
from rerank_runtime.spec import MODEL_CLASSES


def test_every_kind_has_a_family():
    assert sorted({f.model_class for f in REGISTRY.values()}) == sorted(MODEL_CLASSES)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_family_is_covered_everywhere(name):
    family = REGISTRY[name]
    assert set(family.sizes) == {"tiny", "mid"} and set(family.init_std) == {"tiny", "mid"}
    assert name in EXPORT_SETTINGS and name in DEMO and name in parity.KIND
    assert any(f == name for f, _, _ in parity.SCENARIOS), f"{name} has no FlagEmbedding parity scenario"
    assert name in parity.IDS, f"{name} has no token-id parity case"
    for size in ("tiny", "mid"):
        assert detect_family(family.sizes[size]) is family


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
