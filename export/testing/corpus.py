"""A deterministic training corpus for the tiny test tokenizers, generated in code (no files, no downloads).

English sentences come from word lists and templates, with "Yes" and "No" frequent (also at the start of a line,
which is where a tokenizer without a prefix space sees the bare word "Yes"). Fixed sentences in German, French,
Spanish, Russian, Chinese, Japanese, Arabic and Hindi, plus emoji, digits, punctuation and newlines, make the
vocabularies cover the scripts that the test pairs use.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

SEED = 20240501

NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Maria", "Noah")
ADJECTIVES = (
    "red", "blue", "green", "large", "small", "quick", "slow", "bright", "dark", "old", "new", "warm", "cold",
    "quiet", "loud", "simple", "complex", "early", "late", "famous", "local", "modern", "ancient", "useful",
)
NOUNS = (
    "cat", "dog", "river", "mountain", "city", "village", "book", "library", "teacher", "student", "engine",
    "computer", "garden", "forest", "bridge", "market", "doctor", "hospital", "painting", "museum", "train",
    "station", "planet", "star", "ocean", "island", "company", "product", "recipe", "kitchen", "song", "movie",
    "language", "question", "answer", "passage", "query", "document", "model", "result", "reason", "history",
)
VERBS = (
    "sees", "finds", "builds", "reads", "writes", "visits", "describes", "explains", "contains", "follows",
    "crosses", "opens", "closes", "studies", "paints", "answers", "repairs", "measures", "sells", "remembers",
)
PLACES = ("Paris", "Berlin", "Madrid", "Moscow", "Beijing", "Tokyo", "Cairo", "Delhi", "London", "Rome")
TOPICS = (
    "photosynthesis", "gravity", "electricity", "the Roman empire", "machine learning", "climate change",
    "the water cycle", "volcanoes", "the printing press", "vaccines", "black holes", "coffee",
)

ENGLISH_TEMPLATES = (
    "The {adj} {noun} {verb} the {noun2}.",
    "{name} {verb} a {adj} {noun} in {place}.",
    "Is the {noun} in {place} {adj}? Yes, it is.",
    "Is the {noun} {adj}? No, it is not.",
    "Yes. {name} {verb} the {noun} every day.",
    "No. The {noun} near the {noun2} is {adj}.",
    "Does {name} like {topic}? Yes.",
    "Does the {noun} explain {topic}? No.",
    "What is {topic}? {topic_cap} is a {adj} idea that {verb} the {noun}.",
    "In {year}, {name} visited {place} and saw {count} {adj} {noun}s.",
    "A: {question}\nB: {answer}",
    "The answer is Yes or No: {question}",
    "{name} said \"Yes\" and {name2} said \"No\".",
    "Why does the {noun} matter? Because the {noun2} {verb} it.",
    "The {noun} costs ${price}.{cents} (about {pct}% more than last year).",
    "Question: {question} Answer: Yes",
    "Question: {question} Answer: No",
)

PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)

MULTILINGUAL = (
    # German
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Ja, das Museum in Berlin ist heute geöffnet.",
    "Nein, der Zug nach München fährt erst morgen früh.",
    "Die Größe der Straße überrascht viele Besucher.",
    # French
    "Le chat dort sur le canapé près de la fenêtre.",
    "Oui, la bibliothèque est ouverte jusqu'à vingt heures.",
    "Non, ce n'est pas la réponse à la question posée.",
    "L'été dernier, nous avons visité un château médiéval.",
    # Spanish
    "El perro corre por el parque cada mañana.",
    "Sí, el mercado de Madrid abre los domingos.",
    "No, la montaña es más alta de lo que parece.",
    "¿Dónde está la estación de tren? Está cerca del río.",
    # Russian
    "Быстрая река течёт через старый город.",
    "Да, библиотека открыта по субботам.",
    "Нет, этот ответ не подходит к вопросу.",
    "Москва — столица России и крупный город.",
    # Chinese
    "今天天气很好，我们去公园散步吧。",
    "是的，这个问题的答案在文章里。",
    "不是，图书馆周末不开门。",
    "机器学习是人工智能的一个重要分支。",
    # Japanese
    "今日はとても良い天気ですね。",
    "はい、その駅は川の近くにあります。",
    "いいえ、東京の博物館は月曜日に休みです。",
    "猫が窓のそばで静かに寝ている。",
    # Arabic
    "القطة تنام بجانب النافذة.",
    "نعم، المكتبة مفتوحة حتى المساء.",
    "لا، هذه ليست الإجابة الصحيحة.",
    # Hindi
    "आज मौसम बहुत अच्छा है।",
    "हाँ, संग्रहालय सुबह दस बजे खुलता है।",
    "नहीं, यह उत्तर सही नहीं है।",
)

EMOJI_LINES = (
    "I love this city 😀🎉",
    "Yes 👍 that works",
    "No 👎 not today",
    "Coffee ☕ and cake 🍰 at 10:30!",
    "Rocket 🚀 launch in 3, 2, 1...",
    "Weather: ☀️ 25°C, 🌧️ tomorrow.",
    "Family: 👨‍👩‍👧 and 🐶",
)

SYMBOL_LINES = (
    "Call 555-0123 or email info@example.com (Mon-Fri, 9:00-17:00).",
    "Prices: 1,234.56 EUR; 7.5% tax; total = 1,327.15 EUR.",
    "Path: /usr/local/bin/python3 --version # prints 3.11",
    "List: [1, 2, 3] + {a: b} -> (x, y); 'quotes' & \"double quotes\"!",
    "Tabs\tand  double  spaces\tappear here.",
    "Line one\nLine two\n\nLine four after a blank line",
)


def english_sentences(count: int, seed: int = SEED) -> list[str]:
    """`count` template sentences, the same for the same seed (corpus() uses the first 3,000 of SEED)."""
    return _english(random.Random(seed), count)


def _english(rng: random.Random, count: int) -> list[str]:
    out: list[str] = []
    for _ in range(count):
        topic = rng.choice(TOPICS)
        question = f"Is the {rng.choice(NOUNS)} in {rng.choice(PLACES)} {rng.choice(ADJECTIVES)}?"
        answer = f"{rng.choice(('Yes', 'No'))}, the {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}."
        fields = {
            "adj": rng.choice(ADJECTIVES), "noun": rng.choice(NOUNS), "noun2": rng.choice(NOUNS),
            "verb": rng.choice(VERBS), "name": rng.choice(NAMES), "name2": rng.choice(NAMES),
            "place": rng.choice(PLACES), "topic": topic, "topic_cap": topic[0].upper() + topic[1:],
            "year": rng.randint(1800, 2030), "count": rng.randint(2, 99), "price": rng.randint(1, 999),
            "cents": f"{rng.randint(0, 99):02d}", "pct": rng.randint(1, 60), "question": question, "answer": answer,
        }
        out.append(rng.choice(ENGLISH_TEMPLATES).format(**fields))
    return out


def _repeat(lines: Sequence[str], times: int) -> list[str]:
    return [line for _ in range(times) for line in lines]


def corpus() -> list[str]:
    """The training corpus: about 4,000 lines, identical on every call."""
    rng = random.Random(SEED)
    lines = _english(rng, 3000)
    lines += ["Yes", "No", "Yes.", "No.", "Yes!", "No!", PROMPT] * 40
    lines += _repeat(MULTILINGUAL, 12)
    lines += _repeat(EMOJI_LINES, 8)
    lines += _repeat(SYMBOL_LINES, 8)
    lines += [f"{i} {i * 7} {i * 31 % 1000}" for i in range(100)]
    return lines


def english_words() -> list[str]:
    """The distinct English words the templates use, in a fixed order (for building test pairs)."""
    words = [*NAMES, *ADJECTIVES, *NOUNS, *VERBS, *PLACES]
    words += [w for topic in TOPICS for w in topic.split()]
    return list(dict.fromkeys(words))
