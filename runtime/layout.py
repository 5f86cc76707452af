"""Token ids for query/passage pairs, exactly as FlagEmbedding 1.4.2 feeds its models
(docs/flagembedding-behaviour.md: Lengths, Encoder token layout, Decoder token layout).

Every segment is tokenised on its own with add_special_tokens=False and truncated by slicing, which is what the HF
fast tokenizer's truncation=True does for one sequence; the pair is then cut with HF's `only_second` rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from .errors import InvalidTextError
from .kinds import Kind, bos_prefix
from .spec import ModelSpec


def check_text(what: str, text: str, index: int | None = None) -> None:
    """InvalidTextError unless `text` is valid Unicode (no lone surrogate), which the tokenizer needs."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTextError(
            f"{what} holds a lone surrogate {text[exc.start]!r} at character {exc.start}, which is not valid Unicode "
            "text and cannot be tokenized; decode the source with errors='replace', or remove the character",
            index,
        ) from None


@dataclass(frozen=True)
class Instructions:
    """Query/passage instructions, applied as text before tokenisation (flagembedding-behaviour.md, Instructions)."""

    query: str | None = None
    query_format: str = "{}{}"
    passage: str | None = None
    passage_format: str = "{}{}"

    def __post_init__(self) -> None:
        for name in ("query", "passage"):
            for suffix in ("", "_format"):
                value = getattr(self, name + suffix)
                if isinstance(value, str):
                    check_text(f"the {name} instruction{suffix.replace('_', ' ')}", value)

    def apply(self, queries: Sequence[str], passages: Sequence[str]) -> tuple[list[str], list[str]]:
        return _apply(self.query, self.query_format, queries), _apply(self.passage, self.passage_format, passages)


def _apply(instruction: str | None, fmt: str, texts: Sequence[str]) -> list[str]:
    if instruction is None:
        return list(texts)
    fmt = fmt.replace("\\n", "\n")  # FlagEmbedding turns a literal backslash-n in the format into a newline
    return [fmt.format(instruction, text) for text in texts]


@dataclass(frozen=True)
class LayoutSettings:
    """Per-call length settings, already resolved."""

    max_length: int
    query_max_length: int
    prompt: str | None = None  # decoders only; resolved (call, else instance, else the kind's default)


def resolve_query_max_length(call: int | None, instance: int | None, max_length: int) -> int:
    """Call value, else instance value, else max_length * 3 // 4 (flagembedding-behaviour.md, Lengths)."""
    if call is not None:
        return call
    if instance is not None:
        return instance
    return max_length * 3 // 4


@dataclass
class EncodedChunk:
    """The ids of a run of pairs, in input order.

    keys: FlagEmbedding's sort key per pair (encoder: full length; decoders: len(Q) + len(P)).
    query_lengths / prompt_lengths: the lightweight kind's spans (flagembedding-behaviour.md, Lightweight exits); None
    for other kinds.
    """

    ids: list[list[int]]
    keys: np.ndarray
    query_lengths: np.ndarray | None = None
    prompt_lengths: np.ndarray | None = None


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A tokenizer with truncation and padding off, as HF's fast tokenizer configures it on every call.

    tokenizer.json may enable either; we never mutate the caller's object (it may be shared across threads).
    """
    if tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


SEPARATOR = "\n"  # the decoder kinds put it between query and passage and before the prompt


def text_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids of `text` on its own, without special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def pair_template(tokenizer: Tokenizer) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The special tokens the tokenizer's post-processor puts before, between and after a pair (HF's own template:
    XLM-R gives <s> | </s></s> | </s>), read off a pair encoding by its sequence ids."""
    enc = tokenizer.encode("a", "b", add_special_tokens=True)
    parts: list[list[int]] = [[], [], []]
    part = 0
    for token, seq in zip(enc.ids, enc.sequence_ids):
        if seq is None:
            parts[part].append(token)
        else:
            part = seq + 1
    return tuple(parts[0]), tuple(parts[1]), tuple(parts[2])


def cut_second(first_len: int, second: list[int], limit: int) -> list[int]:
    """HF `truncation='only_second'`: drop tokens from the right of `second` so the pair fits `limit`.

    If `second` is not longer than the excess (note the strict `>`), HF logs an error and truncates nothing.
    """
    remove = first_len + len(second) - limit
    if remove > 0 and len(second) > remove:
        return second[: len(second) - remove]
    return second


def _token_ids(tokenizer: Tokenizer, texts: Sequence[str], limit: int) -> list[list[int]]:
    """Each text on its own, no special tokens, cut to `limit` (HF fast truncation=True for one sequence)."""
    # encode_batch_fast (tokenizers >= 0.20) gives the same ids as encode_batch without computing offsets
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [e.ids[:limit] for e in encode(list(texts), add_special_tokens=False)]


class PairEncoder:
    """Builds FlagEmbedding's token layout for one call. Immutable after construction (safe to share)."""

    def __init__(self, spec: ModelSpec, kind: Kind, tokenizer: Tokenizer, settings: LayoutSettings) -> None:
        self.spec = spec
        self.kind = kind
        self.tokenizer = tokenizer
        self.settings = settings
        self.bos = bos_prefix(kind, spec)
        if kind.prompted:
            self.sep = text_ids(tokenizer, SEPARATOR)
            self.prompt = text_ids(tokenizer, settings.prompt or "")
        else:
            self.sep: list[int] = []
            self.prompt: list[int] = []

    def encode(self, queries: Sequence[str], passages: Sequence[str]) -> EncodedChunk:
        """queries / passages: the instruction-applied texts."""
        q_ids = _token_ids(self.tokenizer, queries, self.settings.query_max_length)
        p_ids = _token_ids(self.tokenizer, passages, self.settings.max_length)
        if self.kind.prompted:
            return self._decoder(q_ids, p_ids)
        return self._encoder(q_ids, p_ids)

    def _encoder(self, q_ids: list[list[int]], p_ids: list[list[int]]) -> EncodedChunk:
        spec, limit = self.spec, self.settings.max_length
        prefix, middle, suffix = list(spec.pair_prefix), list(spec.pair_middle), list(spec.pair_suffix)
        n_special = len(prefix) + len(middle) + len(suffix)
        ids = []
        for q, p in zip(q_ids, p_ids):
            p = cut_second(len(q) + n_special, p, limit)
            ids.append(prefix + q + middle + p + suffix)
        keys = np.array([len(row) for row in ids], dtype=np.int64)
        return EncodedChunk(ids=ids, keys=keys)

    def _decoder(self, q_ids: list[list[int]], p_ids: list[list[int]]) -> EncodedChunk:
        sep, prompt, bos = self.sep, self.prompt, self.bos
        limit = self.settings.max_length + len(sep) + len(prompt)
        tail = sep + prompt
        ids = []
        for q, p in zip(q_ids, p_ids):
            first = bos + q
            second = cut_second(len(first), sep + p, limit)
            ids.append(first + second + tail)
        keys = np.array([len(q) + len(p) for q, p in zip(q_ids, p_ids)], dtype=np.int64)
        chunk = EncodedChunk(ids=ids, keys=keys)
        if self.kind.takes_compression:  # the spans its compression plans keep
            chunk.query_lengths = np.array([len(bos) + len(q) + len(sep) for q in q_ids], dtype=np.int64)
            chunk.prompt_lengths = np.full(len(q_ids), len(sep) + len(prompt), dtype=np.int64)
        return chunk
