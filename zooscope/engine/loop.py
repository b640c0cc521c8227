"""Training one member: seeding, the optimizer, the epoch loop with its commits, epochs
shared with a longer run, and data-parallel batches."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zooscope import registry
from zooscope.config import ZooConfig
from zooscope.engine.resume import ResumeState
from zooscope.engine.stops import Interrupted, StopFlag
from zooscope.errors import ZooFileError
from zooscope.generator import Generator, MemberSetup, TaskData
from zooscope.store import ZooWriter
from zooscope.zoo import COMPLETE, Member


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of one epoch depends on the member's seed and the epoch alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def training_device(cfg: ZooConfig, state: Any) -> torch.device:
    wanted = cfg.train["device"]
    if wanted != "auto":
        return torch.device(wanted)
    return state.device if state is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(cfg: ZooConfig, member: Member, model: torch.nn.Module,
                   generator: Generator) -> torch.optim.Optimizer:
    name = cfg.raw.get("train", {}).get("optimizer", generator.default_optimizer)
    lr = float(member.factors["learning_rate"])
    wd = float(member.factors.get("weight_decay", 0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    # The fused kernel (the transformers Trainer's default): one pass over all
    # parameters instead of a loop over tensors, 7x faster on CPU for MiniLM. It rounds
    # differently from the loop in the last bit; runs stay bitwise reproducible.
    try:
        return kind(params, lr=lr, weight_decay=wd, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype the fused kernel lacks
        return kind(params, lr=lr, weight_decay=wd)


def schedule_of(cfg: ZooConfig, member: Member) -> str:
    return str(member.factors.get("lr_schedule", cfg.train["lr_schedule"]))


def lr_factor(cfg: ZooConfig, member: Member, step: int, total: int) -> float:
    """The learning rate at ``step`` (counted from 0) as a fraction of the member's
    learning rate. ``constant``: 1. ``linear`` (BERT fine-tuning's, as transformers'
    ``get_linear_schedule_with_warmup``): up from 0 over the first ``warmup_ratio`` of the
    ``total`` steps, then down to 0 at the last."""
    if schedule_of(cfg, member) == "constant":
        return 1.0
    warmup = int(cfg.train["warmup_ratio"] * total)
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class MemberRun:
    """What the engine needs to train one member into a writer."""

    cfg: ZooConfig
    generator: Generator
    task: TaskData
    writer: ZooWriter
    resume_state: ResumeState
    device: torch.device
    stop: StopFlag
    on_step: Callable[[int], None] = lambda n: None
    on_setup: Callable[[int], None] = lambda steps: None
    #: Accelerate's state when one member trains data-parallel over several processes.
    dist: Any = None
    on_epoch: Callable[[int, dict[str, float]], None] = lambda e, m: None
    #: Experiment trackers (``[train] log_with``), on the main process.
    trackers: Any = None
    #: The Accelerator of the build (``make_accelerator``); one per member where None.
    accelerator: Any = None


def make_accelerator(cfg: ZooConfig, device: torch.device) -> Any:
    """The Accelerator that drives mixed precision (autocast, fp16 loss scaling), the
    backward pass, gradient clipping and the optimizer step.

    ``[train] mixed_precision`` is ``no``, ``fp16``, ``bf16`` or ``auto`` (what
    ``accelerate launch`` passes, from ``accelerate config`` or ``--mixed_precision``).
    Off a GPU training stays in full precision, so CPU runs remain bitwise reproducible.
    """
    from accelerate import Accelerator

    wanted = cfg.train["mixed_precision"]
    precision = "no" if device.type != "cuda" else (None if wanted == "auto" else wanted)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=precision,
                       device_placement=False)


def train_member(run: MemberRun, member: Member) -> dict[str, float]:
    """Train (or continue) one member, committing a checkpoint after every epoch."""
    cfg, writer = run.cfg, run.writer
    epochs = cfg.epochs_of(member)
    seed = int(member.factors["seed"])
    _barrier(run)  # every process reads the same committed state before anyone writes
    done = writer.completed_epochs(member)
    _barrier(run)
    seed_everything(seed)
    setup: MemberSetup = run.generator.setup(cfg, member, run.task)
    run.on_setup(setup.steps_per_epoch)
    writer.ensure_architecture(setup.architecture)
    writer.start_member(member, setup.architecture)  # type: ignore[arg-type]
    model = setup.model.to(run.device)
    main = run.dist is None or run.dist.is_main_process
    if main and run.trackers is not None:
        run.trackers.start(member)
    train_model: torch.nn.Module = model
    if run.dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    accelerator = run.accelerator if run.accelerator is not None \
        else make_accelerator(cfg, run.device)
    optimizer = accelerator.prepare_optimizer(make_optimizer(cfg, member, model, run.generator),
                                              device_placement=False)
    start = time.perf_counter()
    step = 0
    metrics: dict[str, float] = {}
    if done:
        last = max(done)
        state = writer.read_state_dict(member, last)
        model.load_state_dict({k: v.float() if v.dtype == torch.bfloat16 else v
                               for k, v in state.items()})
        if not run.resume_state.load(member, last, optimizer):
            raise ZooFileError(
                f"member {member.id} has checkpoints up to epoch {last} but its optimizer "
                f"state is missing from {run.resume_state.dir}",
                hint="regenerate the zoo with --force, or restore that folder",
            )
        first_epoch = last + 1
    else:
        if main:
            metrics, preds = run.generator.evaluate(cfg, setup, run.task, run.device)
            run.resume_state.save(member, 0, optimizer)
            _commit(run, member, 0, 0, 0.0, model, metrics, preds)
        _barrier(run)
        first_epoch = 1
    # The schedule is a function of the optimizer step alone, so a resumed run sets the
    # same rates. Gradients accumulate over micro-batches within an epoch, never across
    # its end: every commit holds whole optimizer steps.
    scheduled = schedule_of(cfg, member) != "constant"
    lr = float(member.factors["learning_rate"])
    accumulate = int(cfg.train["gradient_accumulation_steps"])
    clip = float(cfg.train["max_grad_norm"])
    batches = setup.steps_per_epoch
    per_epoch = -(-batches // accumulate)
    total_steps = epochs * per_epoch
    model.train()
    for epoch in range(first_epoch, epochs + 1):
        loss_sum = torch.zeros((), device=run.device)
        step = (epoch - 1) * per_epoch
        for i, batch in enumerate(setup.train_batches(epoch_generator(seed, epoch))):
            batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
            weight = 1.0
            if run.dist is not None:
                batch, weight = _shard(batch, run.dist.process_index, run.dist.num_processes)
            if accumulate > 1:  # each micro-batch's share of its optimizer step
                weight /= min(accumulate, batches - i // accumulate * accumulate)
            sync = accumulate == 1 or (i + 1) % accumulate == 0 or i + 1 >= batches
            if scheduled and i % accumulate == 0:
                set_lr(optimizer, lr * lr_factor(cfg, member, step, total_steps))
            quiet = train_model.no_sync() if run.dist is not None and not sync \
                else contextlib.nullcontext()
            with quiet:
                with accelerator.autocast():
                    loss = run.generator.train_loss(train_model, batch)
                    if weight != 1.0:
                        loss = loss * weight
                accelerator.backward(loss)  # scaled where fp16 needs it
            if sync:
                if clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), clip)  # unscales first
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            loss_sum += loss.detach()  # stays on the device: no per-step host sync
            run.on_step(1)
            if run.stop.requested:
                raise Interrupted(
                    f"interrupted in epoch {epoch} of member {member.id}; "
                    f"checkpoints up to epoch {epoch - 1} are saved")
        if main:
            metrics, preds = run.generator.evaluate(cfg, setup, run.task, run.device)
            run.resume_state.save(member, epoch, optimizer)
            _commit(run, member, epoch, step, time.perf_counter() - start, model, metrics, preds)
            run.resume_state.keep_only(member, epoch)
            run.on_epoch(epoch, metrics)
        _barrier(run)
    accelerator.free_memory()  # forget this member's optimizer
    if main:
        writer.set_status(member, COMPLETE)
        run.resume_state.keep_only(member, None)
        registry.notify("zooscope_member_finished", zoo=str(writer.path), member=member)
    return metrics


def training_order(members: Sequence[Member]) -> list[Member]:
    """Members in config order, except that a member sharing a longer run's checkpoints
    comes right after that run."""
    ids = {m.id for m in members}
    followers: dict[str, list[Member]] = {}
    for m in members:
        src = (m.lineage or {}).get("checkpoints_from")
        if src in ids:
            followers.setdefault(src, []).append(m)
    out: list[Member] = []
    for m in members:
        if (m.lineage or {}).get("checkpoints_from") in ids:
            continue
        out.append(m)
        out += followers.get(m.id, [])
    return out


def share_epochs(run: MemberRun, source: Member, member: Member) -> dict[str, float] | None:
    """Commit the longer run's first epochs as this member's checkpoints and return the
    last one's metrics; None where the store cannot share, the longer run lacks an epoch,
    or this member already has checkpoints of its own (then it trains)."""
    writer = run.writer
    epochs = run.cfg.epochs_of(member)
    if not set(range(epochs + 1)) <= set(writer.completed_epochs(source)):
        return None
    # Checkpoints this member already has (an interrupted run) equal the source's too.
    done = set(writer.completed_epochs(member))
    metrics: dict[str, float] = {}
    for epoch in range(epochs + 1):
        if epoch in done:
            continue
        try:
            metrics = writer.share_checkpoint(source, member, epoch)
        except NotImplementedError:
            return None
        registry.notify("zooscope_checkpoint_saved", zoo=str(writer.path), member=member,
                        epoch=epoch, metrics=dict(metrics))
        if epoch:
            run.on_epoch(epoch, metrics)
    writer.set_status(member, COMPLETE)
    registry.notify("zooscope_member_finished", zoo=str(writer.path), member=member)
    return metrics


def _barrier(run: MemberRun) -> None:
    if run.dist is not None:
        run.dist.wait_for_everyone()


def _shard(batch: dict[str, torch.Tensor], rank: int, world: int
           ) -> tuple[dict[str, torch.Tensor], float]:
    """This process's rows of a batch, and the weight that makes the averaged gradient
    equal the whole batch's: DDP averages per-process means, so each is scaled by its
    share of the rows. A batch with fewer rows than processes is used whole by all."""
    n = next(iter(batch.values())).shape[0]
    if n < world:
        return batch, 1.0
    rows = torch.arange(rank, n, world)
    return {k: v[rows.to(v.device)] for k, v in batch.items()}, len(rows) * world / n


def _commit(run: MemberRun, member: Member, epoch: int, step: int, wall: float,
            model: torch.nn.Module, metrics: dict[str, float], preds: np.ndarray | None) -> None:
    run.writer.write_checkpoint(member, epoch, step, wall, model.state_dict(), metrics, preds)
    if run.trackers is not None:
        run.trackers.log(epoch, metrics)
    registry.notify("zooscope_checkpoint_saved", zoo=str(run.writer.path), member=member,
                    epoch=epoch, metrics=dict(metrics))
