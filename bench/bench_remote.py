"""Reading a zoo over HTTP: requests and bytes to open it, list its members and read one
tensor across every checkpoint, against that tensor's bytes and a full download.

Served by a local HTTP server with Range support (tests/rangeserver.py), which counts
what it sends; the transfer figures are what a remote server would send.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_store import noisy_zoo

from zooscope import remote
from zooscope.access import open_zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rangeserver import RangeServer  # noqa: E402

CHECKPOINTS = 40
TENSORS = ("encoder.layer.1.attention.self.query.weight", "encoder.layer.1.output.dense.bias")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="zooscope-bench-"))
    try:
        sd = noisy_zoo(tmp / "zoo.h5", CHECKPOINTS)
        size = (tmp / "zoo.h5").stat().st_size
        print(f"zoo: {CHECKPOINTS} checkpoints of a {len(sd)}-tensor BERT, {size / 1e6:.0f} MB")
        with RangeServer(tmp) as server:
            url = f"{server.url}/zoo.h5"
            default = remote.BLOCK_SIZE
            for block in (1 << 12, 1 << 14, 1 << 16, 1 << 18):
                remote.BLOCK_SIZE = block
                server.reset()
                zoo = open_zoo(url)
                zoo.members()
                zoo.checkpoints()
                meta_req, meta_bytes = server.requests, server.sent
                line = [f"block {block >> 10:>3} KiB: open + list {meta_req} requests "
                        f"{meta_bytes / 1e3:.0f} kB"]
                for name in TENSORS:
                    server.reset()
                    start = time.perf_counter()
                    stack = zoo.tensor(name)
                    took = time.perf_counter() - start
                    line.append(f"{name.rsplit('.', 2)[-2]}.{name.rsplit('.', 1)[-1]} "
                                f"({stack.nbytes / 1e3:.0f} kB): {server.requests} requests "
                                f"{server.sent / stack.nbytes:.2f}x its bytes, {took * 1e3:.0f} ms")
                zoo.close()
                print("  " + "; ".join(line))
            remote.BLOCK_SIZE = default
            server.reset()
            start = time.perf_counter()
            zoo = open_zoo(url)
            zoo.members()
            meta_bytes = server.sent
            stack = zoo.tensor(TENSORS[0])
            zoo.close()
            lazy, lazy_s = server.sent, time.perf_counter() - start
            server.reset()
            start = time.perf_counter()
            import fsspec

            with fsspec.open(url, "rb") as src, open(tmp / "copy.h5", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            with open_zoo(tmp / "copy.h5") as zoo:
                assert np.array_equal(zoo.tensor(TENSORS[0]), stack)
            full, full_s = server.sent, time.perf_counter() - start
            print(f"open + read {TENSORS[0]} at the default block "
                  f"({default >> 10} KiB): "
                  f"{lazy / 1e6:.1f} MB in {lazy_s * 1e3:.0f} ms = "
                  f"{(lazy - meta_bytes) / stack.nbytes:.2f}x the tensor's bytes "
                  f"+ {meta_bytes / 1e3:.0f} kB metadata (goal <= 1.5x + fixed); "
                  f"full download then read: {full / 1e6:.0f} MB in {full_s * 1e3:.0f} ms "
                  f"= {full / lazy:.0f}x the bytes, {full_s / lazy_s:.1f}x the time on localhost")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
