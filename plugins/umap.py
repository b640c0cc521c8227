"""The ``umap`` analyzer: every checkpoint as a point in a 2-D UMAP embedding of its weights.

Flattened weights are first reduced by a sparse random projection streamed over
one tensor and one block of checkpoints at a time, so no zoo has to fit in memory;
then umap-learn with a fixed random_state. Trajectories join a member's epochs.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.analysis import AnalysisResult, Analyzer, Option, Selection, select_tensors
from zooscope.errors import ConfigError
from zooscope.zoo import Zoo

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
    for name in names:
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
        features = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-12)
        reducer = umap.UMAP(n_components=2, random_state=int(options["seed"]),
                            n_neighbors=max(2, min(int(options["neighbors"]), len(cps) - 1)),
                            init="random", n_jobs=1)
        coords = reducer.fit_transform(features)
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
        return AnalysisResult(tables={"coordinates": table}, summary=summary,
                              figures={"umap": _scatter(table, options["color_by"])})


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


def _scatter(table: dict[str, list[Any]], color_by: str) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np

    if color_by not in table:
        raise ConfigError(f"cannot colour by {color_by!r}",
                          hint=f"choose one of: {', '.join(k for k in table if k not in 'xy')}")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    members = np.asarray(table["member"])
    epochs = np.asarray(table["epoch"])
    for m in sorted(set(members)):
        sel = np.where(members == m)[0]
        order = sel[np.argsort(epochs[sel])]
        ax.plot(x[order], y[order], color="grey", linewidth=0.6, alpha=0.6)
    values = table[color_by]
    try:
        c = np.asarray(values, dtype=float)
        sc = ax.scatter(x, y, c=c, cmap="viridis", s=18)
        fig.colorbar(sc, ax=ax, label=color_by)
    except ValueError:
        labels = sorted(set(values))
        for i, v in enumerate(labels):
            sel = np.asarray(values) == v
            ax.scatter(x[sel], y[sel], s=18, color=plt.cm.tab10(i % 10), label=f"{color_by}={v}")
        ax.legend(fontsize=7)
    ax.set_title("checkpoints in weight space (UMAP); lines join a member's epochs")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(UMAPAnalyzer())
