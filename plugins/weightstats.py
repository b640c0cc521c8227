"""The ``weightstats`` analyzer: layerwise weight statistics for every tensor and checkpoint.

One streaming pass, one tensor at a time over blocks of checkpoints, so memory is
bounded by a block, not by the zoo. Optional spectral metrics as WeightWatcher
defines them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.analysis import AnalysisResult, Analyzer, Option, Selection, plotting, select_tensors
from zooscope.errors import ConfigError
from zooscope.progress import track
from zooscope.zoo import Checkpoint, Zoo

if TYPE_CHECKING:
    import numpy as np

PERCENTILES = (0, 1, 25, 50, 75, 99, 100)
SPECTRAL_COLUMNS = ("spectral_norm", "log_spectral_norm", "stable_rank", "log_norm", "alpha",
                    "alpha_weighted")
_BLOCK = re.compile(r"(?:layer|layers|block|h)\.(\d+)\.")


def tensor_kind(name: str) -> str:
    """The kind of a state-dict tensor: attention q/k/v/output, FFN, LayerNorm, embeddings, head."""
    n = name.lower()
    if n.startswith("head.") or "classifier" in n or n.startswith("cls.") or "lm_head" in n:
        return "head"
    # T5: the shared token embedding and the relative position biases
    if "embeddings" in n or "shared." in n or "embed_tokens" in n or "relative_attention_bias" in n:
        return "embeddings"
    if "layernorm" in n or "layer_norm" in n or ".ln" in n:
        return "layernorm"
    for key, kind in (("query", "attention.q"), ("q_lin", "attention.q"), ("key", "attention.k"),
                      ("k_lin", "attention.k"), ("value", "attention.v"), ("v_lin", "attention.v"),
                      ("attention.output", "attention.output"), ("out_lin", "attention.output"),
                      # T5: SelfAttention.q / EncDecAttention.q ... .o
                      ("attention.q.", "attention.q"), ("attention.k.", "attention.k"),
                      ("attention.v.", "attention.v"), ("attention.o.", "attention.output")):
        if key in n:
            return kind
    if "intermediate" in n or "ffn" in n or "output.dense" in n or "densereludense" in n:
        return "ffn"
    return "other"


def tensor_block(name: str) -> int:
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else -1


def _percentile_ranks(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The order statistics np.percentile's "linear" rule interpolates between."""
    import numpy as np

    pos = np.asarray(PERCENTILES, dtype=np.float64) / 100 * (n - 1)
    return pos, np.floor(pos).astype(np.int64), np.ceil(pos).astype(np.int64)


def row_stats(x: np.ndarray, near_zero: float, base: np.ndarray | None = None,
              base_index: np.ndarray | None = None,
              percentiles: bool = True) -> dict[str, np.ndarray]:
    """Statistics of each row of x (checkpoints × values), with drift from base rows.

    The drift base of row r is ``base[r]``, or with ``base_index``: row ``base_index[r]``
    of x where that is >= 0, else row ``-1 - base_index[r]`` of ``base``. The compiled
    kernel in ``_rowstats`` does every row in fused passes with exact percentiles (one
    pass without them: ``percentiles=False`` leaves out p1 to p99); rows
    holding NaN or infinity go through plain numpy, and so does everything where numba
    (the ``analysis`` extra) is not installed.
    """
    import importlib.util

    import numpy as np

    if base is not None and base_index is None:
        base_index = -1 - np.arange(len(x))
    if x.dtype == np.float64 or importlib.util.find_spec("numba") is None:
        # the kernel works in float32, and is compiled by numba
        return numpy_row_stats(x, near_zero, None if base_index is None else _bases_of(x, base, base_index),
                               percentiles)
    from ._rowstats import fused_stats

    n = x.shape[1]
    pos, lo, hi = _percentile_ranks(n)
    ranks = np.unique(np.concatenate([lo, hi])) if percentiles else np.zeros(0, np.int64)
    sums, values, ok = fused_stats(x, near_zero, ranks, base_index, base)
    mean, m2, m3, m4, l1, xx, linf, nz, dd, bb, xb, low, high = sums.T
    out: dict[str, np.ndarray] = {"mean": mean, "std": np.sqrt(m2), "l1": l1, "l2": np.sqrt(xx),
                                  "linf": linf, "near_zero": nz}
    if percentiles:
        at = {int(r): values[:, i] for i, r in enumerate(ranks)}
        for p, li, hi_i, ps in zip(PERCENTILES, lo, hi, pos, strict=True):
            out[f"p{p}"] = at[int(li)] + (at[int(hi_i)] - at[int(li)]) * (ps - li)
    out["min"], out["max"] = low, high
    out.update(_shape(m2, m3, m4, n))
    if base_index is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            out["drift_l2"] = np.where(bb > 0, np.sqrt(dd / bb), np.nan)
            out["drift_cosine"] = np.where(bb * xx > 0, xb / np.sqrt(bb * xx), np.nan)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        slow = numpy_row_stats(x[bad], near_zero,
                               None if base_index is None else _bases_of(x, base, base_index)[bad],
                               percentiles)
        for key, col in slow.items():
            out[key][bad] = col
    return out


