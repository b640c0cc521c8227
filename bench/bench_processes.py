"""Members per hour with two processes against one, on this machine's cores."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """
[zoo]
name = "procs"
generator = "sst2"
backbone = "scratch"
seeds = [0, 1]
epochs = 2
[grid]
learning_rate = [3e-4, 5e-4]
weight_decay = [0.1, 0.01]
[train]
batch_size = 32
max_seq_len = 64
[data]
source = "synthetic:sentiment:2000"
[scratch]
hidden_size = 64
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 128
vocab_size = 400
"""


def run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "procs.toml"
        config.write_text(CONFIG)
        env = dict(os.environ)
        one = run([sys.executable, "-m", "zooscope", "generate", str(config), "--out",
                   str(Path(tmp) / "one.h5")], env)
        two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                   "zooscope", "generate", str(config), "--out", str(Path(tmp) / "two.h5")], env)
    members = 8
    print(f"{members} members x 2 epochs, start-up included: 1 process {one:.1f} s "
          f"({members * 3600 / one:.0f} members/h), 2 processes {two:.1f} s "
          f"({members * 3600 / two:.0f} members/h)")
    print(f"  ratio 2 processes / 1 process {one / two:.2f}x (goal ≥ 1.6x on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
