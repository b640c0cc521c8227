"""What an analyzer is, how its options are typed, and the helpers analyzers share
(member labels, tensor selection, figures).

Analyzers themselves are plugins (``zooscope.plugins.*`` and third-party packages);
they read the zoo only through ``zooscope.zoo.Zoo``.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zooscope.errors import ConfigError, ZooFileError
from zooscope.zoo import Checkpoint, Member, Zoo

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Option:
    """One typed analyzer option, set with ``--set NAME=VALUE``."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None

    def parse(self, text: str) -> Any:
        try:
            if self.type is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1", "yes")
            elif self.type is list:
                value = [v.strip() for v in text.split(",") if v.strip()]
            else:
                value = self.type(text)
        except ValueError:
            raise ConfigError(f"option {self.name} takes {self.type.__name__}, not {text!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"option {self.name} = {text!r} is not one of "
                              f"{', '.join(map(str, self.choices))}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"option {self.name} = {text} must be ≥ {self.minimum:g}")
        return value


#: The options of an analyzer that gives multi-bootstrap intervals (``zooscope.services.bootstrap``).
BOOTSTRAP_OPTIONS = (
    Option("bootstrap", int, 1000, "replicates of the multi-bootstrap over seeds and test "
           "examples for the 95 % intervals (0: no intervals)", minimum=0),
    Option("bootstrap_seed", int, 0, "the seed of the bootstrap's draws", minimum=0),
)


def option_pattern(name: str, text: str) -> re.Pattern[str]:
    """An option that holds a regular expression, compiled; a bad one is the user's to fix."""
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"option {name} = {text!r} is not a regular expression ({exc})",
                          hint=f"e.g. --set {name}='attention|ffn' or {name}='weight$'") from None


def select_tensors(zoo: Zoo, member: Member | str, name: str, text: str) -> list[str]:
    """The state-dict names the regex option ``name`` selects (searched anywhere in a name);
    an error naming the option where it selects none."""
    pattern = option_pattern(name, text)
    every = zoo.tensor_names(member)
    names = [n for n in every if pattern.search(n)]
    if not names:
        raise ConfigError(f"option {name} = {text!r} matches no tensor of this zoo",
                          hint=f"its {len(every)} tensors are named like "
                          f"{', '.join(every[:3])}" if every else "this zoo stores no tensors")
    return names


def require_metrics(zoo: Zoo, *columns: str) -> None:
    """Refuse, naming what the zoo has, a metric column (``validation_accuracy``) it lacks."""
    for column in columns:
        if column not in zoo.metric_columns:
            if not zoo.metric_columns:
                raise ZooFileError(f"this zoo records no {column!r}: it records no metrics at "
                                   "all (an imported zoo has none until its checkpoints are "
                                   "evaluated)")
            raise ZooFileError(f"this zoo records no {column!r} (it has "
                               f"{', '.join(zoo.metric_columns)})",
                               hint="choose another metric with --set metric=NAME")


def example_scores(zoo: Zoo, checkpoints: Sequence[Checkpoint], metric: str) -> Any:
    """Each checkpoint's score on each test example, (checkpoints, examples), whose mean
    is the stored ``test_{metric}``; None where the zoo cannot score ``metric`` example by
    example. Class predictions give ``accuracy`` (1 where the label is right), answer
    spans ``exact_match`` and ``f1`` (the best over the gold answers, as SQuAD scores)."""
    import numpy as np

    kind = zoo.prediction_kind()
    if not checkpoints:
        return None
    if kind == "class" and metric == "accuracy":
        labels = zoo.test_labels()
        if labels is None:
            return None
        return (zoo.predictions(checkpoints) == labels[None, :]).astype(np.float64)
    if kind == "span" and metric in ("exact_match", "f1"):
        from zooscope.kit.qa import best_over_truths

        gold = zoo.test_answers()
        if gold is None:
            return None
        column = 0 if metric == "exact_match" else 1
        return np.array([[best_over_truths(a, g)[column] for a, g in zip(row, gold, strict=True)]
                         for row in zoo.predicted_answers(checkpoints)], dtype=np.float64)
    return None


def continuous_factors(zoo: Zoo) -> set[str]:
    """The factors the zoo's ``[search]`` draws from a continuous distribution (uniform,
    log_uniform): every point has its own value, so they are quantities to regress, not
    classes."""
    import tomllib

    from zooscope.search import parse_distribution

    try:
        table = tomllib.loads(zoo.config_text).get("search", {})
    except (tomllib.TOMLDecodeError, ValueError):
        return set()
    out = set()
    for name, text in table.items():
        if name in ("samples", "seed"):
            continue
        try:
            if parse_distribution(name, text).kind in ("uniform", "log_uniform"):
                out.add(name)
        except ConfigError:
            continue
    return out


