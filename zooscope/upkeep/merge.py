"""``zoo merge`` and ``zoo split``: zoos of one config joined into one zoo, or one zoo
written as parts.

They read through the ``Zoo`` interface and write through a store's writer; the
file format is the store's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from zooscope.access import open_stored, store_for
from zooscope.errors import ZooFileError
from zooscope.upkeep.outputs import check_output_path
from zooscope.zoo import RUNNING, STATUS_CODES, Member


def merge_zoos(parts: Sequence[Path], out: Path, all_members: Sequence[Member] | None = None,
               on_checkpoint: Callable[[], None] = lambda: None,
               max_part_size: int | None = None) -> int:
    """Join shards of one zoo into ``out``; returns the number of checkpoints copied.

    Shards must come from the same config and must not share a member with
    checkpoints. Written to a temporary zoo first, so a failed merge leaves no
    half zoo at ``out``. Where ``out`` is a zoo of parts (``NAME.zoo``), each part
    holds at most ``max_part_size`` bytes (the reverse of a merge: a split).
    """
    if not parts:
        raise ZooFileError("nothing to merge: give at least one shard")
    try:
        store = store_for(out)
    except ZooFileError:
        check_output_path(out)  # a folder or an impossible place is named first
        raise
    check_output_path(out, directory=store.folders)
    zoos = [open_stored(p) for p in parts]
    try:
        first = zoos[0]
        for p, z in zip(parts[1:], zoos[1:], strict=True):
            if z.config_text != first.config_text:
                raise ZooFileError(f"{p} was generated from a different config than {parts[0]}",
                                   hint="only shards of the same zoo can be merged")
        owner: dict[str, Path] = {}
        members: dict[str, Member] = {m.id: m for m in all_members or []}
        for p, z in zip(parts, zoos, strict=True):
            for m in z.members():
                members.setdefault(m.id, m)
                if z.checkpoints(m):
                    if m.id in owner:
                        raise ZooFileError(f"member {m.id} has checkpoints in both {owner[m.id]} "
                                           f"and {p}", hint="shards must not overlap")
                    owner[m.id] = p
        record = first.record()
        tmp = store.temporary(out)
        if store.being_written(tmp):
            raise ZooFileError(f"another merge into {out} is running",
                               hint="wait for it to finish, or stop it first")
        # What a killed merge left: its half-written zoo and its lock file.
        store.remove_new(tmp)
        copied = 0
        writer = store.create(tmp, record, list(members.values()), max_part_size=max_part_size)
        try:
            with writer:
                for z in zoos:
                    for m in z.members():
                        cps = z.checkpoints(m)
                        if not cps:
                            continue
                        arch = z.architecture(m)
                        writer.ensure_architecture(arch)
                        writer.start_member(m, arch)  # type: ignore[arg-type]
                        preds = z.predictions(cps) if record.test.predictions else None
                        for k, c in enumerate(cps):
                            row = None if preds is None else preds[k]
                            # Stored chunks are copied as they are where the stores allow;
                            # otherwise each tensor is decoded and written again.
                            if not writer.copy_checkpoint(z, m, c, row):
                                writer.write_checkpoint(m, c.epoch, c.step, c.wall_time,
                                                        z.state_dict(m, c.epoch), c.metrics, row)
                            copied += 1
                            on_checkpoint()
                        writer.set_status(m, STATUS_CODES.get(m.status, RUNNING))
            store.replace(tmp, out)
        except BaseException:
            store.remove_new(tmp)
            raise
        store.remove_new(tmp)
        return copied
    finally:
        for z in zoos:
            z.close()
