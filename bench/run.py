"""Run every benchmark; each prints figures and ratios against a baseline measured in the same run.

Usage: python bench/run.py [cli|store|training|processes|analyzers|data|remote|parts|gpu ...]
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BENCHES = ("bench_cli", "bench_store", "bench_training", "bench_processes", "bench_analyzers",
           "bench_data", "bench_remote", "bench_parts", "bench_gpu")


def main(argv: list[str]) -> None:
    chosen = [f"bench_{a}" for a in argv] or list(BENCHES)
    for name in chosen:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        importlib.import_module(name).main()
        print(f"   ({time.perf_counter() - start:.0f} s)\n", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
