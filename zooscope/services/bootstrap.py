"""The multi-bootstrap: confidence in a score over seeds and test examples jointly.

A fine-tuned model's test score varies with its seed and with the test examples drawn;
an interval over one of them alone is too narrow. The multi-bootstrap (Sellam et al.,
"The MultiBERTs", ICLR 2022) resamples both in each replicate: the test examples, with
replacement, once for every system compared (paired by example), and each system's
seeds, with replacement, independently. A replicate's score is the mean over the drawn
seeds of each seed's mean over the drawn examples.

The draws are fixed by ``seed``, in this order, so that anyone can reproduce them with
numpy alone::

    rng = numpy.random.default_rng(seed)
    examples = rng.integers(0, n_examples, size=(replicates, n_examples))
    for n_seeds in seeds_per_system:  # in the order the systems are given
        seeds = rng.integers(0, n_seeds, size=(replicates, n_seeds))

Scores are per-example (a 0/1 correctness, a token F1), so a replicate is two matrix
products over draw counts rather than a loop over draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The interval's coverage: the 2.5th and 97.5th percentiles of the replicates.
LEVEL = 0.95


def draw_counts(draws: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each replicate: (replicates, k) indices
    → (replicates, n) counts."""
    replicates = draws.shape[0]
    offsets = draws + n * np.arange(replicates)[:, None]
    return np.bincount(offsets.ravel(), minlength=replicates * n).reshape(replicates, n)


@dataclass(frozen=True)
class Draws:
    """One multi-bootstrap's draws as counts: ``examples`` (replicates, n_examples), shared
    by every system, and ``seeds[k]`` (replicates, n_seeds of system k)."""

    examples: np.ndarray
    seeds: list[np.ndarray]

    @property
    def replicates(self) -> int:
        return int(self.examples.shape[0])


def draw(n_examples: int, seeds_per_system: Sequence[int], replicates: int, seed: int) -> Draws:
    """The draws of a multi-bootstrap, in the documented order (see the module)."""
    rng = np.random.default_rng(seed)
    examples = draw_counts(rng.integers(0, n_examples, size=(replicates, n_examples)),
                           n_examples)
    seeds = [draw_counts(rng.integers(0, k, size=(replicates, k)), k) for k in seeds_per_system]
    return Draws(examples, seeds)


def replicate_scores(scores: np.ndarray, examples: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Each replicate's score of one system: ``scores`` (n_seeds, n_examples) per-example
    scores, ``examples`` and ``seeds`` its draw counts → (replicates,) means."""
    scores = np.asarray(scores, dtype=np.float64)
    n_seeds, n_examples = scores.shape
    per_seed = scores @ examples.T.astype(np.float64) / n_examples  # (n_seeds, replicates)
    return (per_seed * seeds.T).sum(axis=0) / n_seeds


def interval(values: np.ndarray) -> tuple[float, float]:
    """The percentile interval at ``LEVEL`` of replicate values (NaN replicates left out)."""
    tail = 100 * (1 - LEVEL) / 2
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Comparison:
    """System ``a`` against system ``b``: the observed difference of their mean scores,
    its interval, and the share of replicates in which ``a`` scores higher."""

    a: int
    b: int
    difference: float
    low: float
    high: float
    p_a_better: float


def multi_bootstrap(scores: Sequence[np.ndarray], replicates: int = 1000, seed: int = 0
                    ) -> tuple[list[tuple[float, float]], list[Comparison]]:
    """Intervals for each system's mean score and every pairwise comparison.

    ``scores[k]`` is system k's (n_seeds, n_examples) per-example scores on the shared
    test examples (higher is better). Returns each system's interval and, for every
    pair a < b, a Comparison.
    """
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    n_examples = {s.shape[1] for s in scores}
    if len(n_examples) != 1:
        raise ValueError("every system must be scored on the same test examples")
    draws = draw(n_examples.pop(), [s.shape[0] for s in scores], replicates, seed)
    reps = [replicate_scores(s, draws.examples, c) for s, c in zip(scores, draws.seeds,
                                                                  strict=True)]
    intervals = [interval(r) for r in reps]
    comparisons = []
    for a in range(len(scores)):
        for b in range(a + 1, len(scores)):
            delta = reps[a] - reps[b]
            low, high = interval(delta)
            comparisons.append(Comparison(a, b, float(scores[a].mean() - scores[b].mean()),
                                          low, high, float(np.mean(delta > 0))))
    return intervals, comparisons