def varying_factors(members: Iterable[Member], skip: Sequence[str] = ()) -> list[str]:
    """The factors whose values differ among ``members``, sorted, less those in ``skip``
    (``("seed",)`` names a configuration: what is left when seeds are pooled)."""
    members = list(members)
    keys = sorted({k for m in members for k in m.factors} - set(skip))
    return [k for k in keys if len({str(m.factors.get(k)) for m in members}) > 1]


def member_labels(members: Sequence[Member]) -> tuple[dict[str, str], str]:
    """Figure labels: each member by the factors that vary among ``members`` (id → label),
    and the factors they share, once, for a title."""
    keys = sorted({k for m in members for k in m.factors})
    varying = varying_factors(members)
    constant = ", ".join(f"{k}={members[0].factors.get(k)}" for k in keys if k not in varying)
    labels = {m.id: ", ".join(f"{k}={m.factors.get(k)}" for k in varying) or m.id
              for m in members}
    return labels, constant


@dataclass
class Selection:
    """Which members and epochs an analysis covers."""

    members: list[Member]
    epochs: list[int] | None  # None: every epoch each member has
    #: The results an analyzer declared in ``inputs``, by analyzer name, as the cache
    #: keyed on them: ``{"name", "key", "digest"}`` (see ``resolve_inputs``). A result
    #: computed in this Python process (``zooscope.analyze(..., inputs=)``) also holds
    #: its ``tables``.
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def checkpoints(self, zoo: Zoo) -> list[Checkpoint]:
        return zoo.checkpoints(self.members, self.epochs)

    def input_tables(self, zoo: Zoo, name: str) -> dict[str, dict[str, np.ndarray]] | None:
        """The tables of the input result ``name``: held in memory, or read from the zoo's
        stored results; None where there is none."""
        source = self.inputs.get(name)
        if source is None:
            return None
        if "tables" in source:
            return source["tables"]
        return zoo.analysis_tables(name, source["key"])


@dataclass
class AnalysisResult:
    """Tables (name → column → values), figures (name → matplotlib figure) and a summary."""

    tables: dict[str, dict[str, Sequence[Any]]]
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)


class Analyzer(ABC):
    """Reads a zoo and returns a result. Registered through ``zooscope_register_analyzers``."""

    name: str
    description: str = ""
    options: tuple[Option, ...] = ()
    #: Analyzers whose stored results this one reads (``selection.inputs``): its results
    #: are keyed on the results it read, so a newer input is never answered from the cache.
    inputs: tuple[str, ...] = ()

    @abstractmethod
    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        """Compute the analysis on the selected members and epochs."""

    def display(self, tables: Mapping[str, Mapping[str, Sequence[Any]]]
                ) -> tuple[str, dict[str, Sequence[Any]]] | None:
        """The table ``zooscope analyze`` prints, as (title, heading → values), or None.

        The console shows what a person reads at 80 columns; CSV and ``--json`` carry
        every table in full. It is computed from the tables alone, so a result reused
        from the zoo prints the same. By default: the ``groups`` table, else the first,
        at its last epoch where it has an ``epoch`` column.
        """
        name = "groups" if tables.get("groups") else next((t for t in tables if tables[t]), None)
        if name is None:
            return None
        cols = tables[name]
        n = len(next(iter(cols.values())))
        keep = list(range(n))
        if "epoch" in cols and n:  # per-epoch tables: the last epoch tells the story
            last = max(cols["epoch"])
            keep = [i for i in keep if cols["epoch"][i] == last]
        return name, {c: [cols[c][i] for i in keep] for c in cols}

    def parse_options(self, sets: Sequence[str]) -> dict[str, Any]:
        known = {o.name: o for o in self.options}
        values = {o.name: o.default for o in self.options}
        for item in sets:
            name, sep, text = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r} is not NAME=VALUE")
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, list(known), n=1)
                raise ConfigError(
                    f"analyzer {self.name!r} has no option {name!r}",
                    hint=f"did you mean {close[0]!r}?" if close else
                    f"its options: {', '.join(known) or 'none'}")
            values[name] = known[name].parse(text)
        return values


def plotting() -> bool:
    """Whether figures can be drawn: matplotlib comes with the ``analysis`` extra, and
    analyzers that only compute tables run without it."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def figure_png(fig: Any, close: bool = True) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()
