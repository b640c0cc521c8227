"""The ``sparsify`` analyzer: magnitude pruning at several sparsities, re-evaluated on the test split.

Models are rebuilt from the zoo file alone (stored config and tokenizer; data as
the zoo recorded it). The global threshold is found without concatenating the
parameters: a binary search over float bit patterns, one pass over the tensors a step.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.analysis import (
    AnalysisResult,
    Analyzer,
    Option,
    Selection,
    member_labels,
    option_pattern,
    varying_factors,
)
from zooscope.errors import ConfigError
from zooscope.progress import track
from zooscope.services.evaluation import Evaluator
from zooscope.zoo import Member, Zoo

if TYPE_CHECKING:
    import numpy as np


def global_threshold(magnitudes: list[np.ndarray], k: int) -> np.float32:
    """The k-th smallest value over several arrays of non-negative float32, without concatenating.

    Non-negative IEEE floats order like their bit patterns read as integers, so a
    binary search over 31-bit integers finds the exact value in at most 31 passes.
    """
    import numpy as np

    if k <= 0:
        return np.float32(-1.0)  # prunes nothing
    bits = [m.astype(np.float32, copy=False).view(np.int32) for m in magnitudes]
    lo, hi = 0, max(int(b.max()) for b in bits if b.size)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(int(np.count_nonzero(b <= mid)) for b in bits) >= k:
            hi = mid
        else:
            lo = mid + 1
    return np.int32(lo).view(np.float32)


def magnitude_masks(tensors: dict[str, np.ndarray], amount: float, scope: str) -> dict[str, np.ndarray]:
    """Keep-masks (True = kept) pruning the given fraction of smallest-magnitude weights."""
    import numpy as np

    mags = {n: np.abs(t.astype(np.float32, copy=False)) for n, t in tensors.items()}
    if scope == "global":
        total = sum(m.size for m in mags.values())
        t = global_threshold(list(mags.values()), int(round(amount * total)))
        return {n: m > t for n, m in mags.items()}
    masks = {}
    for n, m in mags.items():
        k = int(round(amount * m.size))
        if k == 0:
            masks[n] = np.ones(m.shape, dtype=bool)
        else:
            kth = np.partition(m.reshape(-1), k - 1)[k - 1]
            masks[n] = m > kth
    return masks


class Sparsify(Analyzer):
    name = "sparsify"
    description = "magnitude pruning at several sparsities; test metric against sparsity"
    options = (
        Option("sparsities", list, ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8",
                                    "0.9"], "sparsity levels, comma-separated"),
        Option("scope", str, "global", "one threshold for all tensors, or one per tensor",
               choices=("global", "layerwise")),
        Option("exclude", str, r"(bias|LayerNorm|layer_norm|embeddings)",
               "regex of tensors left dense"),
        Option("metric", str, "test_accuracy", "the metric to report"),
        Option("tolerance", float, 0.01, "how far below the dense model a sparsity may fall "
               "and still count as kept (0.01 = one point of accuracy)"),
    )

    def display(self, tables: Any) -> tuple[str, dict[str, Any]] | None:
        """The metric at each sparsity over members; every member's curve is in curves.csv."""
        table = tables.get("by_sparsity")
        if not table:
            return super().display(tables)
        metric = next(c for c in table if c.startswith("mean_")).removeprefix("mean_")
        heads = {"sparsity": "sparsity", "realised_sparsity": "realised", "members": "members",
                 f"mean_{metric}": f"mean {metric}", f"min_{metric}": "min",
                 f"max_{metric}": "max"}
        return (f"{metric} over members at each sparsity",
                {head: list(table[c]) for c, head in heads.items()})

    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        import numpy as np
        import torch

        text = ",".join(options["sparsities"])
        try:
            levels = sorted({float(s) for s in options["sparsities"]})
        except ValueError:
            levels = []
        if not levels or not all(0 <= s < 1 for s in levels):
            raise ConfigError(f"option sparsities = {text!r} must be numbers in [0, 1)",
                              hint="e.g. --set sparsities=0,0.5,0.9")
        exclude = option_pattern("exclude", options["exclude"])
        if options["metric"] not in zoo.metric_columns:
            raise ConfigError(f"option metric = {options['metric']!r} is not a metric of this zoo",
                              hint=f"its metrics: {', '.join(zoo.metric_columns)}")
        evaluator = Evaluator(zoo)
        cps = selection.checkpoints(zoo)
        if selection.epochs is None:  # default: each member's last epoch
            last: dict[str, Any] = {}
            for c in cps:
                if c.member not in last or c.epoch > last[c.member].epoch:
                    last[c.member] = c
            cps = list(last.values())
        curves: dict[str, list[Any]] = defaultdict(list)
        layers: dict[str, list[Any]] = defaultdict(list)
        for c in track(cps, "sparsify: pruning checkpoints"):
            model, tokenizer = evaluator.model(c)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            prunable = {n: v.numpy() for n, v in state.items()
                        if v.is_floating_point() and v.dim() >= 2 and not exclude.search(n)}
            for level in levels:
                masks = magnitude_masks(prunable, level, options["scope"])
                pruned = dict(state)
                for n, mask in masks.items():
                    pruned[n] = state[n] * torch.from_numpy(mask)
                model.load_state_dict(pruned)
                metrics, _ = evaluator.evaluate(model, tokenizer)
                kept = sum(int(m.sum()) for m in masks.values())
                total = sum(m.size for m in masks.values())
                curves["member"].append(c.member)
                curves["epoch"].append(c.epoch)
                curves["sparsity"].append(level)
                curves["realised_sparsity"].append(1 - kept / max(total, 1))
                curves[options["metric"]].append(metrics.get(options["metric"], np.nan))
                for n, mask in masks.items():
                    layers["member"].append(c.member)
                    layers["epoch"].append(c.epoch)
                    layers["sparsity"].append(level)
                    layers["tensor"].append(n)
                    layers["realised_sparsity"].append(float(1 - mask.mean()))
        summary = _summary(curves, options["metric"], levels)
        kept = kept_sparsity(curves, options["metric"], selection.members,
                             float(options["tolerance"]))
        if kept["configuration"] and 0.0 in levels:
            widest = max(kept["kept_sparsity"])
            summary += (f" Largest sparsity within {options['tolerance']:g} of the dense "
                        f"{options['metric']} (mean over seeds): {min(kept['kept_sparsity']):g}"
                        f" to {widest:g} over {len(kept['configuration'])} configurations.")
        return AnalysisResult(tables={"curves": dict(curves), "layers": dict(layers),
                                      "by_sparsity": by_sparsity(curves, options["metric"]),
                                      "kept": kept},
                              summary=summary,
                              figures={"sparsity_curves": _plot(curves, options["metric"],
                                                                selection.members,
                                                                options["scope"])})


