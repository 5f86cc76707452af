"""Token layouts for every kind on hand-computed cases (docs/flagembedding-behaviour.md: Encoder and Decoder token
layout).

The tokenizer is character-level, so every expected id list below is spelled out from the texts.
"""

from __future__ import annotations

import numpy as np
import pytest
from char_tokenizer import NL, char_tokenizer, t

from rerank_runtime.errors import ArtifactError
from rerank_runtime.kinds import KINDS, LIGHTWEIGHT_PROMPT
from rerank_runtime.layout import (
    EncodedChunk,
    Instructions,
    LayoutSettings,
    PairEncoder,
    plain_tokenizer,
    resolve_query_max_length,
)
from rerank_runtime.spec import DECODER, ENCODER, LAYERWISE, LIGHTWEIGHT, ModelSpec

BOS, PAD, EOS = 0, 1, 2


ENC_SPEC = ModelSpec(ENCODER, pad_token_id=PAD, pair_prefix=(BOS,), pair_middle=(EOS, EOS), pair_suffix=(EOS,))


def dec_spec(kind: str, bos: int | None = BOS, pad: int = PAD) -> ModelSpec:
    return ModelSpec(kind, pad_token_id=pad, padding_side="left", bos_token_id=bos, num_layers=6, start_layer=2)


def encode(spec: ModelSpec, pairs: list[tuple[str, str]], max_length: int, qml: int | None = None,
           prompt: str | None = None, instructions: Instructions | None = None) -> EncodedChunk:
    kind = KINDS[spec.model_class]
    if instructions is None:
        instructions = Instructions(kind.query_instruction, "{}{}", kind.passage_instruction, "{}{}")
    settings = LayoutSettings(max_length, resolve_query_max_length(qml, None, max_length), prompt)
    queries, passages = instructions.apply([q for q, _ in pairs], [p for _, p in pairs])
    return PairEncoder(spec, kind, char_tokenizer(), settings).encode(queries, passages)


# ---------------------------------------------------------------- encoder


def test_encoder_pair_template_without_truncation() -> None:
    out = encode(ENC_SPEC, [("abc", "de")], max_length=20)
    assert out.ids == [[BOS] + t("abc") + [EOS, EOS] + t("de") + [EOS]]
    assert out.keys.tolist() == [9] and out.keys.dtype == np.int64


def test_encoder_cuts_only_the_passage_from_the_right() -> None:
    out = encode(ENC_SPEC, [("abc", "defghijk")], max_length=10)  # 3 + 8 + 4 = 15 > 10: drop 5 passage tokens
    assert out.ids == [[BOS] + t("abc") + [EOS, EOS] + t("def") + [EOS]]
    assert out.keys.tolist() == [10]


def test_encoder_query_cap_and_untruncatable_pair() -> None:
    # max_length 12 -> query cap 9; 9 + 3 + 4 = 16 > 12, remove 4 >= len(P) = 3: HF truncates nothing
    out = encode(ENC_SPEC, [("abcdefghijklmnop", "xyz")], max_length=12)
    assert out.ids == [[BOS] + t("abcdefghi") + [EOS, EOS] + t("xyz") + [EOS]]
    assert out.keys.tolist() == [16]


def test_encoder_strict_greater_rule() -> None:
    # len(Q) + 4 = 9 of 10: the passage keeps 1 token
    assert encode(ENC_SPEC, [("abcde", "xy")], 10, qml=6).ids == [[BOS] + t("abcde") + [EOS, EOS] + t("x") + [EOS]]
    # len(Q) + 4 = 10: remove == len(P) -> `len(P) > remove` is false -> nothing is cut, 12 tokens are fed
    assert encode(ENC_SPEC, [("abcdef", "xy")], 10, qml=6).ids == [[BOS] + t("abcdef") + [EOS, EOS] + t("xy") + [EOS]]


def test_encoder_empty_passage_keeps_separators() -> None:
    assert encode(ENC_SPEC, [("ab", "")], 16).ids == [[BOS] + t("ab") + [EOS, EOS, EOS]]


def test_encoder_instructions_count_against_the_cap() -> None:
    inst = Instructions("Q:", "{}\\n{}", "P ", "{}{}")  # a literal backslash-n in the format becomes a newline
    # cap 6 keeps "Q:\nabc"; P = "P xyzwvutsrq" (12): 6 + 12 + 4 = 22 > 16 -> the passage loses 6
    out = encode(ENC_SPEC, [("abcdef", "xyzwvutsrq")], 16, qml=6, instructions=inst)
    assert out.ids == [[BOS] + t("Q:\nabc") + [EOS, EOS] + t("P xyzw") + [EOS]]


# ---------------------------------------------------------------- decoders


