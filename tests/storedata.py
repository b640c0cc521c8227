"""Deterministic tensors for store tests, importable by writer subprocesses (no torch)."""

from __future__ import annotations

import zlib

import numpy as np

from zooscope.record import TestSet, ZooRecord
from zooscope.zoo import Member

#: Epochs (0 included) each member of the kill test writes.
KILL_EPOCHS = 10

SHAPES = {"embed.weight": (50, 16), "layer.weight": (16, 16), "layer.bias": (16,),
          "head.weight": (2, 16), "head.bias": (2,), "scale": ()}


def expected_tensor(name: str, member: int, epoch: int, frozen: bool = False) -> np.ndarray:
    """Deterministic values, so any process can recompute what a checkpoint must hold."""
    shared = frozen and not name.startswith("head")
    key = f"{name}:{0 if shared else member}:{0 if shared else epoch}"
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.standard_normal(SHAPES[name]).astype(np.float32)


def make_zoo_header() -> tuple[ZooRecord, list[Member]]:
    members = [Member.from_factors({"learning_rate": 0.1, "seed": i}) for i in range(6)]
    header = ZooRecord(name="kill", config_text="", generator="test", generator_version="1",
                       metric_columns=["test_loss"],
                       test=TestSet(predictions={"kind": "class", "shape": [7]}))
    return header, members


