"""The ``predict`` analyzer: test accuracy and generating factors predicted from weight statistics.

As Unterthiner et al. (2020) and Schürholt et al. (2022) do: features from the
weightstats result stored in the zoo (plugins talk only through the zoo),
cross-validated with groups = members, so no member's epochs sit on both sides.
Numeric factors are regressed (R², Kendall τ); every factor but those a random search
drew from a continuous range is also classified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.analysis import (
    AnalysisResult,
    Analyzer,
    Option,
    Selection,
    continuous_factors,
)
from zooscope.errors import ConfigError, ZooscopeError
from zooscope.progress import track
from zooscope.zoo import Zoo

if TYPE_CHECKING:
    import numpy as np

FEATURE_STATS = ("mean", "std", "p1", "p25", "p50", "p75", "p99", "l2", "linf", "skew",
                 "kurtosis", "near_zero", "drift_l2", "drift_cosine")


def feature_matrix(stats: dict[str, np.ndarray]) -> tuple[list[tuple[str, int]], np.ndarray, list[str]]:
    """One row per checkpoint: each statistic averaged over the tensors of each kind."""
    import numpy as np

    keys = sorted(set(zip(stats["member"], stats["epoch"].astype(int), strict=True)))
    row = {k: i for i, k in enumerate(keys)}
    kinds = sorted(set(stats["kind"]))
    names = [f"{kind}.{s}" for kind in kinds for s in FEATURE_STATS if s in stats]
    col = {n: j for j, n in enumerate(names)}
    total = np.zeros((len(keys), len(names)))
    count = np.zeros((len(keys), len(names)))
    rows = np.array([row[(m, int(e))] for m, e in zip(stats["member"], stats["epoch"], strict=True)])
    for s in FEATURE_STATS:
        if s not in stats:
            continue
        values = np.asarray(stats[s], dtype=float)
        for kind in kinds:
            sel = (np.asarray(stats["kind"]) == kind) & np.isfinite(values)
            j = col[f"{kind}.{s}"]
            np.add.at(total[:, j], rows[sel], values[sel])
            np.add.at(count[:, j], rows[sel], 1)
    with np.errstate(invalid="ignore"):
        x = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return keys, x, names


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, estimator: Any,
                   folds: int, stratify: bool = False) -> np.ndarray:
    """Out-of-fold predictions with GroupKFold (groups = members); stratified for classes."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, cross_val_predict

    cv = StratifiedGroupKFold(n_splits=folds) if stratify else GroupKFold(n_splits=folds)
    return cross_val_predict(estimator, x, y, groups=groups, cv=cv)


def regressors() -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {"gradient_boosting": GradientBoostingRegressor(random_state=0),
            "linear": make_pipeline(StandardScaler(), Ridge(alpha=1.0))}


