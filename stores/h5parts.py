"""A zoo of many files: a folder (``NAME.zoo``) holding a small JSON index and part
files, each a complete zoo file of format v1 that plain h5py reads alone.

Parts are never merged: ``generate`` starts a new part before a checkpoint would take
the current one past ``[zoo] max_part_size``, and the tasks of a SLURM array (or the
processes of a multi-process run) write their own parts into the same folder, each
named by its slot (``s2of6-part00000.h5``). Readers see one zoo: the members of every
part, ordered as the index lists them, and every committed checkpoint, read from the
one part that holds it. docs/format.md describes the folder for readers without
zooscope.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zooscope.errors import MissingFile, ZooFileError, ZooscopeError
from zooscope.files import UnsafeFile, read_json_object, remove_leftovers, write_atomic
from zooscope.record import ZooRecord
from zooscope.store import StoredZoo, ZooWriter
from zooscope.stores.h5layout import fingerprint
from zooscope.zoo import (
    PENDING,
    RUNNING,
    STATUS_CODES,
    STATUS_LABELS,
    Architecture,
    Checkpoint,
    Member,
    check_safe_name,
    select_checkpoints,
)

#: The index's file name inside the folder, its format name and version.
INDEX = "zoo.json"
FORMAT = "zooscope-parts"
FORMAT_VERSION = 1
#: The card of the whole zoo, beside the index (the Hub shows it as the repository's page).
CARD = "README.md"
#: A part's file name: the writer's slot (absent for a one-process run) and its number.
PART = re.compile(r"^(?:(s\d{1,5}of\d{1,5})-)?part(\d{5})\.h5\Z")
SLOT = re.compile(r"^s\d{1,5}of\d{1,5}\Z")
#: The most parts an index may list (a 200 TB zoo of 45 GB parts has about 4,500).
MAX_PARTS = 100_000
#: The default of ``[zoo] max_part_size``: under the Hugging Face Hub's 50 GB per file.
DEFAULT_MAX_PART_SIZE = 45 * 10**9



def part_prefix(slot: str | None) -> str:
    return f"{slot}-part" if slot else "part"


def part_name(slot: str | None, number: int) -> str:
    return f"{part_prefix(slot)}{number:05d}.h5"


def clear_leftovers(folder: Path, slot: str | None, replacing: bool = False) -> None:
    """What a killed writer of this slot left half-made: a part being created (any
    slot's, where a one-process run is ``replacing`` the whole zoo). Without a slot also
    killed writes of the index and card; with slots another writer may be in the middle
    of one, so those stay."""
    pattern = "*" if replacing and slot is None else f"{part_prefix(slot)}*"
    for leftover in folder.glob(f"{pattern}.h5.creating"):
        leftover.unlink(missing_ok=True)
    if slot is None:
        remove_leftovers(folder)


def slot_of(name: str) -> str | None:
    match = PART.match(name)
    return match.group(1) if match else None


def check_slot(slot: str | None) -> None:
    if slot is not None and not SLOT.match(slot):
        raise ZooFileError(f"{slot!r} is not a writer slot (sIofN)")


# -- the index --------------------------------------------------------------------------------
def parse_index(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The index's content, checked: a foreign or damaged index is one clear error."""
    if data.get("format") != FORMAT:
        raise ZooFileError(f"{where} is not a zooscope zoo index (format "
                           f"{data.get('format')!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ZooFileError(f"{where} is damaged: format_version is {version!r}")
    if version > FORMAT_VERSION:
        raise ZooFileError(f"{where} has format version {version}; this zooscope reads "
                           f"up to {FORMAT_VERSION}", hint="pip install -U zooscope")
    parts, members = data.get("parts"), data.get("members", [])
    if not isinstance(parts, list) or len(parts) > MAX_PARTS or not all(
            isinstance(p, str) and PART.match(p) for p in parts) or len(set(parts)) != len(parts):
        raise ZooFileError(f"{where} is damaged: 'parts' must list distinct part file names "
                           "(partNNNNN.h5 or sIofN-partNNNNN.h5)")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ZooFileError(f"{where} is damaged: 'members' must list member ids")
    for m in members:
        check_safe_name(m, "member")
    return {"format": FORMAT, "format_version": version, "name": str(data.get("name", "")),
            "members": list(members), "parts": list(parts),
            "max_part_size": data.get("max_part_size")}


def read_index(folder: Path) -> dict[str, Any]:
    path = folder / INDEX
    if not path.exists() and not path.is_symlink():
        raise ZooFileError(f"{folder} has no {INDEX}: it is not a zoo folder, or its first "
                           "part is still being created")
    try:
        data = read_json_object(path)
    except UnsafeFile as exc:
        raise ZooFileError(f"{path} is not a zoo index: it is {exc}") from None
    except OSError as exc:
        raise ZooFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_index(data, str(path))


def new_index(name: str, members: Sequence[str], max_part_size: int) -> dict[str, Any]:
    """The index of a zoo folder that lists no part yet."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
            "members": list(members), "max_part_size": max_part_size, "parts": []}


def write_index(folder: Path, index: Mapping[str, Any]) -> None:
    write_atomic(folder / INDEX, json.dumps(index, indent=1) + "\n")


def index_lock(folder: Path) -> Any:
    from zooscope.stores.h5lock import file_lock

    return file_lock(folder / (INDEX + ".lock"))


def register_part(folder: Path, name: str, first: Mapping[str, Any]) -> None:
    """Add a part to the index (``first`` where there is none yet), under the index's
    lock: the tasks of an array add their parts to one index."""
    with index_lock(folder):
        index = read_index(folder) if (folder / INDEX).exists() else dict(first)
        if name not in index["parts"]:
            index["parts"].append(name)
            write_index(folder, index)


def unregister_parts(folder: Path, names: Iterable[str]) -> None:
    drop = set(names)
    with index_lock(folder):
        if not (folder / INDEX).exists():
            return
        index = read_index(folder)
        index["parts"] = [p for p in index["parts"] if p not in drop]
        write_index(folder, index)


def parts_on_disk(folder: Path, slot: str | None | type = ...) -> list[str]:
    """Part files in the folder (of one slot, where given), in creation order."""
    found = []
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            match = PART.match(p.name)
            if match and (slot is ... or match.group(1) == slot):
                found.append(p.name)
    return sorted(found, key=lambda n: (slot_of(n) or "", n))


# -- reading ----------------------------------------------------------------------------------
class PartsZoo(StoredZoo):
    """A zoo folder opened read-only: one zoo over its parts. Parts are opened when first
    needed; listing members or checkpoints reads every part's small tables, a tensor read
    only the parts that hold the checkpoints asked for."""

    def __init__(self, path: Path | str, index: Mapping[str, Any],
                 opener: Callable[[str], Any],
                 card: Callable[[], str | None] | None = None) -> None:
        self.path = path  # type: ignore[assignment]
        self._names: list[str] = list(index["parts"])
        self._order = {m: k for k, m in enumerate(index["members"])}
        self._opener = opener
        self._card_reader = card
        self._open: dict[int, Any] = {}
        if not self._names:
            raise ZooFileError(f"{path} holds no parts yet",
                               hint="its writer has not committed a part; wait or --resume")
        self._part(0)

    def parts(self) -> list[str]:
        return list(self._names)

    def _part(self, i: int) -> Any:
        if i not in self._open:
            zoo = self._opener(self._names[i])
            if i and (zoo.config_text != self._open[0].config_text
                      or zoo.info["generator"] != self._open[0].info["generator"]):
                zoo.close()
                raise ZooFileError(f"{self.path}: part {self._names[i]} belongs to another zoo "
                                   f"(its config differs from {self._names[0]}'s)")
            self._open[i] = zoo
        return self._open[i]

    def _parts(self) -> list[Any]:
        return [self._part(i) for i in range(len(self._names))]

    def _listing(self) -> tuple[list[Member], list[Checkpoint], dict[tuple[str, int], int]]:
        """Members (the last part listing one with a status other than pending has its
        newest status), checkpoints and the part holding each, read once per open zoo."""
        if "_listed" not in self.__dict__:
            members: dict[str, Member] = {}
            where: dict[tuple[str, int], int] = {}
            checkpoints: list[Checkpoint] = []
            for i, zoo in enumerate(self._parts()):
                for m in zoo.members():
                    if m.id not in members or m.status != STATUS_LABELS[PENDING]:
                        members[m.id] = m
                for c in zoo.checkpoints():
                    if (c.member, c.epoch) not in where:
                        where[(c.member, c.epoch)] = i
                        checkpoints.append(c)
            first_seen = {m: k for k, m in enumerate(members)}
            rank = {m: (self._order.get(m, len(self._order)), first_seen[m]) for m in members}
            ordered = sorted(members.values(), key=lambda m: rank[m.id])
            checkpoints.sort(key=lambda c: (rank[c.member], c.epoch))
            self._rank = rank
            self._listed = (ordered, checkpoints, where)
        return self._listed

    def _holder(self, member: str, epoch: int) -> Any:
        where = self._listing()[2]
        i = where.get((member, int(epoch)))
        if i is None:
            raise ZooFileError(f"no checkpoint of member {member} at epoch {epoch}")
        return self._part(i)

    def part_holding(self, member: Member | str, epoch: int) -> Any:
        """The part (an open zoo file) holding one checkpoint."""
        return self._holder(member if isinstance(member, str) else member.id, epoch)

    def _member_part(self, member: Member | str | None) -> Any:
        """The part to ask about a member's architecture: the one with its first
        checkpoint, else the last that lists it."""
        members, checkpoints, where = self._listing()
        if member is None:
            if not checkpoints:
                return self._part(0)
            c = checkpoints[0]
            return self._part(where[(c.member, c.epoch)])
        mid = member if isinstance(member, str) else member.id
        if mid not in self._rank:
            raise ZooFileError(f"no member {mid!r} in {self.path}")
        mine = [c for c in checkpoints if c.member == mid]
        if mine:
            return self._part(where[(mid, mine[0].epoch)])
        last = max(i for i, z in enumerate(self._parts()) if any(m.id == mid for m in z.members()))
        return self._part(last)

    # -- zoo level --------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        members, checkpoints, _ = self._listing()
        return {**self._part(0).info, "members": len(members), "checkpoints": len(checkpoints)}

    @property
    def config_text(self) -> str:
        return self._part(0).config_text

    @property
    def metric_columns(self) -> list[str]:  # type: ignore[override]
        return list(self._part(0).metric_columns)

    def card(self) -> str | None:
        card = self._folder_card()
        if card is not None:
            return card
        return self._part(len(self._names) - 1).card()

    def _folder_card(self) -> str | None:
        if self._card_reader is not None:
            return self._card_reader()
        if not isinstance(self.path, Path):
            return None
        path = self.path / CARD
        if not path.exists():
            return None
        from zooscope.files import read_small

        try:
            return read_small(path, 16 << 20).decode()
        except (UnsafeFile, UnicodeDecodeError) as exc:
            raise ZooFileError(f"{path} is damaged: {exc}") from None

    def members(self, **factors: Any) -> list[Member]:
        return [m for m in self._listing()[0] if m.matches(**factors)]

    def checkpoints(self, members: Iterable[Member | str] | Member | str | None = None,
                    epochs: Iterable[int] | None = None) -> list[Checkpoint]:
        return select_checkpoints(self._listing()[1], self._rank, self.path, members, epochs)

    def _by_part(self, checkpoints: Sequence[Checkpoint] | None
                 ) -> tuple[list[Checkpoint], dict[int, list[int]]]:
        chosen = self.checkpoints() if checkpoints is None else list(checkpoints)
        where = self._listing()[2]
        groups: dict[int, list[int]] = {}
        for k, c in enumerate(chosen):
            i = where.get((c.member, c.epoch))
            if i is None:
                raise ZooFileError(f"no checkpoint of member {c.member} at epoch {c.epoch}")
            groups.setdefault(i, []).append(k)
        return chosen, groups

    def _gather(self, checkpoints: Sequence[Checkpoint] | None,
                read: Callable[[Any, list[Checkpoint]], np.ndarray]) -> np.ndarray:
        """One array over checkpoints of several parts, each part read once."""
        chosen, groups = self._by_part(checkpoints)
        out: np.ndarray | None = None
        for i, positions in groups.items():
            block = read(self._part(i), [chosen[k] for k in positions])
            if out is None:
                out = np.empty((len(chosen), *block.shape[1:]), dtype=block.dtype)
            out[positions] = block
        if out is None:  # no checkpoints: the shape comes from the first part
            return read(self._part(0), [])
        return out

    def tensor_names(self, member: Member | str | None = None) -> list[str]:
        return self._member_part(member).tensor_names(member)

    def tensor_shape(self, name: str, member: Member | str | None = None) -> tuple[int, ...]:
        return self._member_part(member).tensor_shape(name, member)

    def state_dict(self, member: Member | str, epoch: int) -> dict[str, Any]:
        return self.part_holding(member, epoch).state_dict(member, epoch)

    def tensor(self, name: str, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        return self._gather(checkpoints, lambda z, cs: z.tensor(name, cs))

    def predictions(self, checkpoints: Sequence[Checkpoint] | None = None) -> np.ndarray:
        return self._gather(checkpoints, lambda z, cs: z.predictions(cs))

    def test_labels(self) -> np.ndarray | None:
        return self._part(0).test_labels()

    def test_contexts(self) -> list[str] | None:
        return self._part(0).test_contexts()

    def test_answers(self) -> list[list[str]] | None:
        return self._part(0).test_answers()

    def prediction_kind(self) -> str | None:
        return self._part(0).prediction_kind()

    def model_files(self, member: Member | str) -> dict[str, bytes]:
        return self._member_part(member).model_files(member)

    def architecture(self, member: Member | str) -> Architecture:
        return self._member_part(member).architecture(member)

    def architecture_name(self, member: Member | str) -> str:
        return self._member_part(member).architecture_name(member)

    def checkpoint_digests(self, checkpoint: Checkpoint) -> dict[str, str]:
        return self._holder(checkpoint.member, checkpoint.epoch).checkpoint_digests(checkpoint)

    def check_tensor(self, checkpoint: Checkpoint, name: str) -> list[str]:
        return self._holder(checkpoint.member, checkpoint.epoch).check_tensor(checkpoint, name)

    def check_structure(self) -> list[str]:
        problems = []
        for name, zoo in zip(self._names, self._parts(), strict=True):
            problems += [f"{name}: {p}" for p in zoo.check_structure()]
        for name, committed in self._unlisted():
            if committed:
                problems.append(f"{name} holds {committed} checkpoint(s) but is not in {INDEX}; "
                                "readers do not see them (`zooscope generate --resume` lists it)")
        return problems

    def structure_notes(self) -> list[str]:
        return [f"{name} is in the folder but not in {INDEX}: a writer was killed while "
                "starting it, before it held a checkpoint; --resume lists it"
                for name, committed in self._unlisted() if not committed]

    def _unlisted(self) -> list[tuple[str, int]]:
        """Part files in the folder that the index does not list, with their checkpoints."""
        from zooscope.stores.h5reader import HDF5Zoo

        if not isinstance(self.path, Path):
            return []
        out = []
        listed = set(self._names)
        for name in parts_on_disk(self.path):
            if name not in listed:
                try:
                    with HDF5Zoo(self.path / name) as zoo:
                        out.append((name, len(zoo.checkpoints())))
                except ZooscopeError:
                    out.append((name, 0))
        return out

    def uncommitted_rows(self) -> int:
        return sum(z.uncommitted_rows() for z in self._parts())

    def record(self) -> ZooRecord:
        return self._part(0).record()

    # -- results: kept beside the folder, as beside a zoo file -------------------------------
    def results_notes(self) -> list[str]:
        return self._part(0).results_notes()

    def analyses(self) -> list[dict[str, Any]]:
        return self._part(0).analyses()

    def analysis_tables(self, name: str, key: str) -> dict[str, dict[str, np.ndarray]]:
        return self._part(0).analysis_tables(name, key)

    def analysis_figures(self, name: str, key: str) -> dict[str, bytes]:
        return self._part(0).analysis_figures(name, key)

    def close(self) -> None:
        for zoo in self._open.values():
            zoo.close()
        self._open.clear()


def open_folder(folder: Path) -> PartsZoo:
    from zooscope.stores.h5reader import HDF5Zoo

    if folder.is_symlink() or not folder.is_dir():
        raise ZooFileError(f"{folder} is not a zoo folder")
    index = read_index(folder)

    def opener(name: str) -> Any:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise ZooFileError(f"{path} is missing (listed in {INDEX})",
                               hint="copy the whole zoo folder")
        zoo = HDF5Zoo(path)
        zoo.results_base = folder
        return zoo

    return PartsZoo(folder, index, opener)


def open_folder_url(url: str, timeout: float | None) -> PartsZoo:
    """A zoo folder at a URL: the index, then each part as it is needed."""
    from zooscope.remote import read_bytes
    from zooscope.stores.h5reader import open_remote

    base = url.rstrip("/")
    raw = read_bytes(f"{base}/{INDEX}", timeout, limit=1 << 20)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ZooFileError(f"{base}/{INDEX} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ZooFileError(f"{base}/{INDEX} is not a zoo index")
    index = parse_index(data, f"{base}/{INDEX}")

    def card() -> str | None:
        try:
            raw = read_bytes(f"{base}/{CARD}", timeout, limit=16 << 20)
        except MissingFile:
            return None  # a folder served without its card
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ZooFileError(f"{base}/{CARD} is not UTF-8 text") from None

    return PartsZoo(base, index, lambda name: open_remote(f"{base}/{name}", timeout), card)


# -- writing ----------------------------------------------------------------------------------
class PartsWriter(ZooWriter):
    """Writes one slot's parts of a zoo folder: the current part through an
    ``HDF5Writer``, a new part begun before a checkpoint would pass ``max_part_size``.

    Holds the slot's lock (``SLOT.lock`` in the folder) while it lives. A new part is
    created whole (written beside, then renamed) and added to the index before its first
    checkpoint, so a kill at any moment leaves each part a zoo file and every committed
    checkpoint listed; ``--resume`` adds a part the kill left out of the index.
    """

    def __init__(self, folder: Path, slot: str | None, record: ZooRecord,
                 members: Sequence[Member], max_part_size: int, lock: Any) -> None:
        self.path = folder
        self.slot = slot
        self.record = record
        self.members = list(members)
        self._by_id = {m.id: m for m in self.members}
        self.max_part_size = int(max_part_size)
        self._lock = lock
        self._archs: dict[str, Architecture] = {}
        self._member_arch: dict[str, str] = {}
        self._status: dict[str, int] = {m.id: STATUS_CODES.get(m.status, PENDING) for m in members}
        self._current: Any = None
        self._current_name = ""
        self._written = 0  # checkpoints committed to the current part by this writer
        self._closed: dict[str, Any] = {}  # read-only views of this slot's earlier parts

    # -- parts ----------------------------------------------------------------------------
    def _slot_parts(self) -> list[str]:
        return parts_on_disk(self.path, self.slot)

    def _start_part(self) -> None:
        from zooscope.stores.h5writer import create_zoo

        names = self._slot_parts()
        number = int(PART.match(names[-1]).group(2)) + 1 if names else 0  # type: ignore[union-attr]
        name = part_name(self.slot, number)
        if self._current is not None:
            self._current.close()
            self._current = None
        # The new part is created whole, with every architecture, member and status the
        # zoo has so far: it is never open outside SWMR mode, so a kill leaves it readable.
        members = [Member(id=m.id, factors=m.factors, lineage=m.lineage,
                          status=STATUS_LABELS[self._status[m.id]]) for m in self.members]
        position = {key: k for k, key in enumerate(self._archs)}
        writer = create_zoo(self.path / name, self.record, members, list(self._archs.values()),
                            {mid: position[key] for mid, key in self._member_arch.items()})
        try:
            register_part(self.path, name, self._index_fields())
        except BaseException:
            writer.close()
            raise
        self._current, self._current_name, self._written = writer, name, 0

    def _index_fields(self) -> dict[str, Any]:
        return new_index(self.record.name, [], self.max_part_size)

    def _resume_part(self, name: str) -> None:
        from zooscope.stores.h5writer import resume_zoo

        register_part(self.path, name, self._index_fields())
        writer = resume_zoo(self.path / name)
        self._current, self._current_name = writer, name
        self._written = len(writer.f["checkpoints/index"])

    def _earlier(self, name: str) -> Any:
        from zooscope.stores.h5reader import HDF5Zoo

        if name not in self._closed:
            self._closed[name] = HDF5Zoo(self.path / name)
        return self._closed[name]

    def _earlier_parts(self) -> list[Any]:
        return [self._earlier(n) for n in self._slot_parts() if n != self._current_name]

    def _make_room(self, incoming: int) -> None:
        """Begin a new part where ``incoming`` bytes would take this one past the limit;
        a part always holds at least one checkpoint, so none is ever split."""
        if not self._written:
            return
        try:
            size = os.path.getsize(self.path / self._current_name)
        except OSError:
            return
        if size + incoming > self.max_part_size:
            self._start_part()

    # -- the writer interface ---------------------------------------------------------------
    def ensure_architecture(self, arch: Architecture) -> None:
        self._current.ensure_architecture(arch)
        self._archs[fingerprint(arch)] = arch

    def start_member(self, member: Member, arch_key: str | Architecture) -> None:
        arch = arch_key if isinstance(arch_key, Architecture) else None
        if arch is None:
            raise ZooFileError("a zoo folder's writer starts members with their architecture")
        self._current.start_member(member, arch)
        self._archs.setdefault(fingerprint(arch), arch)
        self._member_arch[member.id] = fingerprint(arch)
        self._status[member.id] = RUNNING

    def set_status(self, member: Member, status: int) -> None:
        self._current.set_status(member, status)
        self._status[member.id] = status

    def completed_epochs(self, member: Member) -> list[int]:
        epochs = set(self._current.completed_epochs(member))
        for zoo in self._earlier_parts():
            with contextlib.suppress(ZooFileError):
                epochs.update(c.epoch for c in zoo.checkpoints(member))
        return sorted(epochs)

    def _earlier_checkpoint(self, member: Member, epoch: int) -> tuple[Any, Checkpoint] | None:
        for zoo in self._earlier_parts():
            with contextlib.suppress(ZooFileError):
                for c in zoo.checkpoints(member, [epoch]):
                    return zoo, c
        return None

    def read_state_dict(self, member: Member, epoch: int) -> dict[str, Any]:
        if epoch in self._current.completed_epochs(member):
            return self._current.read_state_dict(member, epoch)
        found = self._earlier_checkpoint(member, epoch)
        if found is None:
            raise ZooFileError(f"no checkpoint of member {member.id} at epoch {epoch}")
        return found[0].state_dict(member, epoch)

    def _stored_bytes(self, shapes: Iterable[Sequence[int]]) -> int:
        """About what a checkpoint of tensors of these shapes takes in a part."""
        width = 2 if self.record.storage_dtype in ("float16", "bfloat16") else 4
        return sum(int(np.prod(tuple(shape), dtype=np.int64)) * width for shape in shapes)

    def write_checkpoint(self, member: Member, epoch: int, step: int, wall_time: float,
                         state_dict: Mapping[str, Any], metrics: Mapping[str, float],
                         predictions: np.ndarray | None) -> None:
        self._make_room(self._stored_bytes(t.shape for t in state_dict.values()))
        self._current.write_checkpoint(member, epoch, step, wall_time, state_dict, metrics,
                                       predictions)
        self._written += 1

    def share_checkpoint(self, source: Member, member: Member, epoch: int) -> dict[str, float]:
        if epoch in self._current.completed_epochs(source):
            if member.id not in self._member_arch and source.id in self._member_arch:
                self._member_arch[member.id] = self._member_arch[source.id]
            metrics = self._current.share_checkpoint(source, member, epoch)
            self._written += 1
            return metrics
        # The longer run's checkpoint went into an earlier part: a part is a zoo on its
        # own, so the shorter run's copy of it is written whole into this one.
        found = self._earlier_checkpoint(source, epoch)
        if found is None:
            raise ZooFileError(f"no checkpoint of member {source.id} at epoch {epoch}")
        zoo, c = found
        if member.id not in self._member_arch:
            self.start_member(member, self._archs[self._member_arch[source.id]])
        preds = zoo.predictions([c])[0] if zoo.prediction_kind() else None
        self.write_checkpoint(member, epoch, c.step, c.wall_time, zoo.state_dict(source, epoch),
                              c.metrics, preds)
        return dict(c.metrics)

    def copy_checkpoint(self, source: StoredZoo, member: Member, checkpoint: Checkpoint,
                        predictions: np.ndarray | None) -> bool:
        self._make_room(self._stored_bytes(source.tensor_shape(name, member)
                                           for name in source.tensor_names(member)))
        if member.id not in self._member_arch:
            return False
        done = self._current.copy_checkpoint(source, member, checkpoint, predictions)
        if done:
            self._written += 1
        return done

    def write_card(self, text: str) -> None:
        write_atomic(self.path / CARD, text)

    def close(self) -> None:
        try:
            for zoo in self._closed.values():
                zoo.close()
            self._closed.clear()
            if self._current is not None:
                self._current.close()
                self._current = None
        finally:
            self._lock.release()


def _slot_lock(folder: Path, slot: str | None) -> Any:
    from zooscope.stores.h5lock import WriterLock

    return WriterLock(folder / (slot or "zoo"))


def create_folder(folder: Path, record: ZooRecord, members: Sequence[Member],
                  slot: str | None, max_part_size: int | None,
                  order: Sequence[Member] | None = None) -> PartsWriter:
    """Start this slot's parts in ``folder`` (made where missing). A one-process run
    (no slot) replaces a zoo already there; a slot replaces only its own parts."""
    check_slot(slot)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ZooFileError(f"{folder} exists and is not a folder")
    folder.mkdir(exist_ok=True)
    lock = _slot_lock(folder, slot)
    try:
        clear_leftovers(folder, slot, replacing=True)
        replaced = parts_on_disk(folder) if slot is None else parts_on_disk(folder, slot)
        if replaced:
            from zooscope.stores.h5lock import WriterLock

            if any(WriterLock.held(folder / n) for n in replaced):
                raise ZooFileError(f"{folder} is being written by another process",
                                   hint="wait for it to finish, or stop it first")
            unregister_parts(folder, replaced)
            for name in replaced:
                (folder / name).unlink(missing_ok=True)
        limit = int(max_part_size or DEFAULT_MAX_PART_SIZE)
        with index_lock(folder):
            if slot is None or not (folder / INDEX).exists():
                write_index(folder, new_index(record.name, [m.id for m in (order or members)],
                                              limit))
        writer = PartsWriter(folder, slot, record, members, limit, lock)
        writer._start_part()
        return writer
    except BaseException:
        lock.release()
        raise


def resume_folder(folder: Path, slot: str | None, max_part_size: int | None) -> PartsWriter:
    """Reopen this slot's newest part for writing; a part a kill left out of the index is
    added, one killed while being created is removed (it held no checkpoint)."""
    from zooscope.stores.h5reader import HDF5Zoo
    from zooscope.stores.superblock import clear_write_flags

    check_slot(slot)
    names = parts_on_disk(folder, slot)
    if not names:
        raise ZooFileError(f"{folder} holds no parts of {slot or 'this run'} to resume")
    lock = _slot_lock(folder, slot)
    try:
        clear_leftovers(folder, slot)
        index = read_index(folder)
        limit = int(max_part_size or index.get("max_part_size") or DEFAULT_MAX_PART_SIZE)
        members: dict[str, Member] = {}
        archs: dict[str, Architecture] = {}
        for k, name in enumerate(names):
            # Every part of the slot: a kill while a part was being started leaves its
            # newest part without the statuses and architectures copied into it.
            if k == len(names) - 1:
                clear_write_flags(folder / name)
            with HDF5Zoo(folder / name) as zoo:
                if k == 0:
                    record = zoo.record()
                for m in zoo.members():
                    if m.id not in members or m.status != STATUS_LABELS[PENDING]:
                        members[m.id] = m
                    with contextlib.suppress(ZooscopeError):
                        archs[m.id] = zoo.architecture(m)
        writer = PartsWriter(folder, slot, record, list(members.values()), limit, lock)
        for name in names[:-1]:
            register_part(folder, name, writer._index_fields())
        for mid, arch in archs.items():
            writer._archs.setdefault(fingerprint(arch), arch)
            writer._member_arch[mid] = fingerprint(arch)
        writer._resume_part(names[-1])
        return writer
    except BaseException:
        lock.release()
        raise


def remove_folder_parts(folder: Path, slot: str | None) -> None:
    """Remove what a failed start of this slot left: its parts, and the folder with its
    index and locks where nothing else is in it."""
    if folder.is_symlink() or not folder.is_dir():
        return
    names = parts_on_disk(folder, slot)
    unregister_parts(folder, names)
    for name in names:
        (folder / name).unlink(missing_ok=True)
        (folder / (name + ".lock")).unlink(missing_ok=True)
    (folder / f"{slot or 'zoo'}.lock").unlink(missing_ok=True)
    if not parts_on_disk(folder):
        for name in (INDEX, INDEX + ".lock", CARD):
            (folder / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def replace_folder(source: Path, target: Path) -> None:
    """Put a finished zoo folder at ``target``, replacing a zoo (file or folder) there."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


__all__ = ["CARD", "DEFAULT_MAX_PART_SIZE", "FORMAT", "FORMAT_VERSION", "INDEX", "PartsWriter",
           "PartsZoo", "create_folder", "open_folder", "open_folder_url", "parse_index",
           "read_index", "remove_folder_parts", "replace_folder", "resume_folder"]
