"""The ``backbones`` analyzer: which backbone does best, with its configuration chosen on dev.

For every backbone, each configuration (the member's factors but the seed, so
learning rate and epochs) is scored on the validation (dev) split at its last
epoch, averaged over seeds; the best one's test score is reported. This is the
model-selection protocol of a backbone comparison: the test split chooses nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import zooscope
from zooscope.analysis import AnalysisResult, Analyzer, Option, Selection, require_metrics
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
                {"member": m.id, "epoch": last.epoch, "factors": rest,
                 "dev": last.metrics.get(select, np.nan), "test": last.metrics.get(report, np.nan)})
        if not configs:
            raise ZooFileError("the selected members have no committed checkpoints")
        every: dict[str, list[Any]] = defaultdict(list)
        best: dict[str, dict[str, Any]] = {}
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
        rows = sorted(best.values(), key=lambda r: r[f"test_{metric}"], reverse=not lower_is_better)
        table: dict[str, list[Any]] = defaultdict(list)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        for r in rows:
            for k in keys:
                table[k].append(r.get(k))
        top = rows[0]
        summary = (f"{len(rows)} backbones; configuration chosen on {options['select_on']} "
                   f"{metric}. Best on test: {short_name(top['backbone'])} with {metric} "
                   f"{top[f'test_{metric}']:.3f} (dev {top[f'dev_{metric}']:.3f}).")
        if len(rows) > 1:
            low = rows[-1]
            summary += (f" Lowest: {short_name(low['backbone'])} at "
                        f"{low[f'test_{metric}']:.3f}.")
        return AnalysisResult(tables={"best": dict(table), "configurations": dict(every)},
                              summary=summary, figures={"backbones": _bars(rows, metric)})


    def display(self, tables: Any) -> tuple[str, dict[str, Any]] | None:
        """The best configuration of each backbone, its name shortened."""
        if not tables.get("best"):
            return super().display(tables)
        cols = {c: list(v) for c, v in tables["best"].items()}
        cols["backbone"] = [short_name(str(b)) for b in cols["backbone"]]
        return "best configuration per backbone, chosen on dev", cols


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
            f"dev_{metric}_std", f"test_{metric}_std"}
    names = [short_name(r["backbone"]) + "\n" + "\n".join(
        f"{k}={v}" for k, v in r.items() if k not in skip)
        + f"\nscored at epoch {r['epoch']}\n{r['seeds']} seeds" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(rows) + 2), 4.8), layout="constrained")
    dev = [r[f"dev_{metric}"] for r in rows]
    test = [r[f"test_{metric}"] for r in rows]
    # Error bars: the standard deviation over seeds, where there are several.
    spread = [[r.get(f"{split}_{metric}_std", np.nan) for r in rows] for split in ("dev", "test")]
    ax.bar(x - 0.2, dev, 0.4, yerr=spread[0], capsize=3, label="dev (chooses the configuration)")
    ax.bar(x + 0.2, test, 0.4, yerr=spread[1], capsize=3, label="test")
    for xs, values in ((x - 0.2, dev), (x + 0.2, test)):
        for xi, v in zip(xs, values, strict=True):
            ax.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    top = np.nanmax(dev + test) if len(rows) else 1.0
    ax.set_ylim(0, top * 1.12 if np.isfinite(top) and top > 0 else 1.0)
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of each backbone's best configuration\n(chosen on dev, "
                 "mean over seeds, bars: standard deviation)", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32 if len(names) else -0.1),
              ncol=2, fontsize=7, frameon=False)
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(Backbones())
