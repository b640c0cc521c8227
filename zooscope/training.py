"""The training engine every generator shares: seeding, the epoch loop, recording, resuming.

Generators supply data, models and evaluation (``zooscope.generation``); the
store persists checkpoints (``zooscope.store``). Multi-process runs split members
between processes with Accelerate and merge the per-process shards at the end.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zooscope import registry
from zooscope.config import ZooConfig
from zooscope.errors import ConfigError, ZooFileError, ZooscopeError
from zooscope.generation import Generator, MemberSetup, TaskData
from zooscope.lineage import verify_parents
from zooscope.progress import Reporter
from zooscope.progress import current as current_reporter
from zooscope.store import Store, ZooHeader, ZooWriter, lock_path, store_for
from zooscope.zoo import COMPLETE, FAILED, INTERRUPTED, Member
from zooscope.zoofile import check_output_path


class Interrupted(ZooscopeError):
    """Ctrl-C: the run stopped after a training step; ``--resume`` continues it."""

    exit_code = 130


class DiskFull(ZooFileError):
    """The disk filled up during generation; ``--resume`` continues once there is space."""


@dataclass
class GenerateResult:
    path: Path
    members: list[dict[str, Any]] = field(default_factory=list)
    trained: int = 0
    skipped: int = 0
    #: Members whose checkpoints are a longer member's first epochs, committed without training.
    shared: int = 0
    #: False on the other processes of a multi-process run; only the main one reports.
    main: bool = True


def shard_members(members: Sequence[Member], index: int, count: int) -> list[Member]:
    """The contiguous block of members shard ``index`` of ``count`` trains.

    The same arithmetic as Accelerate's ``split_between_processes``, so a SLURM
    array of ``--shard i/n`` and an ``accelerate launch`` run split alike.
    """
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count} is not a valid shard",
                          hint="use I/N with 0 ≤ I < N, e.g. --shard 0/4")
    base, extra = divmod(len(members), count)
    start = index * base + min(index, extra)
    return list(members[start : start + base + (1 if index < extra else 0)])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of one epoch depends on the member's seed and the epoch alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


# -- resume state (optimizer and RNG) kept beside the zoo --------------------------------------
class ResumeState:
    """Optimizer and RNG state of unfinished members, in ``ZOO.state/`` next to the zoo.

    Written before the checkpoint it belongs to is committed, so the newest committed
    checkpoint always has its state; dropped once the member completes. safetensors
    and JSON only: nothing here can execute code when loaded.
    """

    def __init__(self, zoo_path: Path) -> None:
        self.dir = zoo_path.with_name(zoo_path.name + ".state")

    def _stem(self, member: Member, epoch: int) -> Path:
        return self.dir / f"{member.id}.e{epoch}"

    def save(self, member: Member, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(exist_ok=True)
        sd = optimizer.state_dict()
        tensors = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        for idx, state in sd["state"].items():
            for key, value in state.items():
                tensors[f"state.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        np_state = np.random.get_state()
        meta = {
            "param_groups": sd["param_groups"],
            "python_rng": _jsonable(random.getstate()),
            "numpy_rng": [np_state[0], np_state[1].tolist(), *[_jsonable(v) for v in np_state[2:]]],
        }
        stem = self._stem(member, epoch)
        for suffix, write in ((".safetensors", lambda p: save_file(tensors, str(p))),
                              (".json", lambda p: p.write_text(json.dumps(meta)))):
            tmp = stem.with_suffix(suffix + ".tmp")
            write(tmp)
            os.replace(tmp, stem.with_name(stem.name + suffix))

    def load(self, member: Member, epoch: int, optimizer: torch.optim.Optimizer) -> bool:
        from safetensors.torch import load_file

        stem = self._stem(member, epoch)
        tensors_path = stem.with_name(stem.name + ".safetensors")
        meta_path = stem.with_name(stem.name + ".json")
        if not (tensors_path.exists() and meta_path.exists()):
            return False
        tensors = load_file(str(tensors_path))
        meta = json.loads(meta_path.read_text())
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("state."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        random.setstate(_tuples(meta["python_rng"]))
        np_rng = meta["numpy_rng"]
        np.random.set_state((np_rng[0], np.asarray(np_rng[1], dtype=np.uint32), *np_rng[2:]))
        return True

    def keep_only(self, member: Member, epoch: int | None) -> None:
        if not self.dir.exists():
            return
        for p in self.dir.glob(f"{member.id}.e*"):
            if epoch is None or not p.name.startswith(f"{member.id}.e{epoch}."):
                p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only once empty


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# -- the engine -------------------------------------------------------------------------------
class _StopFlag:
    """Turns the first Ctrl-C into a request to stop after the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _device(cfg: ZooConfig, state: Any) -> torch.device:
    wanted = cfg.train["device"]
    if wanted != "auto":
        return torch.device(wanted)
    return state.device if state is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")


