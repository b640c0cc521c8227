"""The ``predict`` analyzer: test accuracy and generating factors predicted from weight statistics.

As Unterthiner et al. (2020) and Schürholt et al. (2022) do: features from the
weightstats result stored in the zoo (plugins talk only through the zoo),
cross-validated with groups = members, so no member's epochs sit on both sides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.analysis import AnalysisResult, Analyzer, Option, Selection
from zooscope.errors import ZooscopeError
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

        source = selection.inputs.get("weightstats")
        if source is None:
            raise ZooscopeError("predict needs the weightstats result in the zoo",
                                hint="run `zooscope analyze ZOO --plugin weightstats` first")
        stats = zoo.analysis_tables("weightstats", source["key"])["stats"]
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
        for factor in sorted({f for m in selection.members for f in m.factors}):
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
        parts = [f"{n} checkpoints of {members} members, {features} features, GroupKFold by member."]
        for t, m, metric, v in zip(r["target"], r["model"], r["metric"], r["value"], strict=True):
            if m == "gradient_boosting":
                parts.append(f"{t}: {metric} {v:.3f}")
        return " ".join(parts)


def _plot(r: dict[str, list[Any]]) -> Any:
    import matplotlib.pyplot as plt

    labels = [f"{t}\n{m}\n{metric}" for t, m, metric in
              zip(r["target"], r["model"], r["metric"], strict=True)]
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(labels)), 3.5))
    ax.bar(range(len(labels)), r["value"], color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, fontsize=6)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_title("predicting from weight statistics (out-of-fold)")
    fig.tight_layout()
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(Predict())