def by_sparsity(curves: dict[str, list[Any]], metric: str) -> dict[str, list[Any]]:
    """The metric's mean, minimum and maximum over members at each sparsity."""
    import numpy as np

    s = np.asarray(curves["sparsity"], dtype=float)
    v = np.asarray(curves[metric], dtype=float)
    real = np.asarray(curves["realised_sparsity"], dtype=float)
    out: dict[str, list[Any]] = defaultdict(list)
    for level in sorted(set(s.tolist())):
        sel = s == level
        out["sparsity"].append(level)
        out["members"].append(len(set(np.asarray(curves["member"])[sel])))
        out["realised_sparsity"].append(float(real[sel].mean()))
        for name, f in (("mean", np.nanmean), ("min", np.nanmin), ("max", np.nanmax)):
            out[f"{name}_{metric}"].append(float(f(v[sel])) if np.isfinite(v[sel]).any()
                                           else float("nan"))
    return dict(out)


def kept_sparsity(curves: dict[str, list[Any]], metric: str, members: list[Member],
                  tolerance: float) -> dict[str, list[Any]]:
    """Per configuration (the factors that vary, but the seed) and epoch: the metric at
    each sparsity averaged over seeds, and the largest sparsity up to which every level
    stays within ``tolerance`` of the dense (0 % pruned) model. Empty where the levels
    do not include 0."""
    import numpy as np

    by_id = {m.id: m for m in members}
    varying = varying_factors(members, skip=("seed",))
    values: dict[tuple[str, int], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds: dict[tuple[str, int], set[str]] = defaultdict(set)
    factors: dict[str, dict[str, Any]] = {}
    for m, e, level, v in zip(curves["member"], curves["epoch"], curves["sparsity"],
                              curves[metric], strict=True):
        rest = {f: by_id[m].factors.get(f) for f in varying}
        label = ", ".join(f"{f}={x}" for f, x in rest.items()) or "all"
        factors[label] = rest
        values[(label, e)][float(level)].append(float(v))
        seeds[(label, e)].add(m)
    table: dict[str, list[Any]] = {"configuration": [], **{f: [] for f in varying},
                                   "epoch": [], "seeds": [], f"dense_{metric}": [],
                                   "kept_sparsity": [], f"{metric}_at_kept": []}
    for (label, epoch), at in sorted(values.items()):
        if 0.0 not in at:
            continue
        means = {level: float(np.nanmean(v)) for level, v in sorted(at.items())}
        dense = means[0.0]
        kept = 0.0
        for level, mean in means.items():  # ascending: stop at the first level that falls
            if not mean >= dense - tolerance:
                break
            kept = level
        table["configuration"].append(label)
        for f in varying:
            table[f].append(factors[label][f])
        table["epoch"].append(epoch)
        table["seeds"].append(len(seeds[(label, epoch)]))
        table[f"dense_{metric}"].append(dense)
        table["kept_sparsity"].append(kept)
        table[f"{metric}_at_kept"].append(means[kept])
    return table


def _summary(curves: dict[str, list[Any]], metric: str, levels: list[float]) -> str:
    import numpy as np

    s = np.asarray(curves["sparsity"])
    v = np.asarray(curves[metric], dtype=float)
    means = {lv: float(np.nanmean(v[s == lv])) for lv in levels}
    first, last = levels[0], levels[-1]
    return (f"mean {metric} over {len(set(curves['member']))} members: {means[first]:.3f} at "
            f"sparsity {first:g}, {means[last]:.3f} at {last:g}.")


def _plot(curves: dict[str, list[Any]], metric: str, members: list[Member], scope: str) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np

    ids = np.asarray(curves["member"])
    labels, constant = member_labels([m for m in members if m.id in set(ids)])
    epochs = sorted(set(curves["epoch"]))
    when = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {', '.join(map(str, epochs))}"
    shown = sorted(set(ids), key=lambda i: labels[i])
    # Many members: one colour per value of the first factor that varies (not the seed),
    # with a legend of those values; a colour per member would repeat and mean nothing.
    by_id = {m.id: m for m in members}
    varying = varying_factors([by_id[i] for i in set(ids)], skip=("seed",))
    group = varying[0] if len(shown) > 12 and varying else None
    values = sorted({str(by_id[m].factors.get(group)) for m in shown}) if group else []
    palette = plt.cm.viridis(np.linspace(0, 0.9, max(len(values), 1)))
    fig, ax = plt.subplots(figsize=(6.5 if len(shown) <= 12 or group else 5, 3.8),
                           layout="constrained")
    epoch_of = np.asarray(curves["epoch"])
    styles = ["-", "--", ":", "-."]
    legend_done: set[str] = set()
    for k, m in enumerate(shown):
        value = str(by_id[m].factors.get(group)) if group else ""
        colour = palette[values.index(value)] if group else f"C{k % 10}"
        # One curve per checkpoint: a member pruned at several epochs gets one per epoch.
        for j, e in enumerate(epochs):
            sel = (ids == m) & (epoch_of == e)
            if sel.any():
                label = (f"{group}={value}" if value not in legend_done else None) if group \
                    else labels[m] + (f", epoch {e}" if len(epochs) > 1 else "")
                legend_done.add(value)
                ax.plot(np.asarray(curves["sparsity"])[sel], np.asarray(curves[metric])[sel],
                        marker="o", markersize=3, alpha=0.7, color=colour,
                        linestyle=styles[j % 4], label=label)
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_ylabel(metric)
    ax.set_title(f"magnitude pruning ({scope}), {when}" + (f"\n{constant}" if constant else ""),
                 fontsize=9)
    if len(shown) <= 12 or group:  # beside the axes, where it covers no curve
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(Sparsify())
