"""The probe set every export is verified on: short and long, several languages, an empty passage."""

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
]
