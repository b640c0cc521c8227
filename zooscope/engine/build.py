"""Building a zoo: the members of a config, one process or several (a shard each, or
all of them data-parallel), merged into one file at the end."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zooscope import registry
from zooscope.access import store_for
from zooscope.config import ZooConfig
from zooscope.engine.batchsize import EXTRA_KEY as AUTO_BATCH_KEY
from zooscope.engine.batchsize import resolve_auto
from zooscope.engine.checks import check_device, check_output
from zooscope.engine.loop import (
    MemberRun,
    make_accelerator,
    share_epochs,
    train_member,
    training_device,
    training_order,
)
from zooscope.engine.resume import ResumeState, check_resumable, stored_ids
from zooscope.engine.stops import (
    DiscardIfNothingCommitted,
    DiskFull,
    Interrupted,
    StopFlag,
    disk_full,
    set_status_quietly,
)
from zooscope.engine.tracking import MemberTrackers, check_trackers
from zooscope.environment import world_size
from zooscope.errors import ConfigError, ZooFileError, ZooscopeError
from zooscope.generator import Generator, TaskData
from zooscope.lineage import expand_parents, verify_parents
from zooscope.progress import Reporter
from zooscope.progress import current as current_reporter
from zooscope.record import ZooRecord
from zooscope.store import Store, ZooWriter
from zooscope.zoo import COMPLETE, FAILED, INTERRUPTED, STATUS_LABELS, Member


@dataclass
class BuildResult:
    path: Path
    members: list[dict[str, Any]] = field(default_factory=list)
    trained: int = 0
    skipped: int = 0
    #: Members whose checkpoints are a longer member's first epochs, committed without training.
    shared: int = 0
    #: False on the other processes of a multi-process run; only the main one reports.
    main: bool = True

    def summary(self) -> str:
        return (f"{self.trained} members trained, {self.shared} shared a longer run's "
                f"checkpoints, {self.skipped} already complete")


def shard_members(members: Sequence[Member], index: int, count: int,
                  costs: dict[str, float] | None = None) -> list[Member]:
    """The members shard ``index`` of ``count`` trains.

    With ``costs`` (``member_costs``), shards are balanced by estimated cost
    (``balanced_shards``); without, each shard is a contiguous block, the same
    arithmetic as Accelerate's ``split_between_processes``.
    """
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {index}/{count} is not a valid shard",
                          hint="use I/N with 0 ≤ I < N, e.g. --shard 0/4")
    if costs is not None:
        return balanced_shards(members, count, costs)[index]
    base, extra = divmod(len(members), count)
    start = index * base + min(index, extra)
    return list(members[start : start + base + (1 if index < extra else 0)])


def balanced_shards(members: Sequence[Member], count: int,
                    costs: dict[str, float]) -> list[list[Member]]:
    """Members split into ``count`` shards of about equal estimated cost.

    Members whose checkpoints are a longer member's first epochs stay in that member's
    shard (they cost nothing there). Largest groups first, each to the least loaded
    shard; the same members and costs always give the same shards, so every task of
    an array computes the same split on its own.
    """
    groups: dict[str, list[Member]] = {}
    for m in members:
        root = (m.lineage or {}).get("checkpoints_from") or m.id
        groups.setdefault(root, []).append(m)

    def cost(group: list[Member]) -> float:
        return max(costs.get(m.id, 1.0) for m in group)

    loads = [0.0] * count
    shards: list[list[Member]] = [[] for _ in range(count)]
    for group in sorted(groups.values(), key=lambda g: (-cost(g), g[0].id)):
        i = min(range(count), key=lambda k: (loads[k], k))
        shards[i].extend(group)
        loads[i] += cost(group)
    place = {m.id: k for k, m in enumerate(members)}
    return [sorted(shard, key=lambda m: place[m.id]) for shard in shards]


def member_costs(cfg: ZooConfig, task: TaskData | None, members: Sequence[Member]
                 ) -> dict[str, float]:
    """Each member's estimated training cost: backbone parameters × training examples ×
    epochs. A backbone whose size cannot be found without training counts as the
    largest one found (as 1 where none is)."""
    sizes = (task.info.get("sizes") if task is not None else None) or {}
    train = int(sizes.get("train") or 1)
    found: dict[str, int | None] = {}
    for m in members:
        name = str(m.factors.get("backbone", cfg.zoo["backbone"]))
        if name not in found:
            found[name] = backbone_parameters(cfg, name)
    known = [v for v in found.values() if v]
    fallback = max(known) if known else 1
    out = {}
    for m in members:
        params = found[str(m.factors.get("backbone", cfg.zoo["backbone"]))] or fallback
        cap = int(m.factors.get("max_train_examples", cfg.train["max_train_examples"]) or 0)
        examples = min(train, cap) if cap > 0 else train
        out[m.id] = float(params) * examples * max(cfg.epochs_of(m), 1)
    return out


def backbone_parameters(cfg: ZooConfig, name: str) -> int | None:
    """The parameters of a backbone, built on torch's meta device from its config (no
    weights are read); None where its config cannot be found."""
    from transformers import AutoConfig

    from zooscope.kit.models import base_model
    from zooscope.zoo import hub_revision

    try:
        if name == "scratch":
            sc = cfg.scratch
            config = AutoConfig.for_model(
                sc["model_type"], vocab_size=sc["vocab_size"], hidden_size=sc["hidden_size"],
                num_hidden_layers=sc["num_hidden_layers"],
                num_attention_heads=sc["num_attention_heads"],
                intermediate_size=sc["intermediate_size"])
        elif name.startswith("zoo://"):
            return None
        else:
            source, revision = hub_revision(name)
            config = AutoConfig.from_pretrained(cfg.resolve(source),
                                                **({"revision": revision} if revision else {}))
        with torch.device("meta"):
            return sum(p.numel() for p in base_model(config).parameters())
    except Exception:  # an estimate: any failure means "unknown"
        return None


def _record(cfg: ZooConfig, generator: Generator, task: TaskData,
            accelerator: Any = None) -> ZooRecord:
    extra: dict[str, Any] = {}
    if cfg.raw.get("train", {}).get("batch_size") == "auto":
        extra[AUTO_BATCH_KEY] = int(cfg.train["batch_size"])
    if cfg.train["mixed_precision"] == "auto" and accelerator is not None:
        extra["mixed_precision"] = str(accelerator.mixed_precision)
    return ZooRecord(
        name=cfg.name, config_text=cfg.text, generator=generator.name,
        generator_version=generator.version, metric_columns=task.metric_columns,
        data=task.info, test=task.test, storage_dtype=cfg.store["dtype"],
        compression=cfg.store["compression"], extra=extra)


def _distributed_state() -> Any:
    """Accelerate's process state where a launcher started several processes, else None."""
    if world_size() <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def final_metrics(path: Path) -> list[dict[str, Any]]:
    """Each member's factors and last-epoch metrics, read back from the zoo."""
    from zooscope.access import open_zoo

    with open_zoo(path) as zoo:
        rows = []
        for m in zoo.members():
            cps = zoo.checkpoints(m)
            rows.append({"id": m.id, **m.factors, **(cps[-1].metrics if cps else {})})
        return rows


