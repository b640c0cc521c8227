"""What is checked before a run writes any file: the output path and the device."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from zooscope.config import ZooConfig
from zooscope.errors import ConfigError, ZooFileError
from zooscope.store import Store
from zooscope.upkeep.outputs import check_output_path


def check_output(out: Path, resume: bool, force: bool, store: Store,
                 slot: str | None = None) -> None:
    """The output can be written: of the right kind, and replaced or continued only where
    asked (with ``slot``: that writer's part of a zoo folder)."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other")
    check_output_path(out, directory=store.folders)
    if resume and out.is_symlink():
        # Resuming writes in place: through a link, into a file outside this folder.
        raise ZooFileError(f"{out} is a link to {os.readlink(out)}; resume the zoo itself",
                           hint="zooscope generate CONFIG --out TARGET --resume")
    if store.exists(out, slot) and not (resume or force):
        what = f"{out} already holds the parts of {slot}" if slot else f"{out} already exists"
        raise ZooFileError(what, hint="add --resume to continue it, or --force to replace it")
    for side in store.side_paths(out, slot):
        if side.is_symlink() or (side.exists() and not side.is_file()):
            raise ZooFileError(f"{side} is not a plain file; zooscope keeps its side files "
                               "beside the zoo and never follows links",
                               hint="remove it, then run again")
    state = store.state_dir(out, slot)
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