def test_decoder_layout_and_budget() -> None:
    # max_length 8, prompt "ok": L_enc = 8 + 1 + 2 = 11. Q = "A: hi" (cap 6), P = "B: abcdefgh"[:8] = "B: abcde"
    # first = BOS + Q = 6, second = "\n" + P = 9, 15 > 11: remove 4 -> second = "\nB: a"
    out = encode(dec_spec(DECODER), [("hi", "abcdefgh")], max_length=8, prompt="ok")
    assert out.ids == [[BOS] + t("A: hi") + t("\nB: a") + NL + t("ok")]
    assert out.keys.tolist() == [5 + 8]  # len(Q) + len(P), each cut on its own
    assert out.query_lengths is None and out.prompt_lengths is None


def test_decoder_query_cap_default_is_three_quarters() -> None:
    # max_length 16: cap 12 keeps "A: abcdefghi"; 13 + 5 tokens fit L_enc = 16 + 1 + 2
    out = encode(dec_spec(DECODER), [("abcdefghijklmn", "x")], max_length=16, prompt="ok")
    assert out.ids == [[BOS] + t("A: abcdefghi") + t("\nB: x") + NL + t("ok")]


def test_decoder_untruncatable_pair_is_fed_whole() -> None:
    # max_length 4, prompt "": L_enc = 5; first = 12 tokens; remove 12 >= len(second) = 5 -> nothing cut
    out = encode(dec_spec(DECODER), [("abcdefgh", "xyz")], max_length=4, qml=20, prompt="")
    assert out.ids == [[BOS] + t("A: abcdefgh") + t("\nB: x") + NL]


def test_decoder_empty_passage_without_instruction() -> None:
    inst = Instructions("A: ", "{}{}", None, "{}{}")
    out = encode(dec_spec(DECODER), [("q", "")], max_length=8, prompt="ok", instructions=inst)
    assert out.ids == [[BOS] + t("A: q") + NL + NL + t("ok")]
    assert out.keys.tolist() == [4]


@pytest.mark.parametrize(
    ("kind", "bos", "pad", "prefix"),
    [
        (DECODER, BOS, PAD, [BOS]),
        (DECODER, PAD, PAD, []),  # the base class drops BOS when bos == pad
        (DECODER, None, PAD, []),
        (LAYERWISE, PAD, PAD, [PAD]),  # layerwise and lightweight always prepend it
        (LIGHTWEIGHT, PAD, PAD, [PAD]),
    ],
)
def test_bos_rule(kind: str, bos: int | None, pad: int, prefix: list[int]) -> None:
    out = encode(dec_spec(kind, bos, pad), [("x", "y")], max_length=16, prompt="z")
    assert out.ids == [prefix + t("A: x") + t("\nB: y") + NL + t("z")]


@pytest.mark.parametrize("kind", [LAYERWISE, LIGHTWEIGHT])
def test_missing_bos_is_an_error_for_always_bos_kinds(kind: str) -> None:
    with pytest.raises(ArtifactError, match="BOS"):
        encode(dec_spec(kind, None), [("x", "y")], max_length=16, prompt="z")


def test_lightweight_spans() -> None:
    out = encode(dec_spec(LIGHTWEIGHT), [("hi", "abcdefgh"), ("", "")], max_length=8, prompt="ok")
    # query span: BOS + "A: hi" + first "\n"; prompt span: second "\n" + "ok"
    assert out.query_lengths is not None and out.prompt_lengths is not None
    assert out.query_lengths.tolist() == [1 + 5 + 1, 1 + 3 + 1]
    assert out.prompt_lengths.tolist() == [3, 3]
    passage = [len(ids) - q - p for ids, q, p in zip(out.ids, out.query_lengths, out.prompt_lengths)]
    assert passage == [len(t("B: a")), len(t("B: "))]


def test_lightweight_default_prompt_tokenises() -> None:
    out = encode(dec_spec(LIGHTWEIGHT), [("q", "p")], max_length=64, prompt=LIGHTWEIGHT_PROMPT)
    assert out.ids[0][-len(LIGHTWEIGHT_PROMPT) - 1 :] == NL + t(LIGHTWEIGHT_PROMPT)


# ---------------------------------------------------------------- helpers


def test_query_max_length_resolution() -> None:
    assert resolve_query_max_length(5, 7, 512) == 5
    assert resolve_query_max_length(None, 7, 512) == 7
    assert resolve_query_max_length(None, None, 512) == 384
    assert resolve_query_max_length(None, None, 10) == 7


def test_tokenizer_json_truncation_and_padding_are_ignored() -> None:
    tok = char_tokenizer()
    tok.enable_truncation(3)
    tok.enable_padding(pad_id=PAD, length=40)
    plain = plain_tokenizer(tok)
    assert plain.encode("abcdef", add_special_tokens=False).ids == t("abcdef")
    assert tok.truncation is not None and tok.padding is not None  # the caller's object is left alone
    untouched = char_tokenizer()
    assert plain_tokenizer(untouched) is untouched


def test_batch_of_mixed_pairs_keeps_input_order() -> None:
    pairs = [("a", "bcd"), ("abcdef", ""), ("", "x")]
    out = encode(ENC_SPEC, pairs, max_length=64)
    assert out.ids == [[BOS] + t(q) + [EOS, EOS] + t(p) + [EOS] for q, p in pairs]
    assert out.keys.tolist() == [8, 10, 5]
