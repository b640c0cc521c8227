"""The ``umap`` analyzer: every checkpoint as a point in a 2-D UMAP embedding of its weights.

Flattened weights are first reduced by a sparse random projection streamed over
one tensor and one block of checkpoints at a time, so no zoo has to fit in memory;
then umap-learn with a fixed random_state. Trajectories join a member's epochs.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.analysis import (
    AnalysisResult,
    Analyzer,
    Option,
    Selection,
    member_labels,
    select_tensors,
)
from zooscope.errors import ConfigError
from zooscope.progress import track
from zooscope.zoo import Member, Zoo

if TYPE_CHECKING:
    import numpy as np


def sparse_projection(dim: int, k: int, seed: int) -> Any:
    """A (dim × k) Achlioptas/Li sparse random projection, density 1/sqrt(dim)."""
    import numpy as np
    from scipy import sparse

    rng = np.random.default_rng(seed)
    density = 1.0 / np.sqrt(dim)
    nnz_per_col = rng.binomial(dim, density, size=k)
    rows = np.concatenate([rng.choice(dim, size=n, replace=False) for n in nnz_per_col])
    cols = np.repeat(np.arange(k), nnz_per_col)
    signs = rng.choice([-1.0, 1.0], size=len(rows)) * np.sqrt(1.0 / (density * k))
    return sparse.csc_matrix((signs, (rows, cols)), shape=(dim, k), dtype=np.float64)


def project_weights(zoo: Zoo, checkpoints: list[Any], names: list[str], k: int, seed: int,
                    block_mb: float = 256.0) -> np.ndarray:
    """Checkpoints × k features: the sum over tensors of each flattened tensor's projection."""
    import numpy as np

    out = np.zeros((len(checkpoints), k))
    for name in track(names, "umap: projecting tensors"):
        shape = zoo.tensor_shape(name, checkpoints[0].member)
        dim = max(int(np.prod(shape)), 1)
        proj = sparse_projection(dim, k, seed + zlib.crc32(name.encode()))
        per_block = max(1, int(block_mb * 2**20 // (dim * 4)))
        for start in range(0, len(checkpoints), per_block):
            block = zoo.tensor(name, checkpoints[start : start + per_block])
            flat = block.reshape(len(block), -1).astype(np.float64)
            out[start : start + len(block)] += np.asarray((proj.T @ flat.T).T)
    return out


class UMAPAnalyzer(Analyzer):
    name = "umap"
    description = "2-D UMAP of checkpoints from randomly projected weights, with trajectories"
    options = (
        Option("tensors", str, r"weight$", "regex selecting the tensors whose weights are features"),
        Option("components", int, 64, "dimensions of the random projection before UMAP"),
        Option("neighbors", int, 15, "UMAP n_neighbors (capped at the number of points - 1)"),
        Option("seed", int, 0, "random_state of the projection and of UMAP"),
        Option("color_by", str, "epoch", "a factor, 'epoch', or a metric such as test_accuracy"),
    )

    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        import numpy as np
        import umap

        for option, least in (("components", 1), ("neighbors", 2), ("seed", 0)):
            if options[option] < least:
                raise ConfigError(f"option {option} = {options[option]} must be {least} or more")
        cps = selection.checkpoints(zoo)
        colours = (["epoch", "member"] + sorted({f for m in selection.members for f in m.factors})
                   + sorted({k for c in cps for k in c.metrics if k.startswith("test_")}))
        if options["color_by"] not in colours:
            raise ConfigError(f"option color_by = {options['color_by']!r} is neither 'epoch', a "
                              "factor nor a test metric of the selection",
                              hint=f"choose one of: {', '.join(colours)}")
        names = select_tensors(zoo, cps[0].member, "tensors", options["tensors"])
        if len(cps) < 4:
            raise ConfigError(f"umap needs at least 4 checkpoints; the selection holds {len(cps)}")
        features = project_weights(zoo, cps, names, int(options["components"]), int(options["seed"]))
        # Checkpoints with identical weights (members sharing a seed before training, or a
        # frozen backbone) must land on one point: embed each distinct row once, map back.
        unique, inverse = np.unique(features, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        if len(unique) < 4:
            raise ConfigError(f"umap needs at least 4 distinct checkpoints; the selection holds "
                              f"{len(unique)} (the others have identical weights)")
        unique = (unique - unique.mean(axis=0)) / (unique.std(axis=0) + 1e-12)
        reducer = umap.UMAP(n_components=2, random_state=int(options["seed"]),
                            n_neighbors=max(2, min(int(options["neighbors"]), len(unique) - 1)),
                            init="random", n_jobs=1)
        coords = reducer.fit_transform(unique)[inverse]
        members = {m.id: m for m in zoo.members()}
        table: dict[str, list[Any]] = {"member": [c.member for c in cps],
                                       "epoch": [c.epoch for c in cps],
                                       "x": coords[:, 0].tolist(), "y": coords[:, 1].tolist()}
        for f in sorted({f for m in selection.members for f in m.factors}):
            table[f] = [str(members[c.member].factors.get(f)) for c in cps]
        for metric in sorted({k for c in cps for k in c.metrics if k.startswith("test_")}):
            table[metric] = [c.metrics.get(metric, np.nan) for c in cps]
        summary = (f"{len(cps)} checkpoints of {len({c.member for c in cps})} members embedded "
                   f"from {len(names)} tensors ({int(options['components'])}-d random projection, "
                   f"random_state {options['seed']}).")
        if len(unique) < len(cps):
            summary += (f" {len(cps) - len(unique)} checkpoints share their weights with another "
                        "and sit on its point.")
        shown = [m for m in selection.members if m.id in set(table["member"])]
        return AnalysisResult(tables={"coordinates": table}, summary=summary,
                              figures={"umap": _scatter(table, options["color_by"], shown)})


    def display(self, tables: Any) -> tuple[str, dict[str, Any]] | None:
        """Each member's last checkpoint: its place and the factors that vary."""
        shown = super().display(tables)
        if shown is None:
            return None
        title, cols = shown
        varying = [c for c in cols if c not in ("member", "epoch", "x", "y")
                   and not c.startswith("test_") and len(set(map(str, cols[c]))) > 1]
        return (f"{title}, last epoch (every checkpoint in coordinates.csv)",
                {c: cols[c] for c in ("member", "epoch", "x", "y", *varying[:3])})


def _scatter(table: dict[str, list[Any]], color_by: str, shown: list[Member]) -> Any:
    """Checkpoints coloured by ``color_by``: a colourbar for continuous values, a legend
    for a few distinct ones (epochs, seeds, learning rates). Clusters are named: with
    few members each member's last checkpoint by the factors that vary, else each
    shared starting point by the factors its members have in common."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels, constant = member_labels(shown)

    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    members = np.asarray(table["member"])
    epochs = np.asarray(table["epoch"])
    for m in sorted(set(members)):
        sel = np.where(members == m)[0]
        order = sel[np.argsort(epochs[sel])]
        ax.plot(x[order], y[order], color="grey", linewidth=0.6, alpha=0.6)
    values = list(table[color_by])
    distinct = sorted(set(map(str, values)), key=_numeric_first)
    if len(distinct) <= 10:
        colours = plt.cm.viridis(np.linspace(0, 1, len(distinct))) if len(distinct) > 1 \
            else ["tab:blue"]
        for colour, v in zip(colours, distinct, strict=True):
            sel = np.asarray([str(t) == v for t in values])
            ax.scatter(x[sel], y[sel], s=22, color=colour, label=v, zorder=3)
        ax.legend(title=color_by, fontsize=7, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.02, 1), frameon=False)
    else:
        c = np.asarray(values, dtype=float)
        norm = None
        if np.all(c == np.round(c)):  # integers (many epochs): one colour band per value
            from matplotlib.colors import BoundaryNorm

            norm = BoundaryNorm(np.arange(c.min() - 0.5, c.max() + 1.5), plt.cm.viridis.N)
        sc = ax.scatter(x, y, c=c, cmap="viridis", norm=norm, s=22, zorder=3)
        bar = fig.colorbar(sc, ax=ax, label=color_by)
        if norm is not None:
            from matplotlib.ticker import MaxNLocator

            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
    for (px, py), text in _cluster_names(x, y, members, epochs, shown, labels).items():
        ax.annotate(text, (px, py), xytext=(4, 4), textcoords="offset points", fontsize=6,
                    color="black", zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.75, "lw": 0})
    ax.set_title("checkpoints in weight space (UMAP)\nlines join a member's epochs"
                 + (f"; {constant}" if constant else ""), fontsize=9)
    ax.margins(0.12)  # room for the labels at the edges
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _cluster_names(x: np.ndarray, y: np.ndarray, members: np.ndarray, epochs: np.ndarray,
                   shown: list[Member], labels: dict[str, str]) -> dict[tuple[float, float], str]:
    """Where to write what: up to 12 members, each at its last checkpoint; else each
    first-checkpoint point shared by several members (at most 12 of them), by the
    factors those members share."""
    import numpy as np

    ids = sorted(set(members))
    first = {m: np.where(members == m)[0][np.argmin(epochs[members == m])] for m in ids}
    if len(ids) <= 12:
        return {(x[i], y[i]): labels.get(m, m) for m in ids
                for i in [np.where(members == m)[0][np.argmax(epochs[members == m])]]}
    starts: dict[tuple[float, float], list[str]] = {}
    for m in ids:
        starts.setdefault((x[first[m]], y[first[m]]), []).append(m)
    if len(starts) > 12:
        return {}
    by_id = {m.id: m for m in shown}
    names = {}
    for point, group in starts.items():
        common = [k for k in sorted(by_id[group[0]].factors)
                  if len({str(by_id[g].factors.get(k)) for g in group}) == 1
                  and len({str(m.factors.get(k)) for m in shown}) > 1]
        names[point] = ", ".join(f"{k}={by_id[group[0]].factors[k]}" for k in common) + \
            f" ({len(group)} members start here)"
    return names


def _numeric_first(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(UMAPAnalyzer())
