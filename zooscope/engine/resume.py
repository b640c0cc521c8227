"""Resuming a zoo: the optimizer and RNG state kept beside it, the member ids it was
started with, and the check that a resumed zoo comes from the same config."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zooscope.config import ZooConfig
from zooscope.errors import UnfinishedWrite, ZooFileError
from zooscope.files import UnsafeFile, is_regular, read_json_object
from zooscope.zoo import Member


class ResumeState:
    """Optimizer and RNG state of unfinished members, in a folder the store names
    (``NAME.h5.state/`` beside a zoo file).

    Written before the checkpoint it belongs to is committed, so the newest committed
    checkpoint always has its state; dropped once the member completes. safetensors
    and JSON only: nothing here can execute code when loaded.
    """

    def __init__(self, state_dir: Path) -> None:
        #: The folder the zoo's store keeps it in (``Store.state_dir``).
        self.dir = state_dir

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
        if not (os.path.lexists(tensors_path) and os.path.lexists(meta_path)):
            return False
        from safetensors import SafetensorError

        try:
            self._restore(tensors_path, meta_path, optimizer, load_file)
        except (SafetensorError, UnsafeFile, OSError, ValueError, TypeError, KeyError,
                IndexError, RuntimeError, OverflowError, RecursionError, AttributeError) as exc:
            # safetensors, torch and the RNGs each raise their own kinds for a damaged file
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() \
                else type(exc).__name__
            raise ZooFileError(
                f"the resume state of member {member.id} at epoch {epoch} in {self.dir} is "
                f"damaged ({reason})",
                hint="restore that folder from a backup, or regenerate the zoo with --force; "
                     "without its optimizer state the member cannot continue bitwise") from None
        return True

    @staticmethod
    def _restore(tensors_path: Path, meta_path: Path, optimizer: torch.optim.Optimizer,
                 load_file: Any) -> None:
        if not is_regular(tensors_path):
            raise UnsafeFile(f"{tensors_path.name} is not a regular file")
        meta = read_json_object(meta_path, limit=64 << 20)
        tensors = load_file(str(tensors_path))
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


#: Config keys that say how to run, not what the zoo is: they may change on --resume.
RUN_KEYS = {("train", "num_threads"), ("train", "device"), ("zoo", "description"),
            ("zoo", "max_members"), ("train", "log_with"), ("zoo", "license"),
            ("zoo", "data_license"), ("zoo", "max_part_size")}


def check_resumable(cfg: ZooConfig, out: Path) -> None:
    """Refuse to resume a zoo made from another config, before the file is opened for
    writing, naming what changed."""
    import tomllib

    from zooscope.access import open_zoo
    from zooscope.config import DEFAULTS, SCHEMA

    try:
        zoo = open_zoo(out)
    except UnfinishedWrite:
        return  # only resuming opens it; the store checks it then
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


def stored_ids(path: Path, members: list[Member]) -> list[Member]:
    """The members as the zoo being resumed names them.

    A member must keep its stored id; a zoo written before ids covered the training
    recipe stores ids over the factors alone, which are taken as they are. Any other
    difference means the config, data or backbone changed since the zoo was started.
    """
    from zooscope.access import open_zoo
    from zooscope.zoo import canonical_json, member_id

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
