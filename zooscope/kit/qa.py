"""SQuAD v1.1 answer scoring: the official normalisation, exact match and token F1.

The same functions score a member against the gold answers (the generator) and two
members against each other (the agreement analyzer), so they live in the core.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace.

    Exactly the official SQuAD v1.1 evaluation script's ``normalize_answer``.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """Token-overlap F1 of the normalised answers (0 when either is empty and they differ)."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(truth).split())


def token_f1(pred_tokens: Sequence[str], truth_tokens: Sequence[str]) -> float:
    common = Counter(pred_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def best_over_truths(prediction: str, truths: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of a prediction: the maximum over the gold answers, as SQuAD scores."""
    if not truths:
        return 0.0, 0.0
    return (max(exact_match(prediction, t) for t in truths),
            max(f1_score(prediction, t) for t in truths))


def squad_scores(predictions: Sequence[str], truths: Sequence[Sequence[str]]) -> tuple[float, float]:
    """Mean exact match and mean F1 over questions, as fractions in [0, 1]."""
    if not predictions:
        return 0.0, 0.0
    em = f1 = 0.0
    for pred, gold in zip(predictions, truths, strict=True):
        e, f = best_over_truths(pred, gold)
        em += e
        f1 += f
    return em / len(predictions), f1 / len(predictions)
