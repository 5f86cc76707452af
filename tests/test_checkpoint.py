"""Reading checkpoints: converting a slow tokenizer (never with remote code; cached by content, not by name)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank_export.checkpoint import tokenizer_file
from rerank_runtime.errors import ArtifactError


@pytest.fixture
def conversions(tmp_path, monkeypatch):
    """A stand-in for transformers' slow-tokenizer conversion: records its keyword arguments, and saves a file that
    says which slow vocabulary it was converted from."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    calls: list[dict] = []

    class Converted:
        def __init__(self, directory: str) -> None:
            self.source = (Path(directory) / "spiece.model").read_text()

        @property
        def backend_tokenizer(self):
            return self

        def save(self, path: str) -> None:
            Path(path).write_text(json.dumps({"converted_from": self.source}))

    def from_pretrained(directory, **kwargs):
        calls.append(kwargs)
        return Converted(directory)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    return calls


def slow_checkpoint(root: Path, vocabulary: str) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "gemma"}')
    (root / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}')
    (root / "spiece.model").write_text(vocabulary)
    (root / "model.safetensors").write_bytes(b"weights are not part of the key")
    return root


def test_conversion_never_allows_remote_code(conversions, tmp_path):
    tokenizer_file(slow_checkpoint(tmp_path / "ckpt", "A"))
    assert conversions and all(call.get("trust_remote_code") is False for call in conversions)


def test_the_converted_tokenizer_cache_is_keyed_by_content_not_by_name(conversions, tmp_path):
    a = tokenizer_file(slow_checkpoint(tmp_path / "runA" / "checkpoint-500", "vocabulary A"))
    b = tokenizer_file(slow_checkpoint(tmp_path / "runB" / "checkpoint-500", "vocabulary B"))
    assert a != b
    assert json.loads(a.read_text()) == {"converted_from": "vocabulary A"}
    assert json.loads(b.read_text()) == {"converted_from": "vocabulary B"}
    same = slow_checkpoint(tmp_path / "runC" / "other-name", "vocabulary A")
    (same / "model.safetensors").write_bytes(b"other weights, same tokenizer")
    assert tokenizer_file(same) == a and len(conversions) == 2  # reused, not converted again


def test_a_tokenizer_that_cannot_be_converted_is_an_artifact_error(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))

    def needs_remote_code(directory, **kwargs):
        raise ValueError("The repository contains custom code which must be executed to correctly load the model")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", needs_remote_code)
    ckpt = slow_checkpoint(tmp_path / "ckpt", "A")
    with pytest.raises(ArtifactError, match=r"has no tokenizer.json .*custom code"):
        tokenizer_file(ckpt)
