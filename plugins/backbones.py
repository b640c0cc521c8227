"""The ``backbones`` analyzer: which backbone does best, with its configuration chosen on dev.

For every backbone, each configuration (the member's factors but the seed, so
learning rate and epochs) is scored on the validation (dev) split at its last
epoch, averaged over seeds; the best one's test score is reported. This is the
model-selection protocol of a backbone comparison: the test split chooses nothing.

How sure is the ranking? The chosen configurations' test scores get 95 % intervals from
the multi-bootstrap (``zooscope.services.bootstrap``): seeds and test examples resampled jointly,
so an interval covers both the luck of the seed and that of the test set; and for every
two backbones, the difference, its interval and the probability that the higher-ranked
one scores higher.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import zooscope
from zooscope.analysis import (
    BOOTSTRAP_OPTIONS,
    AnalysisResult,
    Analyzer,
    Option,
    Selection,
    example_scores,
    require_metrics,
)
from zooscope.errors import ZooFileError
from zooscope.zoo import Zoo, canonical_json


def short_name(backbone: str) -> str:
    """A readable label: the last path part of a hub id or directory, zoo refs abridged."""
    if backbone.startswith("zoo://"):
        return backbone.removeprefix("zoo://").replace("#member=", " ").replace("&epoch=", " e")
    return backbone.rstrip("/").rsplit("/", 1)[-1] or backbone


class Backbones(Analyzer):
    name = "backbones"
    description = "best configuration per backbone chosen on dev, its test score, and a bar chart"
    options = (
        Option("metric", str, "accuracy", "the metric to compare (a column without its split "
               "prefix: accuracy, f1, exact_match, loss)"),
        Option("select_on", str, "validation", "the split that chooses the configuration",
               choices=("validation", "train")),
        *BOOTSTRAP_OPTIONS,
    )

    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        import numpy as np

        metric = options["metric"]
        select, report = f"{options['select_on']}_{metric}", f"test_{metric}"
        require_metrics(zoo, select, report)
        lower_is_better = metric == "loss"
        configs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for m in selection.members:
            cps = zoo.checkpoints([m], selection.epochs)
            if not cps:
                continue
            last = cps[-1]
            rest = {k: v for k, v in m.factors.items() if k not in ("seed", "backbone")}
            configs[(str(m.factors.get("backbone")), canonical_json(rest))].append(
                {"member": m.id, "epoch": last.epoch, "factors": rest, "checkpoint": last,
                 "dev": last.metrics.get(select, np.nan), "test": last.metrics.get(report, np.nan)})
        if not configs:
            raise ZooFileError("the selected members have no committed checkpoints")
        every: dict[str, list[Any]] = defaultdict(list)
        best: dict[str, dict[str, Any]] = {}
        chosen: dict[str, list[Any]] = {}
        for (backbone, _), runs in sorted(configs.items()):
            dev = float(np.nanmean([r["dev"] for r in runs]))
            test = float(np.nanmean([r["test"] for r in runs]))
            row = {"backbone": backbone, **{k: v for k, v in runs[0]["factors"].items()},
                   "epoch": runs[0]["epoch"], "seeds": len(runs), f"dev_{metric}": dev,
                   f"test_{metric}": test,
                   # the spread over seeds (sample standard deviation; NaN for one seed)
                   f"dev_{metric}_std": _seed_std([r["dev"] for r in runs]),
                   f"test_{metric}_std": _seed_std([r["test"] for r in runs])}
            for k, v in row.items():
                every[k].append(v)
            sign = -1 if lower_is_better else 1
            if backbone not in best or sign * dev > sign * best[backbone][f"dev_{metric}"]:
                best[backbone] = row
                chosen[backbone] = [r["checkpoint"] for r in runs]
        rows = sorted(best.values(), key=lambda r: r[f"test_{metric}"], reverse=not lower_is_better)
        comparisons, note = _confidence(zoo, rows, chosen, metric, options)
        table: dict[str, list[Any]] = defaultdict(list)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        for r in rows:
            for k in keys:
                table[k].append(r.get(k))
        top = rows[0]
        summary = (f"{len(rows)} backbones; configuration chosen on {options['select_on']} "
                   f"{metric}. Best on test: {short_name(top['backbone'])} with {metric} "
                   f"{top[f'test_{metric}']:.3f}{_span(top, metric)} (dev "
                   f"{top[f'dev_{metric}']:.3f}).")
        if len(rows) > 1:
            low = rows[-1]
            summary += (f" Lowest: {short_name(low['backbone'])} at "
                        f"{low[f'test_{metric}']:.3f}{_span(low, metric)}.")
        if comparisons.get("p_better"):
            summary += (f" {short_name(top['backbone'])} scores higher than "
                        f"{short_name(comparisons['versus'][0])} in "
                        f"{comparisons['p_better'][0]:.0%} of bootstrap replicates.")
        summary += note
        tables = {"best": dict(table), "configurations": dict(every)}
        if comparisons:
            tables["comparisons"] = comparisons
        return AnalysisResult(tables=tables, summary=summary,
                              figures={"backbones": _bars(rows, metric)})


    def display(self, tables: Any) -> tuple[str, dict[str, Any]] | None:
        """The best configuration of each backbone, its name shortened."""
        if not tables.get("best"):
            return super().display(tables)
        best = tables["best"]
        metric = next(c for c in best if c.startswith("dev_")).removeprefix("dev_")
        cols = {c: list(v) for c, v in best.items()
                if not c.endswith(("_std", "_low", "_high"))}
        cols["backbone"] = [short_name(str(b)) for b in cols["backbone"]]
        title = "best configuration per backbone, chosen on dev"
        if f"test_{metric}_low" in best:
            cols["test 95% interval"] = [
                f"{lo:.3f}–{hi:.3f}" for lo, hi in zip(best[f"test_{metric}_low"],
                                                       best[f"test_{metric}_high"], strict=True)]
            title += "; interval: multi-bootstrap over seeds and test examples"
        return title, cols


def _confidence(zoo: Zoo, rows: list[dict[str, Any]], chosen: dict[str, list[Any]], metric: str,
                options: dict[str, Any]) -> tuple[dict[str, list[Any]], str]:
    """Add each row's multi-bootstrap interval (``test_{metric}_low``/``_high``), and return
    the pairwise comparisons in ranking order, with a note for the summary."""
    from zooscope.services.bootstrap import LEVEL, multi_bootstrap

    replicates = options["bootstrap"]
    if not replicates:
        return {}, ""
    scores = [example_scores(zoo, chosen[r["backbone"]], metric) for r in rows]
    if any(s is None for s in scores):
        return {}, (f" No intervals: {metric} is not scored per test example in this zoo "
                    "(accuracy for class labels, exact_match and f1 for answers are).")
    intervals, pairs = multi_bootstrap(scores, replicates, options["bootstrap_seed"])
    for row, (low, high) in zip(rows, intervals, strict=True):
        row[f"test_{metric}_low"], row[f"test_{metric}_high"] = low, high
    table: dict[str, list[Any]] = defaultdict(list)
    for c in pairs:
        table["backbone"].append(rows[c.a]["backbone"])
        table["versus"].append(rows[c.b]["backbone"])
        table[f"difference_{metric}"].append(c.difference)
        table["difference_low"].append(c.low)
        table["difference_high"].append(c.high)
        table["p_better"].append(c.p_a_better)
    return dict(table), (f" Intervals: {LEVEL:.0%}, multi-bootstrap over seeds and test "
                         f"examples ({replicates} replicates).")


def _span(row: dict[str, Any], metric: str) -> str:
    low = row.get(f"test_{metric}_low")
    return "" if low is None else f" [{low:.3f}, {row[f'test_{metric}_high']:.3f}]"


def _seed_std(values: list[float]) -> float:
    import numpy as np

    finite = np.asarray([v for v in values if v == v], dtype=np.float64)
    return float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")


def _bars(rows: list[dict[str, Any]], metric: str) -> Any:
    """Dev and test score of each backbone's chosen configuration, the configuration
    written under its name, the legend below the axes where it covers no bar."""
    import matplotlib.pyplot as plt
    import numpy as np

    skip = {"backbone", "seeds", "epoch", f"dev_{metric}", f"test_{metric}",
            f"dev_{metric}_std", f"test_{metric}_std", f"test_{metric}_low",
            f"test_{metric}_high"}
    names = [short_name(r["backbone"]) + "\n" + "\n".join(
        f"{k}={v}" for k, v in r.items() if k not in skip)
        + f"\nscored at epoch {r['epoch']}\n{r['seeds']} seeds" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(rows) + 2), 4.8), layout="constrained")
    dev = [r[f"dev_{metric}"] for r in rows]
    test = [r[f"test_{metric}"] for r in rows]
    # Error bars: on dev the standard deviation over seeds, where there are several; on
    # test the multi-bootstrap interval where there is one, else the same deviation.
    dev_err = [r.get(f"dev_{metric}_std", np.nan) for r in rows]
    bootstrapped = all(f"test_{metric}_low" in r for r in rows)
    if bootstrapped:
        test_err = np.array([[t - r[f"test_{metric}_low"] for t, r in zip(test, rows, strict=True)],
                             [r[f"test_{metric}_high"] - t for t, r in zip(test, rows, strict=True)]])
        test_label = "test (error bar: 95 % multi-bootstrap interval)"
        bars = "error bars: dev ± standard deviation over seeds"
    else:
        test_err = np.array([r.get(f"test_{metric}_std", np.nan) for r in rows])
        test_label, bars = "test", "error bars: ± standard deviation over seeds"
    ax.bar(x - 0.2, dev, 0.4, yerr=dev_err, capsize=3, label="dev (chooses the configuration)")
    ax.bar(x + 0.2, test, 0.4, yerr=test_err, capsize=3, label=test_label)
    tops = [np.nansum([v, e]) for v, e in zip(dev, dev_err, strict=True)]
    tops += [v + (test_err[1][i] if bootstrapped else np.nan_to_num(test_err[i]))
             for i, v in enumerate(test)]
    for xs, values, k in ((x - 0.2, dev, 0), (x + 0.2, test, len(rows))):
        for i, (xi, v) in enumerate(zip(xs, values, strict=True)):
            ax.text(xi, tops[k + i], f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    top = np.nanmax(tops) if len(rows) else 1.0
    ax.set_ylim(0, top * 1.12 if np.isfinite(top) and top > 0 else 1.0)
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of each backbone's best configuration\n(chosen on dev, "
                 f"mean over seeds)\n{bars}", fontsize=9)
    fig.legend(loc="outside lower center", ncol=2 if len(rows) > 1 else 1, fontsize=7,
               frameon=False)
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(Backbones())
