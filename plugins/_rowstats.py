"""Compiled kernels for weightstats: every per-row statistic in three fused passes.

numpy needs a pass (and often a temporary array) per statistic and a partition per
row for exact percentiles. Here one row of a block is handled by one thread:

1. sums, extremes, absolute values, the near-zero count and the drift products;
2. central moments about the exact mean, and a histogram of the values over
   [min, max];
3. the values of the few histogram bins that hold the wanted order statistics are
   gathered and sorted, which gives exact percentiles (numpy's "linear" rule).

Bin indices come from one monotone formula used in passes 2 and 3, so a value's
bin never disagrees between them and the order statistics are exact. Rows with
NaN or infinity are left to the numpy path.
"""

from __future__ import annotations

import numba
import numpy as np

NBINS = 16384


def _jit(**options):
    """numba.njit, cached on disk where the package or the user's cache folder is
    writable (the first call compiles for a few seconds), else compiled per process."""

    def wrap(function):
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(function)

    return wrap


@_jit(inline="always")
def _bin(v, mn, scale):
    """The value's histogram bin: monotone in v, the last bin closed at max."""
    return min(int((v - mn) * scale), NBINS - 1)


@_jit(fastmath={"reassoc", "nsz", "contract"}, nogil=True)
def _row(x, base, has_base, near_zero, ranks, out_stats, out_ranks):
    n = x.shape[0]
    s = 0.0
    sa = 0.0
    sq = 0.0
    mn = np.inf
    mx = -np.inf
    amax = 0.0
    nz = 0
    dd = 0.0
    bb = 0.0
    xb = 0.0
    for i in range(n):
        v = np.float64(x[i])
        s += v
        a = abs(v)
        sa += a
        sq += v * v
        mn = min(mn, v)
        mx = max(mx, v)
        amax = max(amax, a)
        nz += a < near_zero
        if has_base:
            b = np.float64(base[i])
            d = v - b
            dd += d * d
            bb += b * b
            xb += v * b
    if not (np.isfinite(s) and np.isfinite(sq) and np.isfinite(mn) and np.isfinite(mx)):
        return False
    mean = s / n
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    counts = np.zeros(NBINS, np.int64)
    span = mx - mn
    scale = NBINS / span if span > 0 else 0.0
    for i in range(n):
        v = np.float64(x[i])
        c = v - mean
        c2 = c * c
        m2 += c2
        m3 += c2 * c
        m4 += c2 * c2
        counts[_bin(v, mn, scale)] += 1
    # The bins holding each wanted rank, and where each bin's values start in rank order.
    first = np.zeros(NBINS + 1, np.int64)
    for k in range(NBINS):
        first[k + 1] = first[k] + counts[k]
    slot = np.full(NBINS, -1, np.int64)
    bins = np.empty(ranks.shape[0], np.int64)  # slot -> bin
    nslots = 0
    rank_bin = np.empty(ranks.shape[0], np.int64)
    for r in range(ranks.shape[0]):
        k = np.searchsorted(first, ranks[r], side="right") - 1
        rank_bin[r] = k
        if slot[k] < 0:
            slot[k] = nslots
            bins[nslots] = k
            nslots += 1
    offsets = np.zeros(nslots + 1, np.int64)
    for j in range(nslots):
        offsets[j + 1] = offsets[j] + counts[bins[j]]
    gathered = np.empty(offsets[nslots], np.float32)
    fill = offsets[:nslots].copy()
    for i in range(n):
        j = slot[_bin(np.float64(x[i]), mn, scale)]
        if j >= 0:
            gathered[fill[j]] = x[i]
            fill[j] += 1
    for j in range(nslots):
        gathered[offsets[j] : offsets[j + 1]].sort()
    for r in range(ranks.shape[0]):
        k = rank_bin[r]
        j = slot[k]
        out_ranks[r] = gathered[offsets[j] + ranks[r] - first[k]]
    out_stats[0] = mean
    out_stats[1] = m2 / n
    out_stats[2] = m3 / n
    out_stats[3] = m4 / n
    out_stats[4] = sa
    out_stats[5] = sq
    out_stats[6] = amax
    out_stats[7] = nz / n
    out_stats[8] = dd
    out_stats[9] = bb
    out_stats[10] = xb
    return True


@_jit(parallel=True, nogil=True)
def _rows(x, extra, base_index, has_base, near_zero, ranks, out_stats, out_ranks, ok):
    for r in numba.prange(x.shape[0]):
        k = base_index[r]
        base = x[k] if k >= 0 else extra[-1 - k]
        ok[r] = _row(x[r], base, has_base, near_zero, ranks, out_stats[r], out_ranks[r])


def fused_stats(x: np.ndarray, near_zero: float, ranks: np.ndarray,
                base_index: np.ndarray | None = None,
                extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of x (rows x values): 11 sums (mean, 2nd-4th central moments, sum |x|,
    sum x^2, max |x|, near-zero fraction, and for the drift base b: sum (x-b)^2, sum b^2,
    sum x*b), the values at ``ranks`` (0-based order statistics), and whether the row
    was finite (else nothing is set).

    Row r's drift base is row ``base_index[r]`` of x where that is >= 0, else row
    ``-1 - base_index[r]`` of ``extra``; no drift without ``base_index``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    has_base = base_index is not None
    index = (np.zeros(len(x), np.int64) if base_index is None
             else np.ascontiguousarray(base_index, dtype=np.int64))
    more = (x[:1] if extra is None or len(extra) == 0
            else np.ascontiguousarray(extra, dtype=np.float32))
    stats = np.full((len(x), 11), np.nan)
    values = np.full((len(x), len(ranks)), np.nan)
    ok = np.zeros(len(x), np.bool_)
    _rows(x, more, index, has_base, float(near_zero), np.ascontiguousarray(ranks, dtype=np.int64),
          stats, values, ok)
    return stats, values, ok
