"""Compiled kernels for weightstats: every per-row statistic in fused passes.

numpy needs a pass (and often a temporary array) per statistic and a partition per
row for exact percentiles. Here one row of a block is handled by one thread:

1. sums, extremes, absolute values, the near-zero count, the drift products and the
   moments about a shift near the mean (converted to central moments after), in one
   loop the compiler vectorises;
2. a histogram of the values' order-preserving bit patterns (integer work only);
3. the values of the few histogram bins that hold the wanted order statistics are
   gathered and sorted, which gives exact percentiles (numpy's "linear" rule).

A value's bin is the top 14 bits of its float32 pattern made monotone (sign flipped
for positives, all bits for negatives): no minimum or maximum is needed first, so the
histogram needs no float arithmetic, and a value's bin never disagrees between
passes. Without percentiles only the first pass runs. Rows with NaN or
infinity are left to the numpy path.
"""

from __future__ import annotations

import numba
import numpy as np

NBINS = 16384  # 14 bits of the monotone key: 1/32 of an octave per bin, a 128 KiB histogram
SHIFT_SAMPLE = 64  # values averaged for the shift the moments are taken about


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
def _bin(bits):
    """The bin of a float32 given as its uint32 bit pattern: monotone in the value.
    Branch-free (signs are random, a branch on them mispredicts half the time): all
    bits flip for negatives, the sign bit for positives."""
    sign = np.int64(bits >> np.uint32(31))  # 0 or 1
    flip = np.int64(0x80000000) | (np.int64(0x7FFFFFFF) * sign)
    return (np.int64(bits) ^ flip) >> 18


@_jit(fastmath={"reassoc", "nsz", "contract"}, nogil=True)
def _row(x, bits, base, has_base, near_zero, ranks, out_stats, out_ranks):
    n = x.shape[0]
    k = 0.0
    m = min(n, SHIFT_SAMPLE)
    for i in range(m):
        k += np.float64(x[i])
    k /= m
    want = ranks.shape[0] > 0
    counts = np.zeros(NBINS if want else 1, np.int64)
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
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
        d = v - k
        d2 = d * d
        s1 += d
        s2 += d2
        s3 += d2 * d
        s4 += d2 * d2
        a = abs(v)
        sa += a
        sq += v * v
        mn = min(mn, v)
        mx = max(mx, v)
        amax = max(amax, a)
        nz += a < near_zero
        if has_base:
            b = np.float64(base[i])
            e = v - b
            dd += e * e
            bb += b * b
            xb += v * b
    if not (np.isfinite(s1) and np.isfinite(s4) and np.isfinite(sq) and np.isfinite(mn)
            and np.isfinite(mx)):
        return False
    # Central moments from the moments about k (k is near the mean, so little cancels).
    delta = s1 / n
    r2, r3, r4 = s2 / n, s3 / n, s4 / n
    m2 = max(r2 - delta * delta, 0.0)
    m3 = r3 - 3.0 * delta * r2 + 2.0 * delta**3
    m4 = r4 - 4.0 * delta * r3 + 6.0 * delta * delta * r2 - 3.0 * delta**4
    out_stats[0] = k + delta
    out_stats[1] = m2
    out_stats[2] = m3
    out_stats[3] = m4
    out_stats[4] = sa
    out_stats[5] = sq
    out_stats[6] = amax
    out_stats[7] = nz / n
    out_stats[8] = dd
    out_stats[9] = bb
    out_stats[10] = xb
    out_stats[11] = mn
    out_stats[12] = mx
    if not want:
        return True
    # A loop of its own: the sums above vectorise, an indexed increment would stop that.
    for i in range(n):
        counts[_bin(bits[i])] += 1
    # The bins holding each wanted rank, and where each bin's values start in rank order.
    first = np.zeros(NBINS + 1, np.int64)
    for j in range(NBINS):
        first[j + 1] = first[j] + counts[j]
    slot = np.full(NBINS, -1, np.int64)
    bins = np.empty(ranks.shape[0], np.int64)  # slot -> bin
    nslots = 0
    rank_bin = np.empty(ranks.shape[0], np.int64)
    for r in range(ranks.shape[0]):
        j = np.searchsorted(first, ranks[r], side="right") - 1
        rank_bin[r] = j
        if slot[j] < 0:
            slot[j] = nslots
            bins[nslots] = j
            nslots += 1
    offsets = np.zeros(nslots + 1, np.int64)
    for j in range(nslots):
        offsets[j + 1] = offsets[j] + counts[bins[j]]
    gathered = np.empty(offsets[nslots], np.float32)
    fill = offsets[:nslots].copy()
    for i in range(n):
        j = slot[_bin(bits[i])]
        if j >= 0:
            gathered[fill[j]] = x[i]
            fill[j] += 1
    for j in range(nslots):
        gathered[offsets[j] : offsets[j + 1]].sort()
    for r in range(ranks.shape[0]):
        j = rank_bin[r]
        out_ranks[r] = gathered[offsets[slot[j]] + ranks[r] - first[j]]
    return True


@_jit(parallel=True, nogil=True)
def _rows(x, bits, extra, base_index, has_base, near_zero, ranks, out_stats, out_ranks, ok):
    for r in numba.prange(x.shape[0]):
        k = base_index[r]
        base = x[k] if k >= 0 else extra[-1 - k]
        ok[r] = _row(x[r], bits[r], base, has_base, near_zero, ranks, out_stats[r], out_ranks[r])


def fused_stats(x: np.ndarray, near_zero: float, ranks: np.ndarray,
                base_index: np.ndarray | None = None,
                extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of x (rows x values): 13 figures (mean, 2nd-4th central moments, sum |x|,
    sum x^2, max |x|, near-zero fraction, for the drift base b: sum (x-b)^2, sum b^2,
    sum x*b, and the minimum and maximum), the values at ``ranks`` (0-based order
    statistics), and whether the row was finite (else nothing is set). No ``ranks``
    (an empty array): no percentiles, one pass.

    Row r's drift base is row ``base_index[r]`` of x where that is >= 0, else row
    ``-1 - base_index[r]`` of ``extra``; no drift without ``base_index``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    has_base = base_index is not None
    index = (np.zeros(len(x), np.int64) if base_index is None
             else np.ascontiguousarray(base_index, dtype=np.int64))
    more = (x[:1] if extra is None or len(extra) == 0
            else np.ascontiguousarray(extra, dtype=np.float32))
    stats = np.full((len(x), 13), np.nan)
    values = np.full((len(x), len(ranks)), np.nan)
    ok = np.zeros(len(x), np.bool_)
    _rows(x, x.view(np.uint32), more, index, has_base, float(near_zero),
          np.ascontiguousarray(ranks, dtype=np.int64), stats, values, ok)
    return stats, values, ok
