"""Deterministic [query, passage] sets for parity tests and benchmarks, built from the corpus' words."""

from __future__ import annotations

import math
import random
import re

from rerank_runtime.errors import ExportError

from .corpus import MULTILINGUAL, NAMES, NOUNS, PLACES, PROMPT, TOPICS, english_sentences

_SEED = 11


def _words(text: str) -> int:
    return len(text.split())


def _passage(sentences: list[str], start: int, min_words: int) -> str:
    """Consecutive sentences from `start` (wrapping around) until the text has at least `min_words` words."""
    out: list[str] = []
    count = 0
    while count < min_words:
        sentence = sentences[(start + len(out)) % len(sentences)]
        out.append(sentence)
        count += _words(sentence)
    return " ".join(out)


def parity_pairs() -> list[list[str]]:
    """22 pairs that exercise every truncation and padding path of compute_score.

    Covers short and long passages (the long ones exceed 128 tokens in every test tokenizer, so they are cut at
    max_length 64 and 128), a query of 70+ words (over the 3/4 query cap at max_length 64), non-English text,
    emoji, an empty passage, an empty query, two exact duplicates, two pairs whose passages are the same words
    reordered (identical token lengths in every tokenizer), newlines, tabs and digits.
    """
    s = english_sentences(400, seed=_SEED)
    long_query = "Please find the passage that explains " + _passage(s, 300, 70)
    same_words_a = "The red cat saw the blue dog near the old bridge today"
    same_words_b = "The blue dog saw the red cat near the old bridge today"
    pairs = [
        ["what is photosynthesis?", "Photosynthesis is the process by which green plants turn light into sugar."],
        ["Is the cat red?", "Yes, the red cat sleeps near the window."],
        ["Is the river cold?", "No. The river near the bridge is warm in summer."],
        ["where is the museum?", _passage(s, 0, 160)],
        ["history of the library", _passage(s, 40, 320)],
        [long_query, "The answer is in the second chapter of the book."],
        [long_query, _passage(s, 120, 90)],
        ["Wo ist der Bahnhof?", f"{MULTILINGUAL[0]} {MULTILINGUAL[1]} {MULTILINGUAL[2]}"],
        ["机器学习是什么？", f"{MULTILINGUAL[19]}{MULTILINGUAL[16]}"],
        ["Что такое Москва?", f"{MULTILINGUAL[15]} {MULTILINGUAL[12]} {MULTILINGUAL[24]} {MULTILINGUAL[28]}"],
        ["東京の博物館は？", f"{MULTILINGUAL[22]} {MULTILINGUAL[9]}"],
        ["party 🎉 ideas?", "Cake 🍰, coffee ☕ and a rocket 🚀 launch; the family 👨‍👩‍👧 brings the dog 🐶."],
        ["what is gravity?", ""],
        ["", "The library opens at nine and closes at five."],
        ["Is the cat red?", "Yes, the red cat sleeps near the window."],
        ["where is the museum?", _passage(s, 0, 160)],
        ["which animal crossed the bridge?", same_words_a],
        ["which animal crossed the bridge?", same_words_b],
        ["Line breaks?", "First line.\nSecond line\twith a tab.\n\nFourth line after a blank one."],
        ["How much did it cost in 2024?", "It cost $1,234.56 (about 7.5% more than in 2023): see item #42."],
        [PROMPT, "Yes"],
        ["No", f"Does {PLACES[3]} have a {NOUNS[6]} about {TOPICS[4]}? No."],
    ]
    return pairs


def benchmark_pairs(n: int, seed: int = 0, min_tokens: int = 32, max_tokens: int = 512) -> list[list[str]]:
    """`n` pairs with 16 distinct queries repeated and passages of min_tokens..max_tokens words, log-uniform.

    Words are a proxy for tokens (the tiny tokenizers give one to three tokens per word). The same arguments
    always give the same pairs.
    """
    if n < 0 or not 1 <= min_tokens <= max_tokens:
        raise ExportError(
            f"need n >= 0 and 1 <= min_tokens <= max_tokens; got n={n}, min_tokens={min_tokens}, "
            f"max_tokens={max_tokens}"
        )
    rng = random.Random(seed)
    sentences = english_sentences(2000, seed=seed + 1)
    queries = [f"what does the {rng.choice(NOUNS)} in {rng.choice(PLACES)} say about {rng.choice(TOPICS)}?"
               for _ in range(16)]
    lo, hi = math.log(min_tokens), math.log(max_tokens)
    pairs: list[list[str]] = []
    for _ in range(n):
        target = min(max_tokens, max(min_tokens, round(math.exp(rng.uniform(lo, hi)))))
        words = _passage(sentences, rng.randrange(len(sentences)), target).split()
        pairs.append([queries[rng.randrange(len(queries))], " ".join(words[:target])])
    return pairs


QUERY_TEMPLATES = ("{}", "what is the {}?", "where is the {}?", "find {}", "tell me about {}")
# The words queries are made of: the corpus' names and places (few enough that a tiny model learns to tell them apart
# in a few hundred steps, and frequent in the tokenizers' corpus, so each is one or two tokens).
QUERY_WORDS = (*NAMES, *PLACES)


def relevance_pairs(n: int, seed: int, max_sentences: int = 3) -> tuple[list[list[str]], list[float]]:
    """`n` [query, passage] pairs of the synthetic relevance task and their grades in [0, 1].

    A query names two or three QUERY_WORDS; its passage (1..max_sentences corpus sentences) holds all of them, some
    or none (a third of the pairs each), and the grade is the share it holds. A word the passage should hold is
    used where the sentences already have it, else inserted between two words; a word it should not hold does not
    occur in it at all, not even inside a longer word. The same arguments always give the same pairs.
    """
    rng = random.Random(seed)
    sentences = english_sentences(2000, seed=seed)
    pairs: list[list[str]] = []
    grades: list[float] = []
    for i in range(n):
        words = " ".join(rng.choice(sentences) for _ in range(rng.randint(1, max_sentences))).split(" ")
        passage = " ".join(words)
        whole = set(re.findall(r"[A-Za-z]+", passage))
        present = [w for w in QUERY_WORDS if w in whole]
        absent = [w for w in QUERY_WORDS if w.lower() not in passage.lower()]
        k = rng.choice((2, 3))
        hits = (k, rng.randint(1, k - 1), 0)[i % 3]
        found = rng.sample(present, min(hits, len(present)))
        inserted = rng.sample(absent, hits - len(found))
        missing = rng.sample([w for w in absent if w not in inserted], k - hits)
        for word in inserted:
            words.insert(rng.randint(0, len(words)), word)
        query = found + inserted + missing
        rng.shuffle(query)
        pairs.append([rng.choice(QUERY_TEMPLATES).format(" ".join(query)), " ".join(words)])
        grades.append(hits / k)
    return pairs, grades
