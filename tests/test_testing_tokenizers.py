"""The tiny test tokenizers: determinism, the properties FlagEmbedding relies on, and agreement with transformers.

The runtime tokenizes with the `tokenizers` library; FlagEmbedding tokenizes with transformers 4.47.1's
AutoTokenizer. Both must give the same ids from the same files, which the oracle interpreter checks here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from rerank_export.testing.corpus import PROMPT, corpus
from rerank_export.testing.pairs import benchmark_pairs, parity_pairs
from rerank_export.testing.tokenizers import BYTE_TOKENS, STYLES, write_tokenizer
from rerank_runtime.errors import ExportError, UnknownFamilyError

REPO = Path(__file__).resolve().parents[1]
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FAST_CLASS = {"xlm-roberta": "XLMRobertaTokenizerFast", "gemma": "GemmaTokenizerFast", "llama": "LlamaTokenizerFast"}
# Texts whose ids transformers must reproduce: FlagEmbedding's separator and prompt pieces, edge cases, and
# every query and passage of parity_pairs().
PROBES = [
    "Yes", "No", "\n", "A: ", "B: ", PROMPT, "Hello world  twice\n", "Größe 文字 🦄 😀 مرحبا", " leading space",
    "trailing  ", "ﬁ ligature ①", "Q: is it 2024?", "a\tb", "<s> in text </s>", "Yes\nNo", "",
]

ORACLE_SCRIPT = r"""
import json, sys
import transformers
from transformers import AutoTokenizer
job = json.loads(sys.stdin.read())
out = {"version": transformers.__version__}
for style, path in job["dirs"].items():
    tok = AutoTokenizer.from_pretrained(path)
    with open(path + "/tokenizer.json", encoding="utf-8") as f:
        written = json.load(f)
    backend = json.loads(tok.backend_tokenizer.to_str())
    res = {
        "class": type(tok).__name__, "is_fast": tok.is_fast, "padding_side": tok.padding_side,
        "model_max_length": tok.model_max_length,
        "ids": {k: getattr(tok, k + "_token_id") for k in ("pad", "bos", "eos", "unk")},
        "plain": [tok(t, add_special_tokens=False).input_ids for t in job["texts"]],
        "special": [tok(t).input_ids for t in job["texts"]],
        "changed_on_load": sorted(k for k in written if written[k] != backend.get(k)),
        "padded": tok.pad([{"input_ids": [5, 6, 7]}, {"input_ids": [5]}], padding=True, pad_to_multiple_of=8)["input_ids"],
    }
    if hasattr(tok, "prepare_for_model"):
        q, p = tok(job["pair"], add_special_tokens=False).input_ids
        res["pair"] = tok.prepare_for_model(q, p, truncation="only_second", max_length=16, padding=False)["input_ids"]
    out[style] = res
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tokenizers")
    for style in STYLES:
        write_tokenizer(style, root / style)
    return root


@pytest.fixture(scope="module")
def toks(built: Path) -> dict[str, Tokenizer]:
    return {style: Tokenizer.from_file(str(built / style / "tokenizer.json")) for style in STYLES}


def texts() -> list[str]:
    return PROBES + [t for pair in parity_pairs() for t in pair]


def ids(tok: Tokenizer, text: str, special: bool = False) -> list[int]:
    return tok.encode(text, add_special_tokens=special).ids


