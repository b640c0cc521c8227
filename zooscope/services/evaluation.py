"""Re-evaluating a zoo's models: the one entry point for analyzers that change weights
(pruning, say) and need the metrics of the changed model.

The zoo's own generator evaluates, on the zoo's own test split: rebuilt from the
test inputs the zoo stores, so no data file is needed, and checked against the
fingerprint the zoo recorded. Zoos that store no test inputs load the data from the
sources they recorded, under the same check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zooscope import registry
from zooscope.config import parse_config
from zooscope.errors import ZooFileError
from zooscope.store import StoredZoo

if TYPE_CHECKING:
    import numpy as np
    import torch

    from zooscope.config import ZooConfig
    from zooscope.generator import Generator, TaskData
    from zooscope.zoo import Checkpoint, Zoo


class Evaluator:
    """Rebuilds a zoo's checkpoints and evaluates models as the zoo's generator did.

    >>> evaluator = Evaluator(zoo)
    >>> model, tokenizer = evaluator.model(checkpoint)
    >>> metrics, predictions = evaluator.evaluate(model, tokenizer)   # {"test_accuracy": ...}
    """

    def __init__(self, zoo: Zoo, device: torch.device | str = "cpu") -> None:
        import torch

        if not isinstance(zoo, StoredZoo):
            raise ZooFileError(f"{zoo.path} was not opened by a zooscope store; it cannot be "
                               "re-evaluated")
        self.zoo = zoo
        self.device = torch.device(device)
        info = zoo.info
        self.generator: Generator = registry.get_generator(info["generator"])
        self.cfg: ZooConfig = parse_config(zoo.config_text)
        self.task: TaskData = self._task(zoo, info)

    def _task(self, zoo: StoredZoo, info: dict[str, Any]) -> TaskData:
        stored = self.generator.stored_task(self.cfg, zoo.record())
        if stored is not None:
            return stored
        for key in ("source", "test_source"):
            if info["data"].get(key):
                self.cfg.data[key] = info["data"][key]
        task = self.generator.prepare(self.cfg)
        want = info["data"].get("fingerprints", {}).get("test")
        if want and task.info.get("fingerprints", {}).get("test") != want:
            raise ZooFileError("the test data differs from the data this zoo was trained on",
                               hint=f"restore {info['data'].get('source')} as it was")
        return task

    def model(self, checkpoint: Checkpoint) -> tuple[Any, Any]:
        """The checkpoint's model (in eval mode) and tokenizer, rebuilt from the zoo alone."""
        from zooscope.kit.models import rebuild

        return rebuild(self.zoo, checkpoint.member, checkpoint.epoch)

    def evaluate(self, model: torch.nn.Module, tokenizer: Any, splits: tuple[str, ...] = ("test",)
                 ) -> tuple[dict[str, float], np.ndarray | None]:
        """Metrics (``{split}_{metric}``, as the zoo stores them) and test predictions."""
        return self.generator.evaluate_model(self.cfg, self.task, model, tokenizer, self.device,
                                             splits)
