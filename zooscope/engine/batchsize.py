"""``[train] batch_size = "auto"``: the largest batch size that fits, found once per zoo
with Accelerate's ``find_executable_batch_size`` and recorded in the zoo."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import torch

from zooscope.config import ZooConfig
from zooscope.engine.loop import make_accelerator, make_optimizer, seed_everything
from zooscope.errors import ConfigError
from zooscope.generator import Generator, TaskData
from zooscope.zoo import Member

#: Where the chosen size is recorded: the zoo's ``extra`` attribute.
EXTRA_KEY = "auto_batch_size"


def recorded_batch_size(path: Path) -> int | None:
    """The size an earlier run of this zoo chose, so a resumed zoo keeps it."""
    from zooscope.access import open_zoo

    with open_zoo(path) as zoo:
        value = (zoo.info.get("extra") or {}).get(EXTRA_KEY)
    return int(value) if isinstance(value, int) else None


def with_batch_size(cfg: ZooConfig, size: int) -> ZooConfig:
    return dataclasses.replace(cfg, train={**cfg.train, "batch_size": size})


def find_batch_size(cfg: ZooConfig, generator: Generator, task: TaskData, member: Member,
                    device: torch.device) -> int:
    """The largest power of two up to ``max_batch_size`` and the training examples with
    which one optimizer step on the training split's longest batch fits on ``device``,
    for ``member`` (the zoo's costliest: the largest backbone)."""
    from accelerate.utils import find_executable_batch_size

    size = int(cfg.train["max_batch_size"])
    train = (task.info.get("sizes") or {}).get("train")
    if isinstance(train, int) and train > 0:
        size = min(size, train)  # a batch larger than the data is never trained on
    start = 1 << (size.bit_length() - 1)  # a power of two

    def half() -> int:
        nonlocal start
        start //= 2
        return start

    def fits(batch_size: int) -> int:
        try_cfg = with_batch_size(cfg, batch_size)
        seed_everything(0)
        setup = generator.setup(try_cfg, member, task)
        batches = setup.train_batches(torch.Generator().manual_seed(0))
        # The batch with the most tokens of (at most) the first few hundred.
        batch = max(itertools.islice(batches, 256),
                    key=lambda b: sum(v.numel() for v in b.values() if v.dtype == torch.long))
        model = setup.model.to(device)
        optimizer = make_optimizer(try_cfg, member, model, generator)
        model.train()
        try:
            batch = {k: v.to(device) for k, v in batch.items()}
            accelerator = make_accelerator(try_cfg, device)
            optimizer = accelerator.prepare_optimizer(optimizer, device_placement=False)
            with accelerator.autocast():
                loss = generator.train_loss(model, batch)
            accelerator.backward(loss)
            optimizer.step()
            accelerator.free_memory()
        finally:
            del model, optimizer, setup
        return batch_size

    try:
        return find_executable_batch_size(fits, starting_batch_size=start,
                                          reduce_batch_size_fn=half)()
    except RuntimeError as exc:
        if "reached zero" in str(exc):
            raise ConfigError(f"batch_size = \"auto\": not even one example of member "
                              f"{member.id} fits on {device}",
                              hint="lower [train] max_seq_len, or use a smaller backbone") from None
        raise


def resolve_auto(cfg: ZooConfig, generator: Generator, task: TaskData, members: list[Member],
                 costs: dict[str, float], device: torch.device, out: Path,
                 resume: bool, log: Any = print, store: Any = None) -> ZooConfig:
    """The config with ``batch_size = "auto"`` replaced by the chosen size (the config
    itself where it gives a number)."""
    if cfg.train["batch_size"] != "auto":
        return cfg
    exists = store.exists(out) if store is not None else out.is_file()
    chosen = recorded_batch_size(out) if resume and exists else None
    if chosen is None:
        largest = max(members, key=lambda m: (costs.get(m.id, 0.0), m.id))
        chosen = find_batch_size(cfg, generator, task, largest, device)
        log(f"batch_size = \"auto\": {chosen} fits on {device} (of at most "
            f"{cfg.train['max_batch_size']})")
    return with_batch_size(cfg, chosen)
