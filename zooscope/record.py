"""The zoo's record: everything zoo-level that a zoo keeps, defined once.

A generator's ``prepare`` gives the data part of it (``TaskData``: metric columns,
data sources and fingerprints, and the ``TestSet``); the engine adds the config's
part and hands the whole ``ZooRecord`` to ``Store.create``; ``Zoo.record()`` gives it
back, and ``Generator.stored_task`` rebuilds the test split from it. A new kind of
test data is a field here and its encoding in each store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass
class TestSet:
    """The test split as a zoo keeps it: enough to score stored predictions and to
    re-evaluate a member without the data files."""

    __test__ = False  # not a pytest test class

    #: ``{"kind": "class", "shape": [n_test]}`` or ``{"kind": "span", "shape": [n_test, 2]}``;
    #: None where checkpoints store no predictions.
    predictions: dict[str, Any] | None = None
    #: Gold class ids, where the task has class labels.
    labels: np.ndarray | None = None
    ids: list[str] | None = None
    #: The inputs as the model reads them: first texts (the questions of a QA task) and,
    #: for sentence pairs, second texts.
    texts: list[str] | None = None
    text_pairs: list[str] | None = None
    #: Extractive QA: each question's context and gold answers, so that stored character
    #: spans turn back into answer text without the data set.
    contexts: list[str] | None = None
    answers: list[list[str]] | None = None


@dataclass
class ZooRecord:
    """Everything zoo-level a store records when it creates a zoo."""

    name: str
    config_text: str
    generator: str
    generator_version: str
    metric_columns: list[str]
    #: Data source, split sizes and per-split fingerprints (``TaskData.info``).
    data: dict[str, Any] = field(default_factory=dict)
    test: TestSet = field(default_factory=TestSet)
    storage_dtype: str = "float32"
    compression: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


__all__ = ["TestSet", "ZooRecord"]
