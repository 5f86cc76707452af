"""Tokenizer files for the tiny test checkpoints, trained locally on `corpus()` with the `tokenizers` library.

Three styles, each laid out like the tokenizer.json of the real checkpoints it stands in for:

- "xlm-roberta" (bge-reranker-base/large/v2-m3): Unigram, NFKC normalizer that maps tab/newline to a space,
  Metaspace pre-tokenizer, specials <s>=0 <pad>=1 </s>=2 <unk>=3 and <mask> last, the XLM-R pair template.
  Unknown characters become <unk>.
- "gemma" (bge-reranker-v2-gemma, the gemma2 lightweight): BPE with byte fallback, " " -> "▁" and no prefix
  space, specials <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, then the 256 byte tokens, left padding.
- "llama" (bge-reranker-v2-minicpm-layerwise): the legacy Llama layout, Prepend("▁") + Replace(" ", "▁") and BPE
  with byte fallback, specials <unk>=0 <s>=1 </s>=2, then the byte tokens; pad = <unk>. No "\n" piece, so "\n"
  alone is ['▁', '<0x0A>'] as with the real MiniCPM tokenizer.

Each build writes tokenizer.json, tokenizer_config.json and special_tokens_map.json, byte-identical on every run.
transformers 4.47.1 loads them as XLMRobertaTokenizerFast / GemmaTokenizerFast / LlamaTokenizerFast and keeps
the backend exactly as written: tokenizer_config.json mirrors the added tokens and the post-processor equals the one
that the Gemma/Llama fast classes rebuild on load, and the Llama config sets `legacy: true` without
`add_prefix_space` (which would force a conversion from a sentencepiece model that does not exist).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from rerank_runtime.errors import ArtifactError, ExportError, UnknownFamilyError

from .corpus import corpus

SPACE = "▁"
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
UNIGRAM_EM_ROUNDS = 2
MIN_VOCAB_SIZE = 512


@dataclass(frozen=True)
class _Style:
    specials: tuple[str, ...]  # at ids 0..n-1, in this order
    roles: dict[str, str]  # special_tokens_map role -> token
    tokenizer_class: str
    vocab_size: int
    padding_side: str
    model_max_length: int
    extra_config: dict[str, Any]


STYLES: dict[str, _Style] = {
    "xlm-roberta": _Style(
        specials=("<s>", "<pad>", "</s>", "<unk>"),
        roles={"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
               "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"},
        tokenizer_class="XLMRobertaTokenizer", vocab_size=2000, padding_side="right", model_max_length=514,
        extra_config={},
    ),
    "gemma": _Style(
        specials=("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"),
        roles={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        tokenizer_class="GemmaTokenizer", vocab_size=2048, padding_side="left", model_max_length=8192,
        extra_config={"add_bos_token": True, "add_eos_token": False, "spaces_between_special_tokens": False},
    ),
    "llama": _Style(
        specials=("<unk>", "<s>", "</s>"),
        roles={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"},
        tokenizer_class="LlamaTokenizer", vocab_size=2048, padding_side="right", model_max_length=8192,
        extra_config={"add_bos_token": True, "add_eos_token": False, "legacy": True},
    ),
}


def write_tokenizer(
    style: str,
    out_dir: str | Path,
    *,
    vocab_size: int | None = None,
    padding_side: str | None = None,
    model_max_length: int | None = None,
) -> None:
    """Train a tokenizer of `style` on `corpus()` and write its three files into `out_dir`.

    vocab_size: the largest size, specials included (default 2000 for xlm-roberta, 2048 otherwise). The trainers
      stop early when the corpus runs out of merges (today: xlm-roberta 1216, gemma 2048, llama 2025), so read
      the real size from tokenizer.json (`Tokenizer.get_vocab_size(with_added_tokens=True)`).
    padding_side / model_max_length: default to the style's (xlm-roberta right/514, gemma left/8192,
      llama right/8192).
    """
    spec = _style(style)
    side = spec.padding_side if padding_side is None else padding_side
    if side not in ("left", "right"):
        raise ExportError(f"padding_side must be 'left' or 'right', got {side!r}")
    size = spec.vocab_size if vocab_size is None else vocab_size
    if size < MIN_VOCAB_SIZE:
        raise ExportError(
            f"vocab_size {size} is too small for style {style!r} (specials + 256 byte tokens + merges); "
            f"use at least {MIN_VOCAB_SIZE}"
        )
    tokenizer = _BUILDERS[style](size)
    _check(tokenizer, style)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_json = json.loads(tokenizer.to_str())
    max_len = spec.model_max_length if model_max_length is None else model_max_length
    config = _tokenizer_config(spec, tokenizer_json, side, max_len)
    _write_json(out / "tokenizer.json", tokenizer_json)
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", _special_tokens_map(spec, tokenizer_json))


def _style(style: str) -> _Style:
    if style not in STYLES:
        raise UnknownFamilyError(f"unknown tokenizer style {style!r}; known styles: {sorted(STYLES)}")
    return STYLES[style]


def _build_xlm_roberta(vocab_size: int) -> Tokenizer:
    spec = STYLES["xlm-roberta"]
    # Like sentencepiece's nmt_nfkc: NFKC, tab/newline/CR become spaces; runs of spaces collapse (as in the XLM-R
    # converter's Replace(" {2,}", "▁")). Unlike it, no Strip: "\n" alone must still give one id ("▁").
    normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Replace(Regex("[\t\n\r]"), " "), normalizers.Replace(Regex(" {2,}"), SPACE),
    ])
    pre_tokenizer = pre_tokenizers.Metaspace(SPACE, prepend_scheme="always")
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - 1, special_tokens=list(spec.specials), unk_token="<unk>",
        max_piece_length=16, show_progress=False,
    )
    lines = corpus()
    tok.train_from_iterator(lines, trainer)
    trained = json.loads(tok.to_str())["model"]["vocab"]
    n = len(spec.specials)
    if [p for p, _ in trained[:n]] != list(spec.specials):
        raise ArtifactError(f"the Unigram trainer put {trained[:n]} first, expected the specials {spec.specials}")
    words: Counter[str] = Counter()
    for line in lines:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    pieces = _rescore([p for p, _ in trained[n:]], words)
    vocab = [(p, 0.0) for p in spec.specials] + pieces + [("<mask>", 0.0)]
    tok.model = models.Unigram(vocab, unk_id=3, byte_fallback=False)
    tok.add_special_tokens([_added(p) for p in spec.specials])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.decoder = decoders.Metaspace(SPACE, prepend_scheme="always")
    return tok


def _rescore(pieces: list[str], words: Counter[str]) -> list[tuple[str, float]]:
    """Deterministic scores for the trained Unigram pieces, sorted by (-score, piece).

    The trainer's piece set is stable, but its scores jitter in the last bits between runs (hash-map summation
    order) and the characters it adds at the end get penalty scores in hash-set order, so the ids would change
    from run to run. Instead: start from substring counts over the distinct words and run a few rounds of hard
    EM (Viterbi counts over `words`, the normalized pre-tokenized corpus). Every step is integer counting or the
    log of an integer ratio, so the result is the same on every run.
    """
    distinct = sorted(words)
    text = "\x00".join(distinct)
    counts = {p: text.count(p) for p in pieces}
    for _ in range(UNIGRAM_EM_ROUNDS):
        viterbi = Tokenizer(models.Unigram([("<unk>", 0.0), *_log_probs(counts)], unk_id=0))
        counts = dict.fromkeys(pieces, 0)
        for word, enc in zip(distinct, viterbi.encode_batch(distinct, add_special_tokens=False)):
            for piece in enc.tokens:
                if piece in counts:  # every corpus character is a piece, so <unk> does not occur
                    counts[piece] += words[word]
    return _log_probs(counts)


def _log_probs(counts: dict[str, int]) -> list[tuple[str, float]]:
    """log(count / total), unused pieces at log(0.5 / total), rounded, highest first, ties by piece."""
    total = sum(counts.values())
    scored = [(p, round(math.log(max(c, 0.5) / total), 6)) for p, c in counts.items()]
    return sorted(scored, key=lambda x: (-x[1], x[0]))


def _build_gemma(vocab_size: int) -> Tokenizer:
    training = pre_tokenizers.Metaspace(SPACE, prepend_scheme="never")
    tok = _train_bpe("gemma", vocab_size, corpus(), training)
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = _bos_template("<bos>", 2)
    return tok


def _build_llama(vocab_size: int) -> Tokenizer:
    # SentencePiece's Llama vocab has no "\n" piece: train on the lines, so "\n" always falls back to <0x0A>.
    lines = [line for text in corpus() for line in text.split("\n") if line]
    training = pre_tokenizers.Metaspace(SPACE, prepend_scheme="always")
    tok = _train_bpe("llama", vocab_size, lines, training)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([
        decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    tok.post_processor = _bos_template("<s>", 1)
    return tok


def _train_bpe(style: str, vocab_size: int, lines: list[str], words: pre_tokenizers.PreTokenizer) -> Tokenizer:
    """BPE trained on SentencePiece-like words (split before each "▁", digits alone), then laid out as
    specials, the 256 byte tokens, the trained alphabet and merges. Merges never cross a "▁", so the final
    tokenizer can run BPE on the whole normalized text, as the real Gemma and Llama tokenizer.json files do."""
    spec = STYLES[style]
    fixed = list(spec.specials) + list(BYTE_TOKENS)
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([words, pre_tokenizers.Digits(individual_digits=True)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(fixed), show_progress=False)
    trainer_tok.train_from_iterator(lines, trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    learned = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(fixed)}
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.add_special_tokens([_added(p) for p in spec.specials])
    return tok


def _added(content: str) -> AddedToken:
    return AddedToken(content, lstrip=False, rstrip=False, normalized=False, special=True)


def _bos_template(bos: str, bos_id: int) -> processors.TemplateProcessing:
    """What GemmaTokenizerFast / LlamaTokenizerFast.update_post_processor() write with add_bos_token=True."""
    return processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


_BUILDERS: dict[str, Callable[[int], Tokenizer]] = {
    "xlm-roberta": _build_xlm_roberta,
    "gemma": _build_gemma,
    "llama": _build_llama,
}


def _check(tok: Tokenizer, style: str) -> None:
    """The properties FlagEmbedding relies on; a build that lacks one is a bug here, not a usable tokenizer."""
    yes = tok.encode("Yes", add_special_tokens=False).tokens
    newline = tok.encode("\n", add_special_tokens=False).ids
    if len(yes) != 1 or not newline:
        raise ArtifactError(
            f"the {style} tokenizer must encode 'Yes' as one token and '\\n' as at least one id; "
            f"got {yes} and {newline}; change corpus() so that 'Yes' is frequent"
        )


def _added_tokens_decoder(tokenizer_json: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {str(t["id"]): {k: t[k] for k in keys} for t in tokenizer_json["added_tokens"]}


def _tokenizer_config(spec: _Style, tokenizer_json: dict[str, Any], side: str, max_len: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "added_tokens_decoder": _added_tokens_decoder(tokenizer_json),
        **spec.roles,
        **spec.extra_config,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "padding_side": side,
        "tokenizer_class": spec.tokenizer_class,
    }
    return dict(sorted(config.items()))


def _special_tokens_map(spec: _Style, tokenizer_json: dict[str, Any]) -> dict[str, Any]:
    by_content = {t["content"]: t for t in tokenizer_json["added_tokens"]}
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word")
    return {role: {k: by_content[tok][k] for k in keys} for role, tok in sorted(spec.roles.items())}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
