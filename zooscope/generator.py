"""What a generator is: the contract between the training engine and a task.

The engine (``zooscope.engine``) owns seeding, the optimizer, the epoch loop,
recording and resuming; a generator owns data, model construction and evaluation,
and the config keys of its own (``config_keys``). docs/plugins.md describes the whole
contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from zooscope.record import TestSet

if TYPE_CHECKING:
    import numpy as np
    import torch

    from zooscope.config import ConfigKey, ZooConfig
    from zooscope.record import ZooRecord
    from zooscope.zoo import Architecture, Member


def example_caps(cfg: ZooConfig) -> dict[str, int]:
    """How many examples each split keeps (0: all), from ``[train] max_train_examples``
    and ``max_eval_examples``."""
    evaluation = int(cfg.train["max_eval_examples"])
    return {"train": int(cfg.train["max_train_examples"]), "validation": evaluation,
            "test": evaluation}


@dataclass
class TaskData:
    """A zoo's data, loaded and split once: the same examples for every member. Its
    ``info``, ``metric_columns`` and ``test`` go into the zoo's record whole."""

    splits: dict[str, Any]
    #: Recorded in the zoo: source, split sizes and fingerprints.
    info: dict[str, Any]
    metric_columns: list[str]
    #: The test split as the zoo keeps it (``zooscope.record.TestSet``).
    test: TestSet = field(default_factory=TestSet)
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemberSetup:
    """One member, ready to train: its model, architecture record and batches."""

    model: torch.nn.Module
    architecture: Architecture
    #: Yields one epoch of training batches in the order the generator gives.
    train_batches: Callable[[torch.Generator], Iterator[dict[str, torch.Tensor]]]
    steps_per_epoch: int
    state: dict[str, Any] = field(default_factory=dict)


class Generator(ABC):
    """Turns member specs into trained models. Registered through ``zooscope_register_generators``."""

    name: str
    version: str = "1"
    description: str = ""
    #: The optimizer the seed protocol uses for this task when the config does not say.
    default_optimizer: str = "adamw"
    #: Whether ``zooscope generate --overfit`` applies (fine-tuning on labelled examples).
    supports_overfit: bool = True
    #: The config keys this generator reads beyond the core's, by table (``"data"`` or
    #: ``"train"``): ``{"data": {"stride": ConfigKey((int,), 128, "...", minimum=1)}}``.
    #: The core checks them with the same errors as its own keys; a key no generator
    #: declares is refused.
    config_keys: ClassVar[Mapping[str, Mapping[str, ConfigKey]]] = {}

    def setting(self, cfg: ZooConfig, table: str, key: str) -> Any:
        """A key this generator declares: the config's value, or the declared default."""
        declared = self.config_keys[table][key]
        return getattr(cfg, table).get(key, declared.default)

    def validate(self, cfg: ZooConfig) -> None:  # noqa: B027 - optional hook
        """Check generator-specific config (data files, columns) before anything runs."""

    @abstractmethod
    def prepare(self, cfg: ZooConfig) -> TaskData:
        """Load and split the data once per zoo."""

    @abstractmethod
    def setup(self, cfg: ZooConfig, member: Member, task: TaskData) -> MemberSetup:
        """Build the member's model (head initialised from the member's seed) and batches."""

    def train_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one training batch."""
        return model(**batch)[0]

    @abstractmethod
    def evaluate(
        self, cfg: ZooConfig, setup: MemberSetup, task: TaskData, device: torch.device,
    ) -> tuple[dict[str, float], np.ndarray | None]:
        """Metrics for every split (``{split}_{metric}``) and the test-split predictions."""

    def evaluate_model(
        self, cfg: ZooConfig, task: TaskData, model: torch.nn.Module, tokenizer: Any,
        device: torch.device, splits: tuple[str, ...] = ("test",),
    ) -> tuple[dict[str, float], np.ndarray | None]:
        """Evaluate a model rebuilt from a zoo (its stored tokenizer) on the given splits.

        Analyzers that change weights (pruning, say) re-evaluate through
        ``zooscope.services.evaluation``, which calls this.
        """
        raise NotImplementedError(f"generator {self.name!r} cannot evaluate rebuilt models")

    def estimate_bytes(self, cfg: ZooConfig, members: list[Member]) -> int | None:
        """The zoo's size on disk, for ``generate --dry-run``; None where it is unknown
        without building the models."""
        return None

    def stored_task(self, cfg: ZooConfig, record: ZooRecord) -> TaskData | None:
        """The test split rebuilt from the zoo's record (its test inputs and labels,
        ``record.test``), so ``evaluate_model`` runs without the data files; None where the
        zoo does not keep enough, and the data is loaded with ``prepare`` instead."""
        return None