def _shape(m2: np.ndarray, m3: np.ndarray, m4: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Skew and excess kurtosis from central moments; NaN for constant rows (LayerNorm
    at initialisation) and rows of fewer than three values."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        if n <= 2:
            return {"skew": np.full(len(m2), np.nan), "kurtosis": np.full(len(m2), np.nan)}
        return {"skew": np.where(m2 > 0, m3 / m2**1.5, np.nan),
                "kurtosis": np.where(m2 > 0, m4 / m2**2 - 3.0, np.nan)}


def _bases_of(x: np.ndarray, base: np.ndarray | None, base_index: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.stack([x[k] if k >= 0 else base[-1 - k] for k in base_index])


def numpy_row_stats(x: np.ndarray, near_zero: float, base: np.ndarray | None = None,
                    percentiles: bool = True) -> dict[str, np.ndarray]:
    """The same statistics with plain numpy (the path for rows holding NaN or infinity)."""
    import numpy as np

    n = x.shape[1]
    x64 = x.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mean = x64.mean(axis=1)
        c = x64 - mean[:, None]
        m2, m3, m4 = (c**2).mean(axis=1), (c**3).mean(axis=1), (c**4).mean(axis=1)
        a = np.abs(x64)
        out: dict[str, np.ndarray] = {
            "mean": mean, "std": np.sqrt(m2), "l1": a.sum(axis=1),
            "l2": np.sqrt((x64 * x64).sum(axis=1)), "linf": a.max(axis=1),
            "near_zero": (a < near_zero).mean(axis=1),
        }
        if percentiles:
            for p, v in zip(PERCENTILES, np.percentile(x64, PERCENTILES, axis=1), strict=True):
                out[f"p{p}"] = v
        out["min"], out["max"] = x64.min(axis=1), x64.max(axis=1)
        out.update(_shape(m2, m3, m4, n))
        if base is not None:
            out.update(_drift(x64, base.astype(np.float64)))
    return out


def power_law_alpha(evals: np.ndarray) -> float:
    """Power-law exponent of an eigenvalue spectrum's tail (Clauset et al. 2009 MLE).

    Like WeightWatcher: xmin is chosen among the eigenvalues to minimise the
    Kolmogorov-Smirnov distance between the tail and the fitted power law. Every
    candidate xmin is scored at once (a block of candidates × eigenvalues at a time).
    """
    import numpy as np

    x = np.sort(evals[evals > 0]).astype(np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    logx = np.log(x)
    suffix = np.cumsum(logx[::-1])[::-1]  # sum of log x[j] for j >= i
    i = np.arange(n - 1)
    m = n - i
    total = suffix[:-1] - m * logx[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(total > 0, 1.0 + m / total, np.nan)
    best_d = np.full(n - 1, np.inf)
    j = np.arange(n)
    for start in range(0, n - 1, 256):
        rows = i[start : start + 256]
        a = alpha[rows][:, None]
        k = j[None, :] - rows[:, None]  # position within the tail
        inside = k >= 0
        with np.errstate(over="ignore", invalid="ignore"):
            fitted = 1.0 - np.exp((1.0 - a) * (logx[None, :] - logx[rows][:, None]))
        empirical = k / m[rows][:, None]
        d = np.where(inside, np.abs(empirical - fitted), -np.inf).max(axis=1)
        best_d[start : start + len(rows)] = np.where(np.isnan(alpha[rows]), np.inf, d)
    if not np.isfinite(best_d).any():
        return float("nan")
    return float(alpha[int(np.argmin(best_d))])


def spectral_stats(w: np.ndarray) -> dict[str, np.ndarray]:
    """Spectral metrics of each matrix of w (checkpoints × rows × cols), batched torch SVD in fp32."""
    import numpy as np
    import torch

    mats = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    if mats.shape[-2] < mats.shape[-1]:
        mats = mats.mT  # the same singular values; LAPACK is about twice as fast on tall matrices
    # One LAPACK call per matrix uses the cores poorly at these sizes: split the batch
    # over a thread per core instead (torch releases the GIL).
    torch_threads = torch.get_num_threads()
    threads = min(torch_threads, len(mats))
    if threads > 1:
        torch.set_num_threads(1)  # one LAPACK thread per worker, or they fight over the cores
        try:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(torch.linalg.svdvals, torch.tensor_split(mats, threads)))
        finally:
            torch.set_num_threads(torch_threads)
        sv = torch.cat(parts)
    else:
        sv = torch.linalg.svdvals(mats)
    evals = (sv.double() ** 2).numpy()  # eigenvalues of W^T W
    spectral = evals.max(axis=1)
    norm = evals.sum(axis=1)
    alpha = np.array([power_law_alpha(e) for e in evals])
    return {"spectral_norm": spectral, "log_spectral_norm": np.log10(spectral),
            "stable_rank": norm / spectral, "log_norm": np.log10(norm), "alpha": alpha,
            "alpha_weighted": alpha * np.log10(spectral)}


class WeightStats(Analyzer):
    name = "weightstats"
    description = ("layerwise weight statistics per tensor and checkpoint, drift from epoch 0, "
                   "optional spectral metrics (WeightWatcher's definitions)")
    options = (
        Option("tensors", str, ".*", "regex selecting tensors by state-dict name"),
        Option("spectral", bool, False, "add spectral metrics of 2-D weight matrices"),
        Option("near_zero", float, 1e-3, "|w| below this counts as near zero"),
        Option("percentiles", bool, True,
               "exact percentiles p1-p99 (off: one pass over each row, not three)"),
        Option("block_mb", float, 256.0, "memory for one block of checkpoints of one tensor"),
        Option("color_by", str, "learning_rate", "factor that colours the trajectory plot"),
    )

    def analyze(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> AnalysisResult:
        color_by = _colour_factor(options["color_by"], selection,
                                  default=self.options[-1].default)
        table = self.statistics(zoo, options, selection)
        draw = plotting()
        figures = {"trajectories": _trajectories(zoo, table, color_by)} if draw else {}
        if options["spectral"] and draw:  # the spectral metrics, where there are matrices
            for column, label in (("alpha", "power-law alpha\n(WeightWatcher)"),
                                  ("stable_rank", "stable rank")):
                if any(v == v for v in table.get(column, [])):  # some value is not NaN
                    figures[column] = _trajectories(zoo, table, color_by, column, label)
        summary = (f"{len(set(table['tensor']))} tensors x "
                   f"{len(set(zip(table['member'], table['epoch'], strict=True)))} checkpoints = "
                   f"{len(table['tensor'])} rows. " + _drift_summary(table))
        return AnalysisResult(tables={"stats": table, "by_kind": by_kind(table)}, summary=summary,
                              figures=figures)

    def display(self, tables: Any) -> tuple[str, dict[str, Any]] | None:
        """Per tensor kind, the first and the last epoch: a handful of columns that fit 80
        characters. Every statistic of every tensor is in stats.csv."""
        kinds = tables.get("by_kind") or (by_kind(tables["stats"]) if tables.get("stats") else None)
        if not kinds:
            return super().display(tables)
        epochs = list(kinds["epoch"])
        ends = {min(epochs), max(epochs)}
        keep = [i for i, e in enumerate(epochs) if e in ends]
        heads = {"kind": "kind", "epoch": "epoch", "std": "std", "l2": "L2", "near_zero": "near 0",
                 "drift_l2": "drift", "alpha": "alpha"}
        return ("mean over tensors of each kind, first and last epoch (all rows in stats.csv)",
                {head: [kinds[c][i] for i in keep] for c, head in heads.items() if c in kinds})

    def statistics(self, zoo: Zoo, options: dict[str, Any], selection: Selection) -> dict[str, list[Any]]:
        """The streaming pass: one row per (checkpoint, tensor), without figures."""
        import numpy as np

        if not options["near_zero"] >= 0:
            raise ConfigError(f"option near_zero = {options['near_zero']} must be 0 or more")
        if not options["block_mb"] > 0:
            raise ConfigError(f"option block_mb = {options['block_mb']} must be more than 0")
        cps = selection.checkpoints(zoo)
        names = select_tensors(zoo, cps[0].member, "tensors", options["tensors"])
        origin = self._origins(zoo, cps)
        table: dict[str, list[Any]] = defaultdict(list)
        for name in track(names, "weightstats: tensors"):
            shape = zoo.tensor_shape(name, cps[0].member)
            size = int(np.prod(shape))
            if size == 0:
                continue
            per_block = max(1, int(options["block_mb"] * 2**20 // (size * 4)))
            for start in range(0, len(cps), per_block):
                block = cps[start : start + per_block]
                values = zoo.tensor(name, block)
                if not np.issubdtype(values.dtype, np.floating):
                    break
                stats = row_stats(values.reshape(len(block), -1), options["near_zero"],
                                  *self._bases(zoo, name, block, origin), options["percentiles"])
                if options["spectral"]:
                    # Every row gets every spectral column, NaN where the tensor is no
                    # matrix, so the columns stay aligned with their rows.
                    stats.update(spectral_stats(values) if len(shape) == 2 and min(shape) > 1
                                 else dict.fromkeys(SPECTRAL_COLUMNS, np.full(len(block), np.nan)))
                for i, c in enumerate(block):
                    table["member"].append(c.member)
                    table["epoch"].append(c.epoch)
                    table["tensor"].append(name)
                    table["kind"].append(tensor_kind(name))
                    table["block"].append(tensor_block(name))
                    for key, col in stats.items():
                        table[key].append(float(col[i]))
        if not table["tensor"]:
            raise ConfigError(f"option tensors = {options['tensors']!r} selects no "
                              "floating-point tensor with values",
                              hint=f"it selects {', '.join(names[:3])}")
        return dict(table)

    @staticmethod
    def _bases(zoo: Zoo, name: str, block: list[Checkpoint],
               origin: dict[str, Checkpoint]) -> tuple[np.ndarray | None, np.ndarray]:
        """Each row's drift origin for ``row_stats``: an index into the block where the
        origin is in it, else into the returned rows, read from the zoo."""
        import numpy as np

        index = {(c.member, c.epoch): i for i, c in enumerate(block)}
        outside = {(o.member, o.epoch): o for o in (origin[c.member] for c in block)
                   if (o.member, o.epoch) not in index}
        read = zoo.tensor(name, list(outside.values())).reshape(len(outside), -1) if outside else None
        index.update({k: -1 - i for i, k in enumerate(outside)})
        return read, np.array([index[(origin[c.member].member, origin[c.member].epoch)] for c in block])

    @staticmethod
    def _origins(zoo: Zoo, cps: list[Checkpoint]) -> dict[str, Checkpoint]:
        """Each member's first checkpoint (epoch 0, before training) as its drift origin."""
        first: dict[str, Checkpoint] = {}
        for c in zoo.checkpoints({c.member for c in cps}):
            if c.member not in first or c.epoch < first[c.member].epoch:
                first[c.member] = c
        return first


def _drift(x: np.ndarray, base: np.ndarray) -> dict[str, np.ndarray]:
    import numpy as np

    x = x.astype(np.float64, copy=False)
    base = base.astype(np.float64, copy=False)
    diff = np.sqrt(((x - base) ** 2).sum(axis=1))
    base_norm = np.sqrt((base * base).sum(axis=1))
    x_norm = np.sqrt((x * x).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(base_norm > 0, diff / base_norm, np.nan)
        cos = np.where(base_norm * x_norm > 0, (x * base).sum(axis=1) / (base_norm * x_norm), np.nan)
    return {"drift_l2": rel, "drift_cosine": cos}


def _colour_factor(color_by: str, selection: Selection, default: str) -> str | None:
    """The factor that colours the trajectories; None (one colour) where the default
    factor is absent from the zoo, an error where a factor the user named is."""
    factors = sorted({f for m in selection.members for f in m.factors})
    if color_by in factors:
        return color_by
    if color_by == default:
        return None
    raise ConfigError(f"option color_by = {color_by!r} is not a factor of the selected members",
                      hint=f"their factors: {', '.join(factors) or 'none'}")


BY_KIND = ("mean", "std", "l2", "linf", "near_zero", "drift_l2", "drift_cosine", *SPECTRAL_COLUMNS)


def by_kind(table: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Each statistic averaged over the tensors and members of each kind at each epoch
    (NaN entries, such as vectors' spectral columns, left out)."""
    import numpy as np

    kind, epoch = np.asarray(table["kind"]), np.asarray(table["epoch"])
    out: dict[str, list[Any]] = defaultdict(list)
    for k in sorted(set(kind)):
        for e in sorted(set(epoch[kind == k])):
            sel = (kind == k) & (epoch == e)
            out["kind"].append(str(k))
            out["epoch"].append(int(e))
            out["tensors"].append(len(set(np.asarray(table["tensor"])[sel])))
            for stat in BY_KIND:
                if stat in table:
                    values = np.asarray(table[stat], dtype=np.float64)[sel]
                    values = values[np.isfinite(values)]
                    out[stat].append(float(values.mean()) if len(values) else float("nan"))
    return dict(out)


def _drift_summary(table: dict[str, list[Any]]) -> str:
    import numpy as np

    if not table["tensor"]:
        return ""
    epochs = np.asarray(table["epoch"])
    last = epochs.max()
    kinds = np.asarray(table["kind"])
    drift = np.asarray(table["drift_l2"])
    means = {}
    for kind in sorted(set(kinds)):
        sel = (kinds == kind) & (epochs == last) & np.isfinite(drift)
        if sel.any():
            means[kind] = float(drift[sel].mean())
    if not means:
        return ""
    most, least = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
    return (f"Mean relative L2 drift from epoch 0 at epoch {last}: largest {most} "
            f"{means[most]:.3g}, smallest {least} {means[least]:.3g}.")


def _trajectories(zoo: Zoo, table: dict[str, list[Any]], color_by: str | None,
                  column: str = "drift_l2", label: str = "relative L2 drift\nfrom epoch 0") -> Any:
    """One panel per tensor kind: each member's mean of ``column`` over the kind's tensors
    against epoch, coloured by a factor; kinds without a value (vectors' spectral
    metrics) are left out."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    values_of = np.asarray(table[column], dtype=np.float64)
    kinds = sorted({k for k, v in zip(table["kind"], values_of, strict=True) if np.isfinite(v)})
    factors = {m.id: m.factors.get(color_by) if color_by else "" for m in zoo.members()}
    values = sorted({str(v) for v in factors.values()})
    colors = {v: plt.cm.viridis(i / max(len(values) - 1, 1)) for i, v in enumerate(values)}
    cols = min(4, len(kinds))
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows + 0.5), squeeze=False)
    member = np.asarray(table["member"])
    kind = np.asarray(table["kind"])
    epoch = np.asarray(table["epoch"])
    drift = values_of
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, kinds, strict=False):
        for m in sorted(set(member)):
            sel = (member == m) & (kind == k)
            if not sel.any():
                continue
            ep = sorted(set(epoch[sel]))
            mean = [np.nanmean(drift[sel & (epoch == e)]) for e in ep]
            ax.plot(ep, mean, color=colors[str(factors.get(m))], alpha=0.8)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for row in axes:
        row[0].set_ylabel(label, fontsize=8)
    handles = [plt.Line2D([], [], color=c, label=f"{color_by}={v}") for v, c in colors.items()]
    if color_by:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, 0.5 / (2.8 * rows + 0.5), 1, 1))
    return fig


@zooscope.hookimpl
def zooscope_register_analyzers(register: Any) -> None:
    register(WeightStats())
