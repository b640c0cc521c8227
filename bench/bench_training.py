"""zooscope's training loop against a bare PyTorch loop on the same model, data and batches,
and the share of epoch time spent recording checkpoints."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from zooscope import registry
from zooscope.config import parse_config
from zooscope.engine import build_zoo
from zooscope.engine.loop import epoch_generator, seed_everything
from zooscope.stores import h5writer

CONFIG = """
[zoo]
name = "bench"
generator = "sst2"
backbone = "scratch"
seeds = [0]
epochs = 3
[grid]
learning_rate = [5e-4]
[train]
batch_size = 32
max_seq_len = 64
num_threads = 2
[data]
source = "synthetic:sentiment:4000"
[scratch]
hidden_size = 128
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 256
vocab_size = 400
"""


class Clock:
    def __init__(self) -> None:
        self.saved: list[float] = []

    @registry.hookspecs.hookimpl
    def zooscope_checkpoint_saved(self, zoo, member, epoch, metrics):  # type: ignore[no-untyped-def]
        self.saved.append(time.perf_counter())


def main() -> None:
    cfg = parse_config(CONFIG)
    torch.set_num_threads(2)
    registry.load_plugins()
    clock = Clock()
    registry.pm.register(clock, name="bench-clock")
    recording = [0.0]
    original = h5writer.HDF5Writer.write_checkpoint

    def timed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        original(self, *args, **kwargs)
        recording[0] += time.perf_counter() - start

    h5writer.HDF5Writer.write_checkpoint = timed  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            build_zoo(cfg, Path(tmp) / "bench.h5")
    finally:
        h5writer.HDF5Writer.write_checkpoint = original  # type: ignore[method-assign]
        registry.pm.unregister(name="bench-clock")
    zoo_epoch = min(b - a for a, b in zip(clock.saved, clock.saved[1:], strict=False))
    share = recording[0] / (clock.saved[-1] - clock.saved[0] + recording[0] / len(clock.saved))

    # The bare loop: same generator setup, batches, optimizer and evaluation; no recording.
    generator = registry.get_generator("sst2")
    task = generator.prepare(cfg)
    member = cfg.members()[0]
    seed_everything(0)
    setup = generator.setup(cfg, member, task)
    model = setup.model
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    generator.evaluate(cfg, setup, task, torch.device("cpu"))
    times = []
    for epoch in (1, 2, 3):
        start = time.perf_counter()
        model.train()
        for batch in setup.train_batches(epoch_generator(0, epoch)):
            loss = model(**batch)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        generator.evaluate(cfg, setup, task, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    bare = min(times)
    print(f"epoch (3,200 examples, train + evaluate every split): zooscope {zoo_epoch:.2f} s, "
          f"bare PyTorch loop {bare:.2f} s")
    print(f"  throughput ratio zooscope/bare {bare / zoo_epoch:.3f}x (goal ≥ 0.95x)")
    print(f"  recording share of epoch time {100 * share:.1f} % (goal ≤ 5 %)")


if __name__ == "__main__":
    main()
