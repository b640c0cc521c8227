"""A zoo of parts against the one file of the same checkpoints: open and list, one tensor
across every checkpoint, one checkpoint's state dict; locally, and over HTTP (requests
and bytes, counted by tests/rangeserver.py).

Baseline: the single file, measured in the same run. Goal: over a network one
checkpoint's bytes cost no more than in the file (its tensors come from the one part
holding it). Listing opens every part (the index lists parts, not checkpoints), so it
costs about one file open per part: with 45 GB parts a lab zoo has a handful; this
bench splits into 14 small parts to show the per-part cost.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_store import noisy_zoo

from zooscope.access import open_zoo
from zooscope.upkeep.merge import merge_zoos

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rangeserver import RangeServer  # noqa: E402

CHECKPOINTS = 40
TENSOR = "encoder.layer.1.attention.self.query.weight"


def best(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_all(path: object) -> None:
    with open_zoo(path) as zoo:
        zoo.members()
        zoo.tensor(TENSOR, zoo.checkpoints())


def listing(path: object) -> None:
    with open_zoo(path) as zoo:
        zoo.members()
        zoo.checkpoints()


def one_checkpoint(path: object) -> None:
    with open_zoo(path) as zoo:
        c = zoo.checkpoints()[-1]
        zoo.state_dict(c.member, c.epoch)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zooscope-bench-"))
    try:
        noisy_zoo(tmp / "zoo.h5", CHECKPOINTS)
        size = (tmp / "zoo.h5").stat().st_size
        start = time.perf_counter()
        merge_zoos([tmp / "zoo.h5"], tmp / "zoo.zoo", max_part_size=size // 10)
        split = time.perf_counter() - start
        with open_zoo(tmp / "zoo.zoo") as zoo:
            parts = len(zoo.parts() or [])
        print(f"zoo: {CHECKPOINTS} checkpoints, {size / 1e6:.0f} MB; split into {parts} parts "
              f"in {split:.2f} s ({size / 1e6 / split:.0f} MB/s)")
        for what, fn in (("open + list", listing), ("one tensor, every checkpoint", read_all),
                         ("one checkpoint's state dict", one_checkpoint)):
            one = best(functools.partial(fn, tmp / "zoo.h5"))
            many = best(functools.partial(fn, tmp / "zoo.zoo"))
            print(f"  {what:<30} file {one * 1e3:7.1f} ms, parts {many * 1e3:7.1f} ms: "
                  f"{many / one:.2f}x the file")
        with RangeServer(tmp) as server:
            for what, fn in (("open + list", listing), ("one checkpoint's state dict",
                                                         one_checkpoint)):
                figures = []
                for name in ("zoo.h5", "zoo.zoo"):
                    server.reset()
                    fn(f"{server.url}/{name}")
                    figures.append((server.requests, server.sent))
                (r1, b1), (r2, b2) = figures
                print(f"  HTTP {what:<25} file {r1} requests {b1 / 1e6:.2f} MB, parts {r2} "
                      f"requests {b2 / 1e6:.2f} MB: {b2 / b1:.2f}x the bytes")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