def build_zoo(
    cfg: ZooConfig, out: Path, *, resume: bool = False, force: bool = False,
    shard: tuple[int, int] | None = None, progress: Reporter | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> BuildResult:
    """Train every member of the config (or of one shard) into the zoo at ``out``.

    ``progress`` receives each member, epoch and step (default: the current reporter
    of ``zooscope.progress``, silent outside the CLI).
    """
    generator = registry.generator_for(cfg)
    generator.validate(cfg)
    store: Store = store_for(out)
    check_device(cfg)
    state = _distributed_state()
    # A store of folders takes every writer's parts into one zoo: each writes its slot.
    slot = None
    if store.parts:
        several = state is not None and cfg.zoo["strategy"] == "members"
        if shard is not None and several:
            slot = _combined_slot(shard, state)
        elif shard is not None:
            slot = f"s{shard[0]}of{shard[1]}"
        elif several:
            slot = f"s{state.process_index}of{state.num_processes}"
    if state is None or state.is_main_process or cfg.zoo["strategy"] == "members":
        # Under ddp the main process creates the zoo: a slower rank must not find it
        # there and stop with "already exists" while the others wait for it.
        check_output(out, resume, force, store, slot)
        if force and store.being_written(out) and slot is None:
            # Before anything is replaced: the live writer's zoo and resume state stay.
            raise ZooFileError(f"{out} is being written by another process",
                               hint="wait for it to finish, or stop it first, then --force")
        if (resume or slot is not None) and store.exists(out) and \
                (slot is None or _opens(out)):
            # Every slot of a folder holds members of the same config.
            check_resumable(cfg, out)
    check_trackers(cfg)
    task = generator.prepare(cfg)  # bad data fails here, before any file is touched
    if cfg.train["batch_size"] == "auto":
        candidates = member_list(cfg, generator, task)
        cfg = resolve_auto(cfg, generator, task, candidates,
                           member_costs(cfg, task, candidates),
                           training_device(cfg, state), out, resume, log, store)
    members = every = member_list(cfg, generator, task)
    if shard is not None:
        members = shard_members(members, *shard, costs=member_costs(cfg, task, members))
    verify_parents(members, cfg.path.parent if cfg.path is not None else None)
    if state is not None and cfg.zoo["strategy"] == "members":
        if cfg.train["num_threads"] == 0 and state.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // state.num_processes))
        path = out if store.parts else \
            store.shard_path(out, state.process_index, state.num_processes)
        with state.split_between_processes(members) as mine:
            result = _build_into(cfg, generator, task, store, path, list(mine), resume,
                                 force, progress if state.is_main_process else Reporter(), log,
                                 state, slot=slot, every=every)
        state.wait_for_everyone()
        if state.is_main_process and not store.parts:
            from zooscope.upkeep.merge import merge_zoos

            parts = [store.shard_path(out, i, state.num_processes)
                     for i in range(state.num_processes)]
            if store.exists(out) and force:
                store.remove_new(out, lock=False)
            merge_zoos(parts, out, all_members=members)
            for p in parts:
                # The part's writer lock outlives its writer by design; the part is gone.
                store.remove_new(p)
        if state.is_main_process:
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
        result = _build_into(cfg, generator, task, store, out, members, resume, force,
                             progress if state.is_main_process else Reporter(), log, state,
                             dist=state, slot=slot, every=every)
        result.main = state.is_main_process
        return result
    return _build_into(cfg, generator, task, store, out, members, resume, force, progress,
                       log, state, slot=slot, every=every)


def _combined_slot(shard: tuple[int, int], state: Any) -> str:
    """One slot for process ``i`` of ``n`` in task ``I`` of ``N``: the writer's index
    among all ``N * n`` writers."""
    index = shard[0] * state.num_processes + state.process_index
    return f"s{index}of{shard[1] * state.num_processes}"


def _opens(out: Path) -> bool:
    """Whether the zoo at ``out`` opens: another task's folder lists a part already."""
    try:
        from zooscope.access import open_zoo

        open_zoo(out).close()
    except ZooscopeError:
        return False
    return True


def member_list(cfg: ZooConfig, generator: Generator | None = None,
                task: TaskData | None = None) -> list[Member]:
    """The config's members with ids over everything that decides their weights: the
    generator, its data as prepared (loaded here when ``task`` is not given), the
    training settings and the factors."""
    generator = generator or registry.generator_for(cfg)
    task = task or generator.prepare(cfg)
    expand_parents(cfg)
    return cfg.members(recipe=cfg.recipe(generator.version, task.info,
                                         generator.default_optimizer))


def _build_into(cfg: ZooConfig, generator: Generator, task: TaskData, store: Store,
                path: Path, members: list[Member], resume: bool, force: bool, progress: Any,
                log: Callable[[str], None], state: Any, dist: Any = None,
                slot: str | None = None, every: list[Member] | None = None) -> BuildResult:
    if resume and store.exists(path, slot):
        members = stored_ids(path, members)
        if dist is None and _complete(path, cfg, members):
            # Nothing to train: the zoo is not even opened for writing, so its bytes
            # and modification time stay as they are.
            result = BuildResult(path=path, skipped=len(members))
            log(result.summary())
            return result
    resume_state = ResumeState(store.state_dir(path, slot))
    device = training_device(cfg, state)
    accelerator = make_accelerator(cfg, device)
    writer: ZooWriter
    discard = DiscardIfNothingCommitted(store, path, slot, resume_state.dir)
    if dist is not None and not dist.is_main_process:
        dist.wait_for_everyone()  # the main process has created or reopened the zoo
        writer = _Follower(path)
    else:
        if resume and store.exists(path, slot):
            writer = store.resume(path, slot=slot, max_part_size=cfg.max_part_size)
        else:
            discard.state_existed = resume_state.dir.exists()
            discard.lock_existed = store.side_paths(path, slot)[0].exists()
            writer = store.create(path, _record(cfg, generator, task, accelerator), members,
                                  slot=slot, max_part_size=cfg.max_part_size,
                                  order=every or members)
            discard.created = True
            store_card(writer, path)
            # Only now, holding the zoo's lock: a live writer's resume state is never touched.
            if force and resume_state.dir.exists():
                for p in resume_state.dir.iterdir():
                    p.unlink()
        if dist is not None:
            dist.wait_for_everyone()
    result = BuildResult(path=path)
    reporter = progress if progress is not None else current_reporter()
    with discard, writer, StopFlag() as stop:
        ids = {m.id: m for m in members}
        order = training_order(members)
        done_epochs = {m.id: writer.completed_epochs(m) for m in order}

        def shares(m: Member) -> bool:
            return dist is None and (m.lineage or {}).get("checkpoints_from", "") in ids

        reporter.zoo_start(sum(max(0, cfg.epochs_of(m) - max(done_epochs[m.id], default=0))
                               for m in order if not shares(m)))
        trackers = MemberTrackers(cfg, path) if cfg.train["log_with"] and (
            dist is None or dist.is_main_process) else None
        run = MemberRun(cfg=cfg, generator=generator, task=task, writer=writer,
                        resume_state=resume_state, device=device, stop=stop,
                        on_step=reporter.step, on_setup=reporter.steps_total, dist=dist,
                        trackers=trackers, accelerator=accelerator)
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
                    shared = share_epochs(run, source, member)
                if shared is not None:
                    metrics = shared
                    result.shared += 1
                else:
                    run.on_epoch = functools.partial(reporter.epoch, member)
                    metrics = train_member(run, member)
                    result.trained += 1
            except (Interrupted, KeyboardInterrupt):
                set_status_quietly(writer, member, INTERRUPTED)
                raise
            except ZooscopeError:
                writer.set_status(member, FAILED)
                raise
            except Exception as exc:
                if not disk_full(exc):
                    raise
                set_status_quietly(writer, member, INTERRUPTED)
                raise DiskFull(
                    f"the disk holding {path} is full (no space left on device) while writing "
                    f"member {member.id}; every checkpoint committed before it is intact"
                ) from None
            finally:
                if trackers is not None:
                    trackers.finish()
            result.members.append({"id": member.id, **member.factors, **metrics})
            reporter.member_done(member)
        if dist is None or dist.is_main_process:
            store_card(writer, path)
    log(result.summary())
    return result


def _complete(path: Path, cfg: ZooConfig, members: list[Member]) -> bool:
    """Whether every member is complete, with all its epochs committed, and nothing
    half-written waits in the file."""
    from zooscope.access import open_stored

    try:
        with open_stored(path) as zoo:
            if zoo.uncommitted_rows():
                return False
            stored = {m.id: m for m in zoo.members()}
            for m in members:
                if m.id not in stored or stored[m.id].status != STATUS_LABELS[COMPLETE]:
                    return False
                epochs = [c.epoch for c in zoo.checkpoints(m.id)]
                if epochs != list(range(cfg.epochs_of(m) + 1)):
                    return False
    except ZooscopeError:
        return False  # the writer's own checks say what is wrong
    return True


def store_card(writer: ZooWriter, path: Path) -> None:
    """Store the zoo card as the zoo now stands (``zooscope.services.card``)."""
    from zooscope.access import open_zoo
    from zooscope.services.card import zoo_card

    with open_zoo(path) as zoo:
        writer.write_card(zoo_card(zoo))


class _Follower(ZooWriter):
    """The zoo as a non-main process of a data-parallel run sees it: read-only.

    The main process writes every checkpoint; the others only need what is
    committed, to skip finished members and to resume from the same state.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _zoo(self) -> Any:
        from zooscope.access import open_zoo

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
