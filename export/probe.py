"""The probe set every export is verified on: short and long, several languages, an empty passage, and pairs of the
synthetic relevance task that the trained test checkpoints learn (rerank_export.testing.pairs.relevance_pairs(12,
seed=2027, max_sentences=1)), on which a trained model's scores spread widely: all, some or none of the query's
words are in the passage."""

from __future__ import annotations

PROBE_PAIRS: list[list[str]] = [
    ["what is panda?", "hi"],
    ["what is panda?", "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, "
     "is a bear species endemic to China."],
    ["What is the capital of France?", "Paris is the capital of France."],
    ["What is the capital of France?", "The population of China is over 1.4 billion people."],
    ["What is the population of China?", "Paris is the capital of France."],
    ["What is the population of China?", "The population of China is over 1.4 billion people."],
    ["how do solar panels work", "Solar panels convert sunlight into electricity using photovoltaic cells made of "
     "silicon. When photons hit the cells they knock electrons loose, and the flow of those electrons is an electric "
     "current that an inverter turns into alternating current for the home. " * 3],
    ["Wie hoch ist die Zugspitze?", "Die Zugspitze ist mit 2962 Metern der höchste Berg Deutschlands."],
    ["东京的人口是多少？", "东京都的人口约为一千四百万。"],
    ["Quelle est la meilleure saison pour visiter Kyoto ?", "Le printemps et l'automne sont les saisons préférées 🌸🍁."],
    ["empty passage", ""],
    ["best pizza in naples", "Pizza margherita was created in Naples in 1889 in honour of Queen Margherita."],
    # the synthetic relevance task
    ["what is the Maria London Alice?",
     "The language costs $551.77 (about 2% Alice more than last London year). Maria"],
    ["where is the Jack London?", "Jack Does the kitchen explain gravity? No."],
    ["where is the Beijing Henry Frank?", "Is the history warm? No, it is not."],
    ["what is the Noah Madrid Moscow?", "The answer is Yes or No: Is the star in Madrid Moscow Noah modern?"],
    ["what is the David Beijing Jack?", "No. The reason near the product David Beijing is useful."],
    ["London Delhi", "The model costs $511.76 (about 34% more than last year)."],
    ["tell me about Grace Bob", 'Grace said "Yes" and Bob said "No".'],
    ["what is the Moscow Berlin?", "Is the doctor in Berlin local? Yes, it is."],
    ["find Beijing Rome Jack", "Question: Is the language in Tokyo slow? Answer: No"],
    ["tell me about Frank Moscow Irene", "Moscow The Frank useful dog describes the Irene market."],
    ["where is the Maria David Carol?", "The complex recipe David sells the market."],
    ["where is the Delhi Berlin?", "A: Is the village in London useful?\nB: Yes, the star repairs the document."],
]
