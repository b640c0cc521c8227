"""Experiment trackers (``[train] log_with``): each member's metrics at every committed
epoch, epoch 0 included, through Accelerate's trackers (TensorBoard, W&B, MLflow, ...).

One run per member, named by its id, with its factors as hyperparameters; TensorBoard
and W&B write under ``ZOO_logs/`` beside the zoo (W&B offline unless ``WANDB_MODE``
says otherwise). Only the main process of a multi-process run logs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zooscope.config import TRACKERS, ZooConfig
from zooscope.errors import ConfigError
from zooscope.zoo import Member


def check_trackers(cfg: ZooConfig) -> None:
    """Refuse a tracker whose package is missing, before anything is trained."""
    for kind in cfg.train["log_with"]:
        package = TRACKERS[kind]
        if kind == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None:
            continue
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"[train] log_with = {kind!r} needs {package}, which is not "
                              "installed", hint=f"pip install {package}")


def logs_dir(out: Path) -> Path:
    return out.with_name(f"{out.stem}_logs")


class MemberTrackers:
    """The trackers of one zoo; ``start`` a member, ``log`` its epochs, ``finish`` it."""

    def __init__(self, cfg: ZooConfig, out: Path) -> None:
        self.kinds: list[str] = list(cfg.train["log_with"])
        self.project = cfg.name
        self.dir = logs_dir(out)
        self.active: list[Any] = []
        check_trackers(cfg)

    def start(self, member: Member) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.finish()
        self.dir.mkdir(parents=True, exist_ok=True)
        hparams = {k: v for k, v in member.factors.items()
                   if isinstance(v, (bool, str, int, float))}
        for kind in self.kinds:
            cls = LOGGER_TYPE_TO_CLASS[kind]
            if kind == "wandb":
                os.environ.setdefault("WANDB_MODE", "offline")
                tracker = cls(self.project, name=member.id, dir=str(self.dir), reinit=True)
            elif cls.requires_logging_directory:
                tracker = cls(member.id, str(self.dir))
            else:
                tracker = cls(member.id)
            tracker.start()
            tracker.store_init_configuration(hparams)
            self.active.append(tracker)

    def log(self, epoch: int, metrics: Mapping[str, float]) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        for tracker in self.active:
            tracker.log(values, step=epoch)

    def finish(self) -> None:
        for tracker in self.active:
            tracker.finish()
        self.active = []
