"""A character-level `tokenizers` tokenizer for host-logic tests: every expected id list is spelled out from text."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :.,?!\n'"
VOCAB = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{c: 4 + i for i, c in enumerate(CHARS)}}
NL = [VOCAB["\n"]]


def t(text: str) -> list[int]:
    return [VOCAB[c] for c in text]


def char_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return tok
