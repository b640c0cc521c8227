"""Start-up time of `zooscope --help`, `--version` and `plugins` against a bare Python start."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def wall(args: list[str], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    baseline = wall([sys.executable, "-c", "pass"])
    print(f"baseline: python -c pass            {baseline:.3f} s")
    for args in (["--help"], ["--version"], ["plugins", "--all"]):
        t = wall([sys.executable, "-m", "zooscope", *args])
        print(f"zooscope {' '.join(args):<22} {t:.3f} s  ({t / baseline:.1f}x bare python; "
              f"goal for --help: ≤ 0.300 s)")


if __name__ == "__main__":
    main()
