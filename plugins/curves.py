"""The ``curves`` analyzer: learning curves, the epoch early stopping picks, and overfitting.

For every member, from the metrics the zoo stores per epoch:

- the epoch early stopping on the validation (dev) split picks: the best validation
  score (the lowest loss, the highest accuracy, F1 or exact match; the earliest epoch
  on a tie), epoch 0 (the untrained start) included;
- the test score at that epoch against the test score at the last epoch, which says
  what selecting on dev would have gained or lost;
- the onset of overfitting: the first epoch at which the validation loss rises while
  the training loss falls (it needs the training split evaluated, ``[train]
  eval_train``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import zooscope
from zooscope.analysis import (
    AnalysisResult,
    Analyzer,
    Option,
    Selection,
    member_labels,
    require_metrics,
    varying_factors,
)
from zooscope.errors import ZooFileError
from zooscope.zoo import Checkpoint, Zoo

#: The metric a zoo is judged by, in order of preference; a zoo with none of them
#: (a masked-LM zoo) is judged by its loss.
PREFERRED = ("accuracy", "f1", "exact_match")


def default_metric(columns: list[str]) -> str:
    return next((m for m in PREFERRED if f"validation_{m}" in columns), "loss")


def best_epoch(checkpoints: list[Checkpoint], column: str, lower_is_better: bool) -> int | None:
    """The epoch whose ``column`` is best (the earliest on a tie); None without a value."""
    scored = [(c.metrics[column], c.epoch) for c in checkpoints if column in c.metrics]
    if not scored:
        return None
    best = min(v for v, _ in scored) if lower_is_better else max(v for v, _ in scored)
    return min(e for v, e in scored if v == best)


def overfit_onset(checkpoints: list[Checkpoint]) -> int | None:
    """The first epoch whose validation loss rose and training loss fell from the epoch
    before; None where that never happens or the losses are not stored."""
    for before, after in zip(checkpoints, checkpoints[1:], strict=False):
        keys = ("validation_loss", "train_loss")
        if not all(k in before.metrics and k in after.metrics for k in keys):
            continue
        if after.metrics["validation_loss"] > before.metrics["validation_loss"] and \
                after.metrics["train_loss"] < before.metrics["train_loss"]:
            return after.epoch
    return None


class Curves(Analyzer):
    name = "curves"
    description = ("learning curves per member: the epoch early stopping on dev picks, the "
                   "test score there vs at the last epoch, and where overfitting starts")
    options = (
        Option("metric", str, "", "the metric early stopping watches (a column without its "
               "split prefix: accuracy, f1, exact_match, loss; default: the zoo's first of "
               "accuracy, f1, exact_match, else loss)"),
    )

    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        import numpy as np

        metric = options["metric"] or default_metric(zoo.metric_columns)
        watch, report = f"validation_{metric}", f"test_{metric}"
        require_metrics(zoo, watch, report)
        lower = metric == "loss"
        by_member: dict[str, list[Checkpoint]] = defaultdict(list)
        for c in selection.checkpoints(zoo):
            by_member[c.member].append(c)
        members = [m for m in selection.members if len(by_member[m.id]) > 0]
        if not members:
            raise ZooFileError("the selected members have no committed checkpoints")
        shown = varying_factors(members, skip=("seed",)) or varying_factors(members)
        table: dict[str, list[Any]] = defaultdict(list)
        for m in members:
            cps = by_member[m.id]
            at = {c.epoch: c.metrics for c in cps}
            best = best_epoch(cps, watch, lower)
            last = cps[-1].epoch
            onset = overfit_onset(cps)
            table["member"].append(m.id)
            for factor in (*shown, "seed"):
                table[factor].append(m.factors.get(factor))
            table["last_epoch"].append(last)
            table["best_epoch"].append(-1 if best is None else best)
            table[f"{watch}_best"].append(np.nan if best is None else at[best].get(watch, np.nan))
            table[f"{report}_best"].append(np.nan if best is None
                                           else at[best].get(report, np.nan))
            table[f"{report}_last"].append(at[last].get(report, np.nan))
            table["overfit_epoch"].append(-1 if onset is None else onset)
        gain = np.asarray(table[f"{report}_best"]) - np.asarray(table[f"{report}_last"])
        table["gain"] = [float(g) for g in gain]
        summary = _summary(table, metric, lower, gain,
                           any("train_loss" in c.metrics for cps in by_member.values()
                               for c in cps))
        figure = _figure(members, by_member, metric, table)
        return AnalysisResult(tables={"members": dict(table)}, summary=summary,
                              figures={"curves": figure})

    def display(self, tables: Any) -> tuple[str, dict[str, Any]] | None:
        if not tables.get("members"):
            return super().display(tables)
        cols = dict(tables["members"])
        # What a reader asks first comes first: narrow terminals drop columns from the right.
        first = [c for c in cols if c not in ("member", "last_epoch")
                 and not c.startswith(("validation_", "test_")) and c not in ("gain",
                                                                                 "overfit_epoch")]
        order = [*first, *[c for c in cols if c.startswith("test_")], "gain", "overfit_epoch",
                 *[c for c in cols if c.startswith("validation_")], "last_epoch", "member"]
        return ("early stopping per member (best_epoch: chosen on validation; overfit_epoch: "
                "-1 for none)", {c: cols[c] for c in order if c in cols})


def _summary(table: dict[str, list[Any]], metric: str, lower: bool, gain: Any,
             train_loss_stored: bool) -> str:
    import numpy as np

    n = len(table["member"])
    best = np.asarray(table["best_epoch"])
    last = np.asarray(table["last_epoch"])
    early = int(np.sum((best >= 0) & (best < last)))
    picked = ", ".join(str(e) for e in sorted(set(best.tolist())))
    if early:
        text = (f"Early stopping on validation {metric} picks an earlier epoch than the last "
                f"for {early} of {n} members (epochs picked: {picked}).")
    else:
        text = (f"Early stopping on validation {metric} picks the last epoch for all {n} "
                f"members ({'epochs' if ',' in picked else 'epoch'} {picked}).")
    finite = gain[np.isfinite(gain)]
    if len(finite):
        better = "lower" if lower else "higher"
        text += (f" Test {metric} at the picked epoch minus at the last: mean {finite.mean():+.4f} "
                 f"(range {finite.min():+.4f} to {finite.max():+.4f}; {better} is better).")
    onsets = [e for e in table["overfit_epoch"] if e >= 0]
    if not train_loss_stored:
        text += " Overfitting is not measured: the zoo stores no training loss."
    elif onsets:
        text += (f" Validation loss rises while training loss falls in {len(onsets)} of {n} "
                 f"members, first at epoch {min(onsets)}.")
    else:
        text += " No member's validation loss rises while its training loss falls."
    return text


def _figure(members: list[Any], by_member: dict[str, list[Checkpoint]],
            metric: str, table: dict[str, list[Any]]) -> Any:
    """Loss (training solid, validation dashed) and the watched metric (validation
    dashed, test solid) per epoch, one colour per member or per value of the first
    varying factor; a dot marks the epoch early stopping picks."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels, _ = member_labels(members)
    factors = varying_factors(members, skip=("seed",))
    key = factors[0] if factors and len(members) > 10 else None
    values = sorted({str(m.factors.get(key)) for m in members}) if key else []
    cmap = plt.get_cmap("tab10")
    panels = [("loss", ("train", "validation")), (metric, ("validation", "test"))] \
        if metric != "loss" else [("loss", ("train", "validation", "test"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2),
                             layout="constrained", squeeze=False)
    picked = dict(zip(table["member"], table["best_epoch"], strict=True))
    styles = {"train": ":", "validation": "--", "test": "-"}
    for ax, (name, splits) in zip(axes[0], panels, strict=True):
        for i, m in enumerate(members):
            colour = cmap(values.index(str(m.factors.get(key))) % 10 if key else i % 10)
            cps = by_member[m.id]
            for split in splits:
                column = f"{split}_{name}"
                points = [(c.epoch, c.metrics[column]) for c in cps if column in c.metrics]
                if not points:
                    continue
                ax.plot(*zip(*points, strict=True), styles[split], color=colour, lw=1.2,
                        alpha=0.85)
                if split == "validation" and picked[m.id] >= 0:
                    value = dict(points).get(picked[m.id])
                    if value is not None:
                        ax.plot([picked[m.id]], [value], "o", color=colour, ms=5)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.set_title(f"{name} per epoch", fontsize=9)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=cmap(j % 10), lw=2) for j in range(len(values))] \
        if key else [plt.Line2D([], [], color=cmap(i % 10), lw=2) for i in range(len(members))]
    names = [f"{key}={v}" for v in values] if key else [labels[m.id] for m in members]
    if len(names) > 12:
        handles, names = [], []
    used = [s for s in styles if any(s in splits for _, splits in panels)]
    handles += [plt.Line2D([], [], color="0.35", ls=styles[s], lw=1.2) for s in used]
    names += [f"{s} split" for s in used]
    fig.legend(handles, names, loc="outside lower center", ncol=min(4, len(names)),
               fontsize=7, frameon=False)
    fig.suptitle(f"learning curves of {len(members)} members; dots: the epoch early stopping "
                 "on validation picks", fontsize=9)
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(Curves())
