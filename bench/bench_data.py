"""Memory of data that does not fit in memory: peak memory of a classification zoo on
a 5,000,000-row file against the same zoo on 50,000 rows of it.

Two figures, each in a fresh process with an empty ``datasets`` cache:

- generating one member (2,000 training and 500 evaluation examples kept): loading,
  splitting and fingerprinting the whole file, then training;
- tokenising every split whole (a scratch tokenizer trained on the training texts,
  then every row encoded into the Arrow cache), which is what training on all rows
  needs first; on 1,000,000 rows, which takes a minute and a half (5,000,000 take
  eight).

Goal: each within 1.2x of its 50,000-row baseline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = 5_000_000
TOKENISED = 1_000_000
BASELINE = 50_000

CONFIG = """
[zoo]
name = "rss"
generator = "text-classification"
backbone = "scratch"
seeds = [0]
epochs = 1
[grid]
learning_rate = [5e-4]
[train]
batch_size = 32
max_seq_len = 64
num_threads = 2
{caps}
[data]
source = "{source}"
split = {{ train = 0.8, validation = 0.1, test = 0.1, seed = 0 }}
[scratch]
hidden_size = 64
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 128
vocab_size = 400
"""

CHILD = """
import resource, sys, threading, time
from pathlib import Path
mode, config, out = sys.argv[1:4]
peak = [0]
def sample():  # the largest private (anonymous) resident memory seen, every 5 ms
    while True:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
if mode == "generate":
    from zooscope.cli import app
    try:
        app(["generate", config, "--out", out])
    except SystemExit as exc:
        assert not exc.code, exc.code
else:
    from zooscope.config import parse_config
    from zooscope.registry import generator_for
    cfg = parse_config(Path(config).read_text(), Path(config))
    generator = generator_for(cfg)
    task = generator.prepare(cfg)
    generator._backbone(cfg, "scratch", task)
time.sleep(0.02)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, peak[0] / 1024)
"""


def write_rows(path: Path, rows: int) -> None:
    """A sentiment TSV of ``rows`` rows: the synthetic task's sentences, repeated."""
    from zooscope.kit.synthetic import synthetic_sentiment

    block = synthetic_sentiment(min(rows, 1_000_000))
    lines = [f"{label}\t{text}\n" for text, label in block]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("label\tsentence\n")
        for start in range(0, rows, len(lines)):
            fh.writelines(lines[: rows - start])


def peak_mib(mode: str, config: Path, cache: Path) -> tuple[float, float, float]:
    """Peak resident memory (all of it, and the private part alone) in MiB, and seconds."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "COLUMNS": "80"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(config),
                          str(config.with_suffix(".h5"))],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"{mode} on {config.name} failed:\n{out.stderr[-2000:]}")
    total, private = (float(v) for v in out.stdout.split()[-2:])
    return total, private, time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="zooscope-bench-") as tmp:
        folder = Path(tmp)
        files = {n: folder / f"rows{n}.tsv" for n in (BASELINE, TOKENISED, ROWS)}
        for n, path in files.items():
            write_rows(path, n)
        print(f"files: {ROWS:,} rows ({files[ROWS].stat().st_size / 1e6:.0f} MB), "
              f"{TOKENISED:,} and {BASELINE:,} rows")
        for mode, caps, rows in (
                ("generate", "max_train_examples = 2000\nmax_eval_examples = 500", ROWS),
                ("tokenise", "", TOKENISED)):
            peaks = {}
            for n in (BASELINE, rows):
                config = folder / f"{mode}{n}.toml"
                config.write_text(CONFIG.format(caps=caps, source=files[n]))
                peaks[n] = peak_mib(mode, config, folder / f"cache-{mode}{n}")
            (small, small_own, t_small), (large, large_own, t_large) = peaks[BASELINE], peaks[rows]
            what = ("generating one member (2,000 training examples kept)" if mode == "generate"
                    else "tokenising every split whole")
            print(f"{what}, {rows:,} rows ({t_large:.0f} s) vs {BASELINE:,} ({t_small:.0f} s):")
            print(f"  peak private memory {large_own:.0f} vs {small_own:.0f} MiB, ratio "
                  f"{large_own / small_own:.2f}x (goal ≤ 1.2x)")
            print(f"  peak RSS {large:.0f} vs {small:.0f} MiB, ratio {large / small:.2f}x (RSS also "
                  "counts pages of the memory-mapped Arrow files, page cache the kernel drops "
                  "when memory is short)")


if __name__ == "__main__":
    main()