def _make_optimizer(cfg: ZooConfig, member: Member, model: torch.nn.Module,
                    generator: Generator) -> torch.optim.Optimizer:
    name = cfg.raw.get("train", {}).get("optimizer", generator.default_optimizer)
    lr = float(member.factors["learning_rate"])
    wd = float(member.factors.get("weight_decay", 0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    # Constant learning rate: no warm-up, no decay, no scheduler at all.
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


@dataclass
class MemberRun:
    """What the engine needs to train one member into a writer."""

    cfg: ZooConfig
    generator: Generator
    task: TaskData
    writer: ZooWriter
    resume_state: ResumeState
    device: torch.device
    stop: _StopFlag
    on_step: Callable[[int], None] = lambda n: None
    on_setup: Callable[[int], None] = lambda steps: None
    #: Accelerate's state when one member trains data-parallel over several processes.
    dist: Any = None
    on_epoch: Callable[[int, dict[str, float]], None] = lambda e, m: None


def _autocast(cfg: ZooConfig, device: torch.device) -> Any:
    mp = cfg.train["mixed_precision"]
    if mp == "no" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if mp == "fp16" else torch.bfloat16)


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
    train_model: torch.nn.Module = model
    if run.dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    optimizer = _make_optimizer(cfg, member, model, run.generator)
    scaler = torch.amp.GradScaler("cuda") if (
        cfg.train["mixed_precision"] == "fp16" and run.device.type == "cuda") else None
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
        step = last * setup.steps_per_epoch
        first_epoch = last + 1
    else:
        if main:
            metrics, preds = run.generator.evaluate(cfg, setup, run.task, run.device)
            run.resume_state.save(member, 0, optimizer)
            _commit(run, member, 0, 0, 0.0, model, metrics, preds)
        _barrier(run)
        first_epoch = 1
    model.train()
    for epoch in range(first_epoch, epochs + 1):
        loss_sum = torch.zeros((), device=run.device)
        for batch in setup.train_batches(epoch_generator(seed, epoch)):
            batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
            weight = 1.0
            if run.dist is not None:
                batch, weight = _shard(batch, run.dist.process_index, run.dist.num_processes)
            with _autocast(cfg, run.device):
                loss = run.generator.train_loss(train_model, batch) * weight
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()  # stays on the device: no per-step host sync
            step += 1
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


def _share(run: MemberRun, source: Member, member: Member) -> dict[str, float] | None:
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
    registry.notify("zooscope_checkpoint_saved", zoo=str(run.writer.path), member=member,
                    epoch=epoch, metrics=dict(metrics))


def _header(cfg: ZooConfig, generator: Generator, task: TaskData) -> ZooHeader:
    return ZooHeader(
        name=cfg.name, config_text=cfg.text, generator=generator.name,
        generator_version=generator.version, metric_columns=task.metric_columns,
        data=task.info, predictions=task.predictions, test_labels=task.test_labels,
        test_ids=task.test_ids, test_texts=task.test_texts,
        test_text_pairs=task.test_text_pairs, test_contexts=task.test_contexts,
        test_answers=task.test_answers, storage_dtype=cfg.store["dtype"],
        compression=cfg.store["compression"],
    )


def _distributed_state() -> Any:
    """Accelerate's process state where a launcher started several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def final_metrics(path: Path) -> list[dict[str, Any]]:
    """Each member's factors and last-epoch metrics, read back from the zoo."""
    from zooscope.zoo import open_zoo

    with open_zoo(path) as zoo:
        rows = []
        for m in zoo.members():
            cps = zoo.checkpoints(m)
            rows.append({"id": m.id, **m.factors, **(cps[-1].metrics if cps else {})})
        return rows


def check_output(out: Path, resume: bool, force: bool) -> None:
    if resume and force:
        raise ConfigError("--resume and --force contradict each other")
    check_output_path(out)
    if resume and out.is_symlink():
        # Resuming writes in place: through a link, into a file outside this folder.
        raise ZooFileError(f"{out} is a link to {os.readlink(out)}; resume the zoo itself",
                           hint="zooscope generate CONFIG --out TARGET --resume")
    if out.exists() and not (resume or force):
        raise ZooFileError(f"{out} already exists",
                           hint="add --resume to continue it, or --force to replace it")
    for side in (lock_path(out), out.with_name(out.name + ".creating")):
        if side.is_symlink() or (side.exists() and not side.is_file()):
            raise ZooFileError(f"{side} is not a plain file; zooscope keeps its side files "
                               "beside the zoo and never follows links",
                               hint="remove it, then run again")
    state = ResumeState(out).dir
    if state.is_symlink() or (state.exists() and not state.is_dir()):
        raise ZooFileError(f"{state} is not a folder; zooscope keeps the resume state there "
                           "and never follows links", hint="remove it, then run again")
    if state.is_dir():
        for p in state.iterdir():
            if p.is_symlink() or not p.is_file():
                raise ZooFileError(f"{p} is not a plain file; the resume state holds only "
                                   "files zooscope wrote", hint="remove it, then run again")


def check_device(cfg: ZooConfig) -> None:
    """The device the config names exists here: found before any file is written."""
    wanted = cfg.train["device"]
    if wanted.startswith("cuda"):
        index = int(wanted.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(f"[train] device = {wanted!r}: no such CUDA device on this machine",
                              hint='use device = "auto" or "cpu"')
    elif wanted == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("[train] device = 'mps': this machine has no MPS device",
                          hint='use device = "auto" or "cpu"')


#: Config keys that say how to run, not what the zoo is: they may change on --resume.
RUN_KEYS = {("train", "num_threads"), ("train", "device"), ("zoo", "description"),
            ("zoo", "max_members")}


def check_resumable(cfg: ZooConfig, out: Path) -> None:
    """Refuse to resume a zoo made from another config, before the file is opened for
    writing, naming what changed."""
    import tomllib

    from zooscope.config import DEFAULTS, SCHEMA
    from zooscope.zoo import open_zoo

    try:
        zoo = open_zoo(out)
    except ZooFileError as exc:
        if "not a readable HDF5 file" in exc.message:
            # A writer killed while outside SWMR mode leaves a file only resuming (which
            # clears its write flag) can open; the store checks it then.
            return
        raise
    with zoo:
        stored_text = zoo.config_text
        stored_generator = zoo.info["generator"]
    hint = "resume with the config the zoo was made from, or start a new zoo with --force"
    if stored_text != cfg.text:
        try:
            stored = tomllib.loads(stored_text)
        except tomllib.TOMLDecodeError:
            raise ZooFileError(f"{out} was made from another config (its stored config is not "
                               "valid TOML)", hint=hint) from None
        changes = []
        for table in SCHEMA:
            old = {**DEFAULTS.get(table, {}), **(stored.get(table) or {})}
            new = {**DEFAULTS.get(table, {}), **cfg.raw.get(table, {})}
            for key in sorted(set(old) | set(new)):
                if (table, key) not in RUN_KEYS and old.get(key) != new.get(key):
                    changes.append(f"[{table}] {key} {old.get(key, '(unset)')!r} → "
                                   f"{new.get(key, '(unset)')!r}")
        if changes:
            more = f" and {len(changes) - 2} more" if len(changes) > 2 else ""
            raise ZooFileError(f"{out} was made from another config: "
                               f"{'; '.join(changes[:2])}{more}", hint=hint)
    if stored_generator and stored_generator != cfg.generator:
        raise ZooFileError(f"{out} was made by the generator {stored_generator!r}, not "
                           f"{cfg.generator!r}", hint=hint)


def part_path(out: Path, index: int, count: int) -> Path:
    return out.with_name(f"{out.stem}.part{index}of{count}{out.suffix}")


def generate(
    cfg: ZooConfig, out: Path, *, resume: bool = False, force: bool = False,
    shard: tuple[int, int] | None = None, progress: Reporter | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> GenerateResult:
    """Train every member of the config (or of one shard) into the zoo at ``out``.

    ``progress`` receives each member, epoch and step (default: the current reporter
    of ``zooscope.progress``, silent outside the CLI).
    """
    generator = registry.get_generator(cfg.generator)
    generator.validate(cfg)
    store: Store = store_for(out)
    check_device(cfg)
    state = _distributed_state()
    if state is None or state.is_main_process or cfg.zoo["strategy"] == "members":
        # Under ddp the main process creates the zoo: a slower rank must not find it
        # there and stop with "already exists" while the others wait for it.
        check_output(out, resume, force)
        if force and store.being_written(out):
            # Before anything is replaced: the live writer's zoo and resume state stay.
            raise ZooFileError(f"{out} is being written by another process",
                               hint="wait for it to finish, or stop it first, then --force")
        if resume and out.is_file():
            check_resumable(cfg, out)
    task = generator.prepare(cfg)  # bad data fails here, before any file is touched
    members = member_list(cfg, generator, task)
    if shard is not None:
        members = shard_members(members, *shard)
    verify_parents(members, cfg.path.parent if cfg.path is not None else None)
    if state is not None and cfg.zoo["strategy"] == "members":
        if cfg.train["num_threads"] == 0 and state.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // state.num_processes))
        path = part_path(out, state.process_index, state.num_processes)
        with state.split_between_processes(members) as mine:
            result = _generate_into(cfg, generator, task, store, path, list(mine), resume,
                                    force, progress if state.is_main_process else Reporter(), log,
                                    state)
        state.wait_for_everyone()
        if state.is_main_process:
            from zooscope.zoofile import merge_zoos

            parts = [part_path(out, i, state.num_processes) for i in range(state.num_processes)]
            if out.exists() and force:
                out.unlink()
            merge_zoos(parts, out, all_members=members)
            for p in parts:
                p.unlink()
                # The part's writer lock outlives its writer by design; the part is gone.
                lock_path(p).unlink(missing_ok=True)
            result.path = out
            result.members = final_metrics(out)
            result.trained = len(result.members) - result.skipped - result.shared
        result.main = state.is_main_process
        state.wait_for_everyone()
        return result
    if cfg.train["num_threads"]:
        torch.set_num_threads(int(cfg.train["num_threads"]))
    elif state is not None and state.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // state.num_processes))
    if state is not None:  # strategy "ddp": every process trains every member together
        result = _generate_into(cfg, generator, task, store, out, members, resume, force,
                                progress if state.is_main_process else Reporter(), log, state,
                                dist=state)
        result.main = state.is_main_process
        return result
    return _generate_into(cfg, generator, task, store, out, members, resume, force, progress,
                          log, state)


def member_list(cfg: ZooConfig, generator: Generator | None = None,
                task: TaskData | None = None) -> list[Member]:
    """The config's members with ids over everything that decides their weights: the
    generator, its data as prepared (loaded here when ``task`` is not given), the
    training settings and the factors."""
    generator = generator or registry.get_generator(cfg.generator)
    task = task or generator.prepare(cfg)
    return cfg.members(recipe=cfg.recipe(generator.version, task.info,
                                         generator.default_optimizer))


def stored_ids(path: Path, members: list[Member]) -> list[Member]:
    """The members as the zoo being resumed names them.

    A member must keep its stored id; a zoo written before ids covered the training
    recipe stores ids over the factors alone, which are taken as they are. Any other
    difference means the config, data or backbone changed since the zoo was started.
    """
    from zooscope.zoo import canonical_json, member_id, open_zoo

    with open_zoo(path) as zoo:
        stored = {m.id: m for m in zoo.members()}
    by_factors = {canonical_json(m.factors): m.id for m in stored.values()}
    renamed: dict[str, str] = {}
    for m in members:
        if m.id in stored:
            continue
        old = by_factors.get(canonical_json(m.factors))
        if old is not None and old == member_id(m.factors):
            renamed[m.id] = old
            continue
        raise ZooFileError(
            f"{path} was started with another config, data or backbone: it has no member "
            f"{m.id} ({', '.join(f'{k}={v}' for k, v in m.factors.items() if k != 'backbone')})",
            hint="generate into a new file, or replace this one with --force")
    if not renamed:
        return members
    out = []
    for m in members:
        lineage = m.lineage
        if lineage and lineage.get("checkpoints_from") in renamed:
            lineage = {**lineage, "checkpoints_from": renamed[lineage["checkpoints_from"]]}
        out.append(Member(id=renamed.get(m.id, m.id), factors=m.factors, lineage=lineage))
    return out


def _generate_into(cfg: ZooConfig, generator: Generator, task: TaskData, store: Store,
                   path: Path, members: list[Member], resume: bool, force: bool, progress: Any,
                   log: Callable[[str], None], state: Any, dist: Any = None) -> GenerateResult:
    if resume and path.exists():
        members = stored_ids(path, members)
    resume_state = ResumeState(path)
    writer: ZooWriter
    discard = _DiscardIfNothingCommitted(path, resume_state.dir)
    if dist is not None and not dist.is_main_process:
        dist.wait_for_everyone()  # the main process has created or reopened the zoo
        writer = _Follower(path)
    else:
        if resume and path.exists():
            writer = store.resume(path)
        else:
            discard.state_existed = resume_state.dir.exists()
            discard.lock_existed = discard.lock.exists()
            writer = store.create(path, _header(cfg, generator, task), members)
            discard.created = True
            # Only now, holding the zoo's lock: a live writer's resume state is never touched.
            if force and resume_state.dir.exists():
                for p in resume_state.dir.iterdir():
                    p.unlink()
        if dist is not None:
            dist.wait_for_everyone()
    result = GenerateResult(path=path)
    device = _device(cfg, state)
    reporter = progress if progress is not None else current_reporter()
    with discard, writer, _StopFlag() as stop:
        ids = {m.id: m for m in members}
        order = training_order(members)
        done_epochs = {m.id: writer.completed_epochs(m) for m in order}

        def shares(m: Member) -> bool:
            return dist is None and (m.lineage or {}).get("checkpoints_from", "") in ids

        reporter.zoo_start(sum(max(0, cfg.epochs_of(m) - max(done_epochs[m.id], default=0))
                               for m in order if not shares(m)))
        run = MemberRun(cfg=cfg, generator=generator, task=task, writer=writer,
                        resume_state=resume_state, device=device, stop=stop,
                        on_step=reporter.step, on_setup=reporter.steps_total, dist=dist)
        for index, member in enumerate(order, 1):
            epochs = cfg.epochs_of(member)
            done = done_epochs[member.id]
            reporter.member_start(member, index, len(order), epochs, max(done, default=0))
            if done == list(range(epochs + 1)):
                writer.set_status(member, COMPLETE)
                result.skipped += 1
                reporter.member_done(member, skipped=True)
                continue
            source = ids.get((member.lineage or {}).get("checkpoints_from", ""))
            try:
                shared = None
                if source is not None and dist is None:
                    run.on_epoch = functools.partial(reporter.epoch, member, trained=False)
                    shared = _share(run, source, member)
                if shared is not None:
                    metrics = shared
                    result.shared += 1
                else:
                    run.on_epoch = functools.partial(reporter.epoch, member)
                    metrics = train_member(run, member)
                    result.trained += 1
            except (Interrupted, KeyboardInterrupt):
                _set_status_quietly(writer, member, INTERRUPTED)
                raise
            except ZooscopeError:
                writer.set_status(member, FAILED)
                raise
            except Exception as exc:
                if not _disk_full(exc):
                    raise
                _set_status_quietly(writer, member, INTERRUPTED)
                raise DiskFull(
                    f"the disk holding {path} is full (no space left on device) while writing "
                    f"member {member.id}; every checkpoint committed before it is intact"
                ) from None
            result.members.append({"id": member.id, **member.factors, **metrics})
            reporter.member_done(member)
    log(f"{result.trained} members trained, {result.shared} shared a longer run's checkpoints, "
        f"{result.skipped} already complete")
    return result


def _disk_full(exc: BaseException) -> bool:
    # h5py and safetensors report a failed write as an OSError or their own error whose
    # text carries the system's message, not always with errno set.
    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc)


def _set_status_quietly(writer: ZooWriter, member: Member, status: int) -> None:
    """Record why a member stopped where the file still takes a write (a full disk may not)."""
    with contextlib.suppress(OSError, ZooscopeError):
        writer.set_status(member, status)


class _DiscardIfNothingCommitted:
    """A run that created its zoo and failed before committing a checkpoint leaves no
    file: there is nothing to resume, and a failed start must not leave a zoo behind.
    Exits after the writer has closed (it comes first in the ``with``); a Ctrl-C keeps
    the zoo, as its message promises a resume."""

    def __init__(self, path: Path, state_dir: Path) -> None:
        self.path = path
        self.state_dir = state_dir
        self.created = False
        self.state_existed = True
        self.lock = lock_path(path)
        self.lock_existed = True

    def __enter__(self) -> _DiscardIfNothingCommitted:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if kind is None or not self.created or not issubclass(kind, Exception) or \
                isinstance(exc, Interrupted):
            return
        from zooscope.zoo import open_zoo

        try:
            with open_zoo(self.path) as zoo:
                if zoo.checkpoints():
                    return
        except ZooscopeError:
            return  # unreadable: leave it for the user to look at
        self.path.unlink(missing_ok=True)
        if not self.lock_existed:
            # The writer's lock file (docs/format.md) outlives its writer by design; one
            # made for a zoo that no longer exists is left over from this run alone.
            self.lock.unlink(missing_ok=True)
        if not self.state_existed and self.state_dir.is_dir():
            for p in self.state_dir.iterdir():
                p.unlink()
            self.state_dir.rmdir()


class _Follower(ZooWriter):
    """The zoo as a non-main process of a data-parallel run sees it: read-only.

    The main process writes every checkpoint; the others only need what is
    committed, to skip finished members and to resume from the same state.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _zoo(self) -> Any:
        from zooscope.zoo import open_zoo

        return open_zoo(self.path)

    def ensure_architecture(self, arch: Any) -> None:
        pass

    def start_member(self, member: Member, arch_key: Any) -> None:
        pass

    def set_status(self, member: Member, status: int) -> None:
        pass

    def completed_epochs(self, member: Member) -> list[int]:
        with self._zoo() as zoo:
            return [c.epoch for c in zoo.checkpoints(member)]

    def read_state_dict(self, member: Member, epoch: int) -> dict[str, Any]:
        with self._zoo() as zoo:
            return zoo.state_dict(member, epoch)

    def write_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