def classifiers() -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {"gradient_boosting": GradientBoostingClassifier(random_state=0),
            "linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))}


class Predict(Analyzer):
    name = "predict"
    description = ("predict test accuracy (regression) and generating factors (classification) "
                   "from weightstats features, cross-validated by member")
    options = (
        Option("target", str, "test_accuracy", "the metric to regress"),
        Option("folds", int, 5, "cross-validation folds (at most the number of members)"),
    )
    inputs = ("weightstats",)

    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        import numpy as np
        from scipy.stats import kendalltau
        from sklearn.metrics import accuracy_score, r2_score

        if options["target"] not in zoo.metric_columns:
            raise ConfigError(f"option target = {options['target']!r} is not a metric of this zoo",
                              hint=f"its metrics: {', '.join(zoo.metric_columns)}")
        if options["folds"] < 2:
            raise ConfigError(f"option folds = {options['folds']}: cross-validation needs at "
                              "least 2 folds")
        tables = selection.input_tables(zoo, "weightstats")
        if tables is None:
            raise ZooscopeError("predict needs the weightstats result of the zoo",
                                hint="run `zooscope analyze ZOO --plugin weightstats` first; from "
                                     "Python, zooscope.analyze(zoo, \"predict\", inputs={"
                                     "\"weightstats\": zooscope.analyze(zoo, \"weightstats\")})")
        stats = tables["stats"]
        wanted = {m.id for m in selection.members}
        keys, x, names = feature_matrix(stats)
        by_key = {(c.member, c.epoch): c for c in zoo.checkpoints(selection.members,
                                                                  selection.epochs)}
        keep = [i for i, k in enumerate(keys) if k[0] in wanted and k in by_key]
        keys = [keys[i] for i in keep]
        x = x[keep]
        groups = np.array([k[0] for k in keys])
        folds = min(int(options["folds"]), len(set(groups)))
        if folds < 2:
            raise ZooscopeError("predict needs at least two members with weightstats features")
        results: dict[str, list[Any]] = {"target": [], "model": [], "metric": [], "value": []}
        target = options["target"]
        y = np.array([by_key[k].metrics.get(target, np.nan) for k in keys])
        ok = np.isfinite(y)
        if ok.sum() >= folds:
            for model, est in regressors().items():
                pred = cross_validate(x[ok], y[ok], groups[ok], est, folds)
                tau = kendalltau(y[ok], pred).statistic
                for metric, value in (("r2", r2_score(y[ok], pred)), ("kendall_tau", tau)):
                    results["target"].append(target)
                    results["model"].append(model)
                    results["metric"].append(metric)
                    results["value"].append(float(value))
        members = {m.id: m for m in zoo.members()}
        # Numeric factors (a learning-rate grid; not the seed) are also regressed, so
        # their rank order can be scored like the target's (Kendall tau).
        for factor in sorted({f for m in selection.members for f in m.factors} - {"seed"}):
            values = [members[k[0]].factors.get(factor) for k in keys]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) \
                    or len(set(values)) < 2:
                continue
            yf = np.asarray(values, dtype=np.float64)
            for model, est in regressors().items():
                pred = cross_validate(x, yf, groups, est, folds)
                for metric, value in (("r2", r2_score(yf, pred)),
                                      ("kendall_tau", kendalltau(yf, pred).statistic)):
                    results["target"].append(factor)
                    results["model"].append(model)
                    results["metric"].append(metric)
                    results["value"].append(float(value))
        # Factors a random search drew from a continuous range are only regressed: each
        # point has a value of its own, so a held-out member's is never a class seen.
        drawn = continuous_factors(zoo)
        for factor in track(sorted({f for m in selection.members for f in m.factors} - drawn),
                            "predict: factors"):
            labels = np.array([str(members[k[0]].factors.get(factor)) for k in keys])
            if len(set(labels)) < 2:
                continue
            scores = {}
            for model, est in classifiers().items():
                try:
                    pred = cross_validate(x, labels, groups, est, folds, stratify=True)
                    scores[model] = float(accuracy_score(labels, pred))
                except ValueError:  # a training fold saw a single class: too few members
                    scores[model] = float("nan")
            scores["chance"] = float(max(np.mean(labels == v) for v in set(labels)))
            for model, value in scores.items():
                results["target"].append(factor)
                results["model"].append(model)
                results["metric"].append("accuracy")
                results["value"].append(value)
        summary = self._summary(results, len(keys), len(set(groups)), len(names), target)
        return AnalysisResult(tables={"scores": results},
                              summary=summary, figures={"scores": _plot(results)})

    @staticmethod
    def _summary(r: dict[str, list[Any]], n: int, members: int, features: int, target: str) -> str:
        scores = [f"{t} {metric} {v:.3f}" for t, m, metric, v in
                  zip(r["target"], r["model"], r["metric"], r["value"], strict=True)
                  if m == "gradient_boosting"]
        return (f"{n} checkpoints of {members} members, {features} features, GroupKFold by "
                f"member. Gradient boosting: {'; '.join(scores)}.")