def run_transformers(python: str, built: Path) -> dict[str, Any]:
    job = {"dirs": {s: str(built / s) for s in STYLES}, "texts": texts(), "pair": ["is it red?", "the red cat " * 20]}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["USE_TORCH"] = "0"  # tokenizers need no torch; importing it would triple the time of this test
    proc = subprocess.run([python, "-c", ORACLE_SCRIPT], input=json.dumps(job), capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_corpus_is_deterministic_and_multilingual() -> None:
    lines = corpus()
    assert lines == corpus() and len(lines) > 3000
    text = "\n".join(lines)
    for sample in ("ü", "é", "ñ", "Д", "天", "の", "ب", "ह", "😀", "7", "\n", "?"):
        assert sample in text, sample
    assert sum(line.startswith("Yes") for line in lines) > 200


def test_build_is_byte_identical_across_processes(built: Path, tmp_path: Path) -> None:
    # Rust hash maps are seeded per process, which is where the Unigram trainer's nondeterminism came from.
    code = ("import sys; from rerank_export.testing.tokenizers import STYLES, write_tokenizer\n"
            "for s in STYLES: write_tokenizer(s, sys.argv[1] + '/' + s)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    for style in STYLES:
        for name in FILES:
            assert (tmp_path / style / name).read_bytes() == (built / style / name).read_bytes(), (style, name)


@pytest.mark.parametrize("style", list(STYLES))
def test_yes_newline_and_any_unicode_encode(toks: dict[str, Tokenizer], style: str) -> None:
    tok = toks[style]
    assert len(ids(tok, "Yes")) == 1 and len(ids(tok, "No")) == 1
    assert ids(tok, "Yes") != ids(tok, "No")
    assert len(ids(tok, "\n")) >= 1
    for text in ("🦄 ∰ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ", "字", "\u200b", "\U0010fffd"):
        assert len(ids(tok, text)) >= 1, text


def test_special_token_layouts(toks: dict[str, Tokenizer]) -> None:
    xlm, gemma, llama = toks["xlm-roberta"], toks["gemma"], toks["llama"]
    assert [xlm.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert xlm.token_to_id("<mask>") == xlm.get_vocab_size() - 1
    assert [gemma.token_to_id(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>")] == [0, 1, 2, 3]
    assert [llama.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    for tok, first in ((gemma, 5), (llama, 3)):
        assert [tok.token_to_id(b) for b in BYTE_TOKENS] == list(range(first, first + 256))
    assert ids(gemma, "hi", special=True)[0] == 2 and ids(llama, "hi", special=True)[0] == 1


def test_unknown_characters_map_to_unk_or_bytes(toks: dict[str, Tokenizer]) -> None:
    assert "字" not in "".join(corpus())
    assert ids(toks["xlm-roberta"], "字") == [toks["xlm-roberta"].token_to_id("▁"), 3]
    for style in ("gemma", "llama"):
        tokens = toks[style].encode("字", add_special_tokens=False).tokens
        assert tokens[-3:] == ["<0xE5>", "<0xAD>", "<0x97>"], (style, tokens)


def test_llama_newline_is_two_pieces_like_minicpm(toks: dict[str, Tokenizer]) -> None:
    assert toks["llama"].encode("\n", add_special_tokens=False).tokens == ["▁", "<0x0A>"]
    assert toks["gemma"].encode("Yes", add_special_tokens=False).tokens == ["Yes"]  # no prefix space
    assert toks["llama"].encode("Yes", add_special_tokens=False).tokens == ["▁Yes"]


def test_xlm_roberta_pair_template(toks: dict[str, Tokenizer]) -> None:
    tok = toks["xlm-roberta"]
    q, p = ids(tok, "is the cat red?"), ids(tok, "the red cat sleeps")
    assert tok.encode("is the cat red?", "the red cat sleeps").ids == [0, *q, 2, 2, *p, 2]
    assert ids(tok, "hello", special=True) == [0, *ids(tok, "hello"), 2]


def test_config_defaults_and_overrides(built: Path, tmp_path: Path) -> None:
    expected = {"xlm-roberta": ("right", 514, "XLMRobertaTokenizer"), "gemma": ("left", 8192, "GemmaTokenizer"),
                "llama": ("right", 8192, "LlamaTokenizer")}
    for style, (side, max_len, cls) in expected.items():
        config = json.loads((built / style / "tokenizer_config.json").read_text())
        assert (config["padding_side"], config["model_max_length"], config["tokenizer_class"]) == (side, max_len, cls)
    write_tokenizer("gemma", tmp_path, padding_side="right", model_max_length=64, vocab_size=1024)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (config["padding_side"], config["model_max_length"]) == ("right", 64)
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab_size() <= 1024


def test_bad_arguments_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownFamilyError, match="known styles"):
        write_tokenizer("bert", tmp_path)
    with pytest.raises(ExportError, match="padding_side"):
        write_tokenizer("gemma", tmp_path, padding_side="middle")


def test_parity_pairs_cover_the_edge_cases(toks: dict[str, Tokenizer]) -> None:
    pairs = parity_pairs()
    assert pairs == parity_pairs() and 16 <= len(pairs) <= 24
    assert ["what is gravity?", ""] in pairs and any(q == "" for q, _ in pairs)
    assert len({tuple(p) for p in pairs}) <= len(pairs) - 2  # at least two exact duplicates
    for style, tok in toks.items():
        lengths = [(len(ids(tok, q)), len(ids(tok, p))) for q, p in pairs]
        assert max(q for q, _ in lengths) > 64 * 3 // 4, style  # a query over the cap at max_length 64
        assert sum(p > 128 for _, p in lengths) >= 2, style  # passages cut at 64 and at 128
        assert sum(p < 32 for _, p in lengths) >= 5, style  # and short ones
        same = [i for i, (q, p) in enumerate(pairs) if q == "which animal crossed the bridge?"]
        assert len(same) == 2 and pairs[same[0]] != pairs[same[1]]
        assert lengths[same[0]] == lengths[same[1]], style
    assert any("😀" in p or "🎉" in q for q, p in pairs) and any("Москва" in p for _, p in pairs)


def test_benchmark_pairs_spread_and_determinism() -> None:
    pairs = benchmark_pairs(400, seed=3, min_tokens=32, max_tokens=512)
    assert pairs == benchmark_pairs(400, seed=3) and pairs != benchmark_pairs(400, seed=4)
    assert 10 <= len({q for q, _ in pairs}) <= 20
    words = sorted(len(p.split()) for _, p in pairs)
    assert words[0] >= 32 and words[-1] <= 512
    assert words[len(words) // 4] < 90 and words[3 * len(words) // 4] > 180  # log-uniform: quartiles ~64, ~256
    with pytest.raises(ExportError):
        benchmark_pairs(4, min_tokens=100, max_tokens=10)


def oracle_python() -> Path:
    path = Path(os.environ.get("RERANK_ORACLE_PYTHON") or REPO / ".venv-oracle" / "bin" / "python")
    if not path.exists():
        pytest.skip(f"no oracle interpreter at {path}; `make test` creates it")
    return path


def test_transformers_4_47_loads_the_fast_class_and_gives_the_runtime_ids(
    built: Path, toks: dict[str, Tokenizer]
) -> None:
    result = run_transformers(str(oracle_python()), built)
    assert result["version"] == "4.47.1"
    special_ids = {"xlm-roberta": (1, 0, 2, 3), "gemma": (0, 2, 1, 3), "llama": (0, 1, 2, 0)}
    for style, tok in toks.items():
        res = result[style]
        assert res["class"] == FAST_CLASS[style] and res["is_fast"]
        assert res["changed_on_load"] == [], style  # the backend runs exactly what tokenizer.json says
        assert tuple(res["ids"].values()) == special_ids[style]
        assert res["plain"] == [ids(tok, t) for t in texts()], style
        assert res["special"] == [ids(tok, t, special=True) for t in texts()], style
        pad = special_ids[style][0]
        left = res["padding_side"] == "left"
        assert res["padded"][1] == ([pad] * 7 + [5] if left else [5] + [pad] * 7), style
    assert result["gemma"]["padding_side"] == "left" and result["xlm-roberta"]["model_max_length"] == 514
    q, p = ids(toks["xlm-roberta"], "is it red?"), ids(toks["xlm-roberta"], "the red cat " * 20)
    assert result["xlm-roberta"]["pair"] == [0, *q, 2, 2, *p[: 16 - 4 - len(q)], 2]


def plain(text: str) -> bool:
    """Text that transformers 5's rebuilt XLM-R / Llama pipelines treat like tokenizer.json does."""
    return unicodedata.normalize("NFKC", text) == text and " ".join(text.split()) == text and "<s>" not in text


def test_transformers_5_loads_them_too(built: Path, toks: dict[str, Tokenizer]) -> None:
    """transformers 5 rebuilds the XLM-R and Llama backends from the vocab with its own normalizer and
    pre-tokenizer (no NFKC, whitespace split; Metaspace instead of the legacy Prepend), so only gemma agrees on
    every text; the others agree on plain text. The runtime follows tokenizer.json, i.e. transformers 4.47.1."""
    pytest.importorskip("transformers")
    result = run_transformers(sys.executable, built)
    for style, tok in toks.items():
        res = result[style]
        assert res["class"] in (FAST_CLASS[style], FAST_CLASS[style].removesuffix("Fast")) and res["is_fast"]
        exact = style == "gemma" or not result["version"].startswith("5.")
        checked = [(t, got) for t, got in zip(texts(), res["plain"]) if exact or plain(t)]
        assert len(checked) > 25
        for text, got in checked:
            assert got == ids(tok, text), (style, text)
