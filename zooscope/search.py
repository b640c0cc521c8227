"""Random search over generating factors: the ``[search]`` table of a zoo config.

::

    [search]
    samples = 8                                  # points drawn
    seed = 0                                     # the draws' seed
    learning_rate = "log_uniform(1e-5, 1e-3)"
    weight_decay = "uniform(0, 0.1)"
    batch_size = "choice([16, 32])"
    epochs = "int_uniform(2, 4)"

Random search finds good settings with fewer runs than a grid when only some factors
matter (Bergstra and Bengio, JMLR 2012). The ``samples`` points are drawn once and
used in every cell of ``[grid]``, so cells (backbones, say) are compared at the same
draws; each point is trained once per seed of ``[zoo] seeds``.

The draws are reproducible with numpy alone: ``rng = numpy.random.default_rng(seed)``;
for each sample, for each factor in alphabetical order:

- ``uniform(a, b)``: ``a + (b - a) * rng.random()``
- ``log_uniform(a, b)``: ``exp(log(a) + (log(b) - log(a)) * rng.random())``
- ``int_uniform(a, b)``: ``rng.integers(a, b + 1)`` (both ends included)
- ``choice([v, ...])``: ``values[rng.integers(len(values))]``

Real values are then rounded to four significant digits (and kept within their
bounds), so a member's factors read as a person would write them.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zooscope.errors import ConfigError

#: Each distribution with the number of arguments it takes.
DISTRIBUTIONS = {"uniform": 2, "log_uniform": 2, "int_uniform": 2, "choice": 1}
SIGNIFICANT = 4
EXAMPLE = 'learning_rate = "log_uniform(1e-5, 1e-3)"'
_CALL = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Distribution:
    """One factor's distribution: ``kind`` (a key of ``DISTRIBUTIONS``) and its arguments."""

    kind: str
    args: tuple[Any, ...]

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"choice({list(self.args)!r})"
        return f"{self.kind}({self.args[0]!r}, {self.args[1]!r})"

    @property
    def values(self) -> list[Any]:
        """Every value it can draw where they are few (``choice``, ``int_uniform``), else
        its two bounds."""
        if self.kind == "int_uniform":
            low, high = self.args
            return list(range(low, high + 1)) if high - low < 1000 else [low, high]
        return list(self.args)

    def draw(self, rng: Any) -> Any:
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "int_uniform":
            return int(rng.integers(low, high + 1))
        if self.kind == "uniform":
            value = low + (high - low) * rng.random()
        else:
            value = math.exp(math.log(low) + (math.log(high) - math.log(low)) * rng.random())
        return min(max(float(f"{value:.{SIGNIFICANT}g}"), low), high)


def parse_distribution(factor: str, text: Any) -> Distribution:
    """``"log_uniform(1e-5, 1e-3)"`` → Distribution; a ConfigError naming the factor."""
    where = f"[search] {factor}"
    if not isinstance(text, str):
        raise ConfigError(f"{where} must be a distribution written as a string, e.g. "
                          f"{factor} = \"uniform(0, 1)\"",
                          hint=f"one of {', '.join(f'{k}(...)' for k in DISTRIBUTIONS)}")
    match = _CALL.match(text)
    if not match or match.group(1) not in DISTRIBUTIONS:
        name = match.group(1) if match else text
        raise ConfigError(f"{where} = {text!r}: {name!r} is not a distribution",
                          hint=f"one of {', '.join(f'{k}(...)' for k in DISTRIBUTIONS)}, e.g. "
                          f"{EXAMPLE}")
    kind = match.group(1)
    try:  # the arguments are TOML values: 1e-5, true, "text", [16, 32]
        args = tomllib.loads(f"args = [{match.group(2)}]")["args"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"{where} = {text!r}: the arguments are not plain numbers or a list "
                          "of values", hint=EXAMPLE) from None
    if len(args) != DISTRIBUTIONS[kind]:
        shape = "choice([v1, v2, ...])" if kind == "choice" else f"{kind}(low, high)"
        raise ConfigError(f"{where} = {text!r}: {kind} takes {DISTRIBUTIONS[kind]} "
                          f"argument{'s' if DISTRIBUTIONS[kind] > 1 else ''}", hint=shape)
    if kind == "choice":
        values = args[0]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where} = {text!r}: choice takes a non-empty list of values",
                              hint=f"{factor} = \"choice([16, 32])\"")
        return Distribution(kind, tuple(values))
    low, high = args
    numbers = (int,) if kind == "int_uniform" else (int, float)
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, numbers) or \
                not math.isfinite(value):
            raise ConfigError(f"{where} = {text!r}: {kind}'s bounds must be finite "
                              f"{'integers' if kind == 'int_uniform' else 'numbers'}")
    if kind == "int_uniform" and max(abs(low), abs(high)) >= 1 << 62:
        raise ConfigError(f"{where} = {text!r}: int_uniform's bounds must lie within ±2**62")
    if kind == "uniform" and not math.isfinite(float(high) - float(low)):
        raise ConfigError(f"{where} = {text!r}: the range is too wide to draw from "
                          "(its width overflows a float)")
    ordered = low <= high if kind == "int_uniform" else low < high
    if not ordered:
        raise ConfigError(f"{where} = {text!r}: the lower bound must be below the upper")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{where} = {text!r}: log_uniform needs bounds above 0")
    return Distribution(kind, (low, high) if kind == "int_uniform" else (float(low), float(high)))


@dataclass(frozen=True)
class Search:
    """A parsed ``[search]`` table: how many points, their seed, and each factor's
    distribution (alphabetical, the order of the draws)."""

    samples: int
    seed: int
    factors: dict[str, Distribution]

    def points(self) -> list[dict[str, Any]]:
        """The drawn points, in order; a point drawn twice is refused."""
        import numpy as np

        rng = np.random.default_rng(self.seed)
        points: list[dict[str, Any]] = []
        for _ in range(self.samples):
            point = {name: self.factors[name].draw(rng) for name in self.factors}
            if point in points:
                raise ConfigError(f"[search] drew the same point twice ({_show(point)}): "
                                  "two members would be the same",
                                  hint="draw fewer samples, widen a distribution, or add a "
                                  "continuous factor")
            points.append(point)
        return points


def _show(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def parse_search(table: Mapping[str, Any]) -> Search:
    """The ``[search]`` table → Search; ``samples`` and ``seed`` are its settings, every
    other key a factor."""
    samples = table.get("samples")
    if samples is None:
        raise ConfigError("[search] needs samples, the number of points to draw",
                          hint="e.g. samples = 8")
    seed = table.get("seed", 0)
    for key, value in (("samples", samples), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"[search] {key} must be an integer, got {value!r}")
    if samples < 1:
        raise ConfigError(f"[search] samples must be ≥ 1, got {samples}")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"[search] seed must be in [0, 2^63), got {seed}")
    factors = {name: parse_distribution(name, text) for name, text in sorted(table.items())
               if name not in ("samples", "seed")}
    if not factors:
        raise ConfigError("[search] draws no factor", hint=f"add one, e.g. {EXAMPLE}")
    return Search(samples=samples, seed=seed, factors=factors)