def _plot(r: dict[str, list[Any]]) -> Any:
    """Regression scores (R², Kendall τ) and factor accuracies in two panels, a colour
    per model or metric, chance as a line over each factor's bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(zip(r["target"], r["model"], r["metric"], r["value"], strict=True))
    regression = [row for row in rows if row[2] != "accuracy"]
    factors = list(dict.fromkeys(t for t, _, metric, _ in rows if metric == "accuracy"))
    panels = [p for p, used in (("regression", regression), ("factors", factors)) if used]
    if not panels:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "nothing to predict: too few members", ha="center", va="center")
        ax.set_axis_off()
        return fig
    targets = len({t for t, _, _, _ in regression})
    widths = {"regression": 3.5 * max(1, targets) ** 0.8,
              "factors": max(3.0, 1.0 * len(factors) + 1.5)}
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths[p] for p in panels) + 0.5, 3.8),
                             squeeze=False, layout="constrained",
                             width_ratios=[widths[p] for p in panels])
    colours = {"gradient_boosting": "tab:blue", "linear": "tab:orange"}
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "regression":
            # One group of bars per (target, score): the metric's, then numeric factors'.
            metrics = list(dict.fromkeys((t, m) for t, _, m, _ in regression))
            models = list(dict.fromkeys(m for _, m, _, _ in regression))
            x = np.arange(len(metrics))
            step = 0.8 / len(models)
            for k, model in enumerate(models):
                values = [next((v for t, mo, me, v in regression
                                if mo == model and (t, me) == m), np.nan) for m in metrics]
                xs = x - 0.4 + step * (k + 0.5)
                # R² has no lower bound: the axis stops at -1 and each bar carries its value.
                ax.bar(xs, np.clip(values, -1, 1), step, label=model,
                       color=colours.get(model, f"C{k}"))
                for xi, v in zip(xs, values, strict=True):
                    ax.text(xi, 0.02 if not v < 0 else -0.02, f"{v:.2f}", ha="center",
                            va="bottom" if not v < 0 else "top", fontsize=7)
            names = {"r2": "R²", "kendall_tau": "Kendall τ"}
            targets = list(dict.fromkeys(t for t, _ in metrics))
            ax.set_xticks(x, [names.get(m, m) + (f"\n{t}" if len(targets) > 1 else "")
                              for t, m in metrics], fontsize=8 if len(targets) > 1 else None)
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_ylabel("score (out-of-fold)" if len(targets) > 1 else
                          f"{targets[0]}: score (out-of-fold)")
            ax.set_title(f"regressing {', '.join(targets)}", fontsize=10)
            ax.set_ylim(-1.0, 1.0)
        else:
            models = list(dict.fromkeys(m for _, m, me, _ in rows
                                        if me == "accuracy" and m != "chance"))
            x = np.arange(len(factors))
            step = 0.8 / max(len(models), 1)
            for k, model in enumerate(models):
                values = [next((v for t, mo, me, v in rows
                                if t == f and mo == model and me == "accuracy"), np.nan)
                          for f in factors]
                ax.bar(x - 0.4 + step * (k + 0.5), values, step, label=model,
                       color=colours.get(model, f"C{k}"))
            chance = [next((v for t, mo, _, v in rows if t == f and mo == "chance"), np.nan)
                      for f in factors]
            ax.hlines(chance, x - 0.45, x + 0.45, colors="black", linestyles="--", linewidth=1.2,
                      label="chance")
            ax.set_xticks(x, factors, rotation=30 if len(factors) > 3 else 0,
                          ha="right" if len(factors) > 3 else "center")
            ax.set_ylim(0, 1.0)
            ax.set_ylabel("accuracy (out-of-fold)")
            ax.set_title("classifying generating factors", fontsize=10)
        # Below the axes: a legend inside would sit on a bar.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 if panel == "regression" or
                                                      len(factors) <= 3 else -0.3),
                  ncol=3, fontsize=7, frameon=False)
    fig.suptitle("predicting from weight statistics, cross-validated by member", fontsize=10)
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(Predict())
