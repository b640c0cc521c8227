"""The zoo as users see it: members, checkpoints and the read-only ``Zoo`` interface.

Stores implement ``Zoo`` for their file format; nothing here touches a file.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.errors import ZooFileError

if TYPE_CHECKING:
    import numpy as np

    from zooscope.record import ZooRecord

#: Member status codes as stored in the zoo file.
PENDING, RUNNING, COMPLETE, FAILED, INTERRUPTED = 0, 1, 2, 3, 4
STATUS_LABELS = {PENDING: "pending", RUNNING: "running", COMPLETE: "complete", FAILED: "failed",
                 INTERRUPTED: "interrupted"}
#: The other way round: a ``Member.status`` label to the code stored for it.
STATUS_CODES = {label: code for code, label in STATUS_LABELS.items()}

#: What a member id, tensor name or stored file name may contain: no path separators.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}\Z")


def check_safe_name(name: str, what: str) -> str:
    """Reject names that could escape a directory or an HDF5 group."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ZooFileError(f"unsafe {what} name {name!r}: only letters, digits, '_', '.' and '-'")
    return name


def canonical_json(value: Any) -> str:
    """JSON with keys sorted, no spaces and non-ASCII characters escaped (``json.dumps``
    defaults otherwise): the same value always gives the same text, so its hash is stable."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def hub_revision(name: str) -> tuple[str, str | None]:
    """``"bert-base-uncased@<revision>"`` → the hub id and the revision (a commit, branch or
    tag) it is pinned to; a name without ``@``, or an existing local path, has none."""
    base, sep, revision = name.rpartition("@")
    if not sep or not base or not revision or Path(name).expanduser().exists() \
            or name.startswith("zoo://"):
        return name, None
    return base, revision


def member_id(factors: dict[str, Any], recipe: dict[str, Any] | None = None) -> str:
    """A stable id: ``m`` + 11 hex digits of SHA-256 over the member's canonical JSON.

    ``recipe`` is everything besides the factors that decides the member's weights
    (``ZooConfig.recipe``); the same id in two zoos then means the same training.
    Without one (zoos imported from model folders, grid checks) only the factors count.
    Resume, shards and merges agree on identities because every process derives the
    same id from the same config and data.
    """
    payload: Any = factors if recipe is None else {"factors": factors, "recipe": recipe}
    return "m" + hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:11]


@dataclass(frozen=True)
class Member:
    """One point of the grid: its generating factors and where its backbone came from."""

    id: str
    factors: dict[str, Any] = field(hash=False, compare=False)
    lineage: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    status: str = field(default="pending", hash=False, compare=False)

    @classmethod
    def from_factors(cls, factors: dict[str, Any], lineage: dict[str, Any] | None = None,
                     recipe: dict[str, Any] | None = None) -> Member:
        return cls(id=member_id(factors, recipe), factors=dict(factors), lineage=lineage)

    def matches(self, **wanted: Any) -> bool:
        """True where every named factor equals the value (or is in the list) given."""
        for key, value in wanted.items():
            have = self.id if key == "id" else self.factors.get(key)
            options = value if isinstance(value, (list, tuple, set)) else [value]
            if not any(same_value(have, v) for v in options):
                return False
        return True


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        import numpy as np

        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=0.0))
    return str(a) == str(b)


@dataclass(frozen=True)
class Checkpoint:
    """One committed model state: a member at an epoch, with its metrics."""

    member: str
    epoch: int
    step: int
    wall_time: float
    metrics: dict[str, float] = field(hash=False, compare=False)


def select_checkpoints(listed: Iterable[Checkpoint], known: Iterable[str], where: Any,
                       members: Iterable[Member | str] | Member | str | None = None,
                       epochs: Iterable[int] | None = None) -> list[Checkpoint]:
    """The checkpoints of ``listed`` (kept in order) of ``members`` and ``epochs``: the
    selection every store's ``Zoo.checkpoints`` makes. A member not in ``known`` is an
    error naming the zoo at ``where``."""
    if members is None:
        wanted = None
    elif isinstance(members, (str, Member)):
        wanted = {members if isinstance(members, str) else members.id}
    else:
        wanted = {m if isinstance(m, str) else m.id for m in members}
    if wanted is not None:
        unknown = wanted - set(known)
        if unknown:
            raise ZooFileError(f"no member {sorted(unknown)[0]!r} in {where}")
    epoch_set = None if epochs is None else {int(e) for e in epochs}
    return [c for c in listed if (wanted is None or c.member in wanted)
            and (epoch_set is None or c.epoch in epoch_set)]


@dataclass
class Architecture:
    """A model architecture: its config, tokenizer files and tensor layout."""

    key: str
    files: dict[str, bytes]
    shapes: dict[str, tuple[int, ...]]
    #: Tensors that are not floating point keep their dtype (``{"name": "int64"}``).
    dtypes: dict[str, str] = field(default_factory=dict)


class Zoo(ABC):
    """A zoo opened read-only. Use as a context manager or call ``close()``."""

    path: Path
    #: The metrics every checkpoint records (``test_accuracy``, ``train_loss``...), in
    #: the order the zoo stores them.
    metric_columns: list[str]

    # -- zoo level -------------------------------------------------------------------
    @property
    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Zoo-level metadata: name, format, generator, versions, data, created."""

    @property
    @abstractmethod
    def config_text(self) -> str:
        """The zoo config, verbatim as it was given to ``generate``."""

    @abstractmethod
    def record(self) -> ZooRecord:
        """The zoo's record (``zooscope.record``) as its store was given it: to create a
        zoo of the same kind (merging, splitting) and to re-evaluate members from the
        zoo alone (``Generator.stored_task``)."""

    def card(self) -> str | None:
        """The zoo card stored at generation (Markdown), or None for zoos without one."""
        return None

    def parts(self) -> list[str] | None:
        """The file names of a zoo stored as a folder of parts (docs/format.md), in the
        order its index lists them; None for a zoo of one file."""
        return None

    @abstractmethod
    def members(self, **factors: Any) -> list[Member]:
        """Members whose factors match (a value or a list of values per factor)."""

    def member(self, member_id: str) -> Member:
        for m in self.members():
            if m.id == member_id:
                return m
        raise ZooFileError(f"no member {member_id!r} in {self.path}", hint="`zooscope zoo ls` lists them")

    # -- checkpoints -----------------------------------------------------------------
    @abstractmethod
    def checkpoints(
        self, members: Iterable[Member | str] | Member | str | None = None,
        epochs: Iterable[int] | None = None,
    ) -> list[Checkpoint]:
        """Committed checkpoints, ordered by member then epoch."""

    @abstractmethod
    def tensor_names(self, member: Member | str | None = None) -> list[str]:
        """State-dict names of the member's (or the first member's) architecture."""

    @abstractmethod
    def state_dict(self, member: Member | str, epoch: int) -> dict[str, Any]:
        """Every tensor of one checkpoint as torch tensors in their stored dtype."""

    @abstractmethod
    def tensor(
        self, name: str, checkpoints: Sequence[Checkpoint] | None = None
    ) -> np.ndarray:
        """One named tensor across checkpoints, stacked: shape (len(checkpoints), *shape).

        Reads only that tensor's bytes. bf16 storage comes back as float32.
        """

    @abstractmethod
    def predictions(self, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        """Test-split predictions, one row per checkpoint."""

    @abstractmethod
    def test_labels(self) -> np.ndarray | None:
        """The test split's gold labels, where the task has class labels."""

    def test_contexts(self) -> list[str] | None:
        """Extractive QA: each test question's context, where the zoo stores spans."""
        return None

    def test_answers(self) -> list[list[str]] | None:
        """Extractive QA: each test question's gold answers."""
        return None

    def predicted_answers(self, checkpoints: Sequence[Checkpoint] | None = None) -> list[list[str]]:
        """Extractive QA: the answer text each checkpoint predicted for each test question.

        Spans are character offsets ``[start, end)`` into the question's context.
        """
        if self.prediction_kind() != "span":
            raise ZooFileError("this zoo stores no answer spans")
        contexts = self.test_contexts() or []
        spans = self.predictions(checkpoints)
        return [[contexts[q][int(s) : int(e)] for q, (s, e) in enumerate(row)] for row in spans]

    @abstractmethod
    def model_files(self, member: Member | str) -> dict[str, bytes]:
        """config.json and tokenizer files needed to rebuild the member's model offline."""

    # -- stored analysis results (stores that keep none keep these defaults) ------------
    def analyses(self) -> list[dict[str, Any]]:
        """Analyses stored for the zoo (beside it, or inside a zoo written before results
        moved out): name, key, options, summary, created, and the stored results each read
        (``inputs``) with a digest of its content (``digest``) where the store records them."""
        return []

    def analysis_tables(self, name: str, key: str) -> dict[str, dict[str, np.ndarray]]:
        """The tables of one stored analysis: table name to column name to values."""
        raise ZooFileError(f"no stored analysis {name}/{key}")

    @abstractmethod
    def tensor_shape(self, name: str, member: Member | str | None = None) -> tuple[int, ...]:
        """The shape of one checkpoint's tensor (the member's architecture, or the first)."""

    @abstractmethod
    def prediction_kind(self) -> str | None:
        """``"class"`` for class ids, ``"span"`` for answer character spans, None for none."""

    @abstractmethod
    def architecture(self, member: Member | str) -> Architecture:
        """The member's architecture: model files and tensor shapes."""

    def checkpoint_digests(self, checkpoint: Checkpoint) -> dict[str, str]:
        """Each tensor's stored content digest (hex text) in one checkpoint, read from the
        file without reading the tensors."""
        raise ZooFileError(f"{self.path} records no tensor digests")

    def analysis_figures(self, name: str, key: str) -> dict[str, bytes]:
        """The PNG figures of one stored analysis."""
        raise ZooFileError(f"no stored analysis {name}/{key}")

    def results_notes(self) -> list[str]:
        """Why results stored beside the zoo are not served (they belong to another zoo)."""
        return []

    def metrics_table(self, checkpoints: Sequence[Checkpoint] | None = None) -> list[dict[str, Any]]:
        """One row per checkpoint: member, epoch, step, wall time and every metric."""
        rows = []
        by_id = {m.id: m for m in self.members()}
        for c in self.checkpoints() if checkpoints is None else checkpoints:
            row: dict[str, Any] = {"member": c.member, "epoch": c.epoch, "step": c.step,
                                   "wall_time": c.wall_time}
            row.update(by_id[c.member].factors)
            row.update(c.metrics)
            rows.append(row)
        return rows

    def metrics(self, checkpoints: Sequence[Checkpoint] | None = None) -> Any:
        """Every metric of every checkpoint as a pandas DataFrame in long format: one row
        per member, epoch, split and metric, with the member's factors as columns
        (``member``, factors..., ``epoch``, ``step``, ``split``, ``metric``, ``value``).

        ``train_loss`` is split ``train``, metric ``loss``; a metric without a split
        prefix has split ``""``.
        """
        import pandas as pd

        by_id = {m.id: m for m in self.members()}
        factor_names = sorted({k for m in by_id.values() for k in m.factors})
        columns: dict[str, list[Any]] = {name: [] for name in
                                         ["member", *factor_names, "epoch", "step", "split",
                                          "metric", "value"]}
        for c in self.checkpoints() if checkpoints is None else checkpoints:
            factors = by_id[c.member].factors
            for name, value in c.metrics.items():
                split, sep, metric = name.partition("_")
                if not sep:
                    split, metric = "", name
                columns["member"].append(c.member)
                for f in factor_names:
                    columns[f].append(factors.get(f))
                columns["epoch"].append(c.epoch)
                columns["step"].append(c.step)
                columns["split"].append(split)
                columns["metric"].append(metric)
                columns["value"].append(float(value))
        return pd.DataFrame(columns)

    def members_frame(self) -> Any:
        """One row per member as a pandas DataFrame: ``member``, ``status``, the factors,
        ``epochs`` (committed checkpoints' last epoch, -1 for none) and ``parent`` (the
        lineage's source member, where the backbone came from another zoo)."""
        import pandas as pd

        members = self.members()
        last: dict[str, int] = {}
        for c in self.checkpoints():
            last[c.member] = max(last.get(c.member, -1), c.epoch)
        factor_names = sorted({k for m in members for k in m.factors})
        return pd.DataFrame({
            "member": [m.id for m in members],
            "status": [m.status for m in members],
            **{f: [m.factors.get(f) for m in members] for f in factor_names},
            "epochs": [last.get(m.id, -1) for m in members],
            "parent": [(m.lineage or {}).get("member") for m in members],
        })

    def close(self) -> None:  # noqa: B027 - optional for stores without handles
        pass

    def __repr__(self) -> str:
        try:
            sizes = f"{len(self.members())} members, {len(self.checkpoints())} checkpoints"
        except Exception:  # a closed or damaged zoo still has a name
            sizes = "not readable"
        return f"<zoo {self.path}: {sizes}>"

    def __enter__(self) -> Zoo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

