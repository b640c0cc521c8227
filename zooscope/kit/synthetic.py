"""A synthetic sentiment task the demo zoo trains on, generated deterministically offline.

Short reviews whose label follows from their adjectives, with negation and
contrast ("but") so that a model must read more than one word.
"""

from __future__ import annotations

import random

POSITIVE = ("good", "great", "wonderful", "excellent", "delightful", "charming", "brilliant",
            "moving", "funny", "superb", "lovely", "gripping", "clever", "beautiful", "fresh")
NEGATIVE = ("bad", "awful", "boring", "dull", "terrible", "clumsy", "tedious", "painful",
            "weak", "mediocre", "bland", "messy", "silly", "forgettable", "stale")
NOUNS = ("film", "movie", "story", "plot", "cast", "script", "ending", "score", "acting",
         "dialogue", "direction", "pacing", "soundtrack", "premise", "performance")
ADVERBS = ("really", "truly", "quite", "rather", "very", "surprisingly", "mostly", "simply")
FILLER = ("honestly", "overall", "in the end", "all in all", "to be fair", "for me")


def _clause(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)
    adj = rng.choice(POSITIVE if label else NEGATIVE)
    noun = rng.choice(NOUNS)
    form = rng.randrange(4)
    if form == 0:
        return f"the {noun} was {adj}", label
    if form == 1:
        return f"a {rng.choice(ADVERBS)} {adj} {noun}", label
    if form == 2:
        # Negation flips the adjective's polarity.
        return f"the {noun} was not {adj}", 1 - label
    return f"i found the {noun} {rng.choice(ADVERBS)} {adj}", label


def synthetic_sentiment(n: int = 3000, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (sentence, label) pairs; label 1 is positive. Same ``seed``, same list."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, label = _clause(rng)
        if rng.random() < 0.35:
            # Contrast: the clause after "but" decides.
            first, _ = _clause(rng)
            text = f"{first} but {text}"
        if rng.random() < 0.3:
            text = f"{rng.choice(FILLER)} , {text}"
        rows.append((text, label))
    return rows
