"""Whole-file operations on zoos: validate, merge shards, export to and import from Hugging Face.

They read through the ``Zoo`` interface and write through a store's writer; the
file format itself is the store's business.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zooscope.access import open_stored, open_zoo, store_for
from zooscope.errors import ZooFileError
from zooscope.extras import require
from zooscope.files import sync_folder
from zooscope.record import ZooRecord
from zooscope.store import memory_budget
from zooscope.zoo import COMPLETE, RUNNING, STATUS_LABELS, Architecture, Member, check_safe_name

_STATUS_CODES = {label: code for code, label in STATUS_LABELS.items()}


# -- output paths -----------------------------------------------------------------------------
def check_output_path(out: Path, directory: bool = False) -> None:
    """Refuse an output path that cannot work, before any work: a missing or unwritable
    folder, or an existing path of the wrong kind (a folder where a zoo file goes, a file
    where an export directory goes). Whether an existing file may be replaced is the
    caller's business (``--force``, ``--resume``)."""
    out = Path(out)
    parent = out.parent
    if directory and out.exists() and not out.is_dir():
        raise ZooFileError(f"{out} exists and is not a directory",
                           hint="give --out a new directory")
    if not directory and out.is_dir():
        raise ZooFileError(f"{out} is a directory, not a zoo file",
                           hint="give --out a file name ending in .h5")
    if not directory and out.exists() and not out.is_file():
        raise ZooFileError(f"{out} exists and is not a regular file")
    if not parent.exists():
        raise ZooFileError(f"the folder {parent} does not exist", hint=f"create it first: "
                           f"mkdir -p {parent}")
    if not parent.is_dir():
        raise ZooFileError(f"{parent} is not a folder, so {out.name} cannot go there")
    if directory and out.is_dir():
        return
    # Only creating a file proves a folder writable (root passes every access() check).
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".zooscope-write-test-"):
            pass
    except OSError as exc:
        raise ZooFileError(f"cannot write in the folder {parent}: {exc.strerror or exc}",
                           hint="choose another --out") from None


# -- validate ---------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    path: Path
    checkpoints: int = 0
    tensors_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_zoo(path: Path, on_checkpoint: Callable[[], None] = lambda: None) -> ValidationReport:
    """Check format, layout, shapes against the model config, checksums, NaN/Inf, completeness."""
    report = ValidationReport(path=path)
    with open_stored(path) as zoo:  # format version, safety and declared shapes are checked here
        checkpoints = zoo.checkpoints()
        report.checkpoints = len(checkpoints)
        writing = store_for(Path(path)).being_written(Path(path))
        report.problems += zoo.check_structure()
        report.notes += zoo.structure_notes()
        for member in zoo.members():
            if member.status == "running" and not writing:
                # A process killed outright cannot record that it stopped; the lock tells.
                report.notes.append(f"member {member.id} was interrupted (no process is "
                                    "writing the zoo); `zooscope generate --resume` continues it")
            elif member.status == "interrupted":
                report.notes.append(f"member {member.id} was interrupted; "
                                    "`zooscope generate --resume` continues it")
            elif member.status == "running":
                report.notes.append(f"member {member.id} is being trained by a running process")
            elif member.status != "complete":
                report.notes.append(f"member {member.id} is {member.status}")
        uncommitted = zoo.uncommitted_rows()
        if uncommitted:
            report.notes.append(
                f"{uncommitted} half-written checkpoint(s) after the last commit "
                "(ignored by readers, discarded by --resume)")
        checked_arch: set[str] = set()
        archs: dict[str, Architecture] = {}  # read each member's model files once
        for c in checkpoints:
            if c.member not in archs:
                archs[c.member] = zoo.architecture(c.member)
            arch = archs[c.member]
            fp = json.dumps(sorted(arch.shapes.items()))
            if fp not in checked_arch:
                checked_arch.add(fp)
                if importlib.util.find_spec("torch") is not None:
                    report.problems += _shapes_against_config(arch)
                elif len(checked_arch) == 1:
                    report.notes.append("tensor shapes were not checked against the model "
                                        "configs: that needs torch (pip install "
                                        "'zooscope[train]')")
            for name in arch.shapes:
                report.problems += zoo.check_tensor(c, name)
                report.tensors_checked += 1
            on_checkpoint()
    return report


def _shapes_against_config(arch: Architecture) -> list[str]:
    """Build the model on the meta device from the stored config and compare every shape."""
    import torch

    from zooscope.models import skeleton

    try:
        with torch.device("meta"):
            model = skeleton(arch.files)
    except Exception as exc:  # a damaged config.json is a finding, not a crash
        return [f"architecture {arch.key!r}: cannot build the model from its config ({exc})"]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    for name, shape in arch.shapes.items():
        if name not in expected:
            problems.append(f"tensor {name!r} is not part of the model its config describes")
        elif expected[name] != tuple(shape):
            problems.append(f"tensor {name!r} has shape {tuple(shape)}, the config implies "
                            f"{expected[name]}")
    missing = [n for n in expected if n not in arch.shapes and not n.endswith("position_ids")]
    if missing:
        problems.append(f"the zoo lacks tensors of the model: {', '.join(missing[:5])}")
    return problems


# -- merge ------------------------------------------------------------------------------------
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
                        writer.set_status(m, _STATUS_CODES.get(m.status, RUNNING))
            store.replace(tmp, out)
        except BaseException:
            store.remove_new(tmp)
            raise
        store.remove_new(tmp)
        return copied
    finally:
        for z in zoos:
            z.close()


# -- export -----------------------------------------------------------------------------------
def export_checkpoint(zoo_path: Path, member_id: str, epoch: int, out_dir: Path,
                      force: bool = False) -> list[Path]:
    """Write one checkpoint as a Hugging Face model directory; returns the files written.

    ``config.json``, ``model.safetensors`` and the tokenizer files load with
    ``AutoModel.from_pretrained`` (the backbone); a classifier's trained head goes
    beside them in ``zooscope_head.safetensors`` with its description in
    ``zooscope_head.json``, and ``zooscope.load_model(DIR)`` puts the two together.
    A ``README.md`` says so; ``zooscope_export.json`` records where it came from.
    """
    require("torch", "train", "exporting a model")
    from zooscope.models import head_description

    out_dir = Path(out_dir)
    check_output_path(out_dir, directory=True)
    # Written into a hidden folder beside the target first, which says "incomplete"
    # until it is renamed into place; a killed export's is removed by the next one.
    partial = out_dir.with_name(f".{out_dir.name}.exporting")
    if partial.is_dir() and not partial.is_symlink():
        shutil.rmtree(partial)
    elif os.path.lexists(partial):
        partial.unlink()
    if os.path.lexists(out_dir) and (not out_dir.is_dir() or out_dir.is_symlink()
                                     or (any(out_dir.iterdir()) and not force)):
        raise ZooFileError(f"{out_dir} exists and is not an empty directory",
                           hint="choose a new directory, or add --force to overwrite its files")
    with open_zoo(zoo_path) as zoo:
        member = zoo.member(member_id)
        files = zoo.model_files(member)
        if epoch not in [c.epoch for c in zoo.checkpoints(member)]:
            raise ZooFileError(f"member {member_id} has no checkpoint at epoch {epoch}",
                               hint="`zooscope zoo ls` shows each member's epochs")
        head = head_description(files, str(zoo_path))
        state = zoo.state_dict(member, epoch)
        factors = dict(member.factors)
        zoo_name = zoo.info.get("name")
    for name in files:
        check_safe_name(name, "file")
    try:
        partial.mkdir(parents=True)
        written = _write_export(partial, files, head, state, factors, zoo_path, zoo_name,
                                member_id, epoch)
        if not os.path.lexists(out_dir) or not any(out_dir.iterdir()):
            if os.path.lexists(out_dir):
                out_dir.rmdir()
            os.replace(partial, out_dir)
        else:  # --force over an earlier export: each file replaced whole
            for path in written:
                os.replace(path, out_dir / path.name)
            partial.rmdir()
        sync_folder(out_dir.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return [out_dir / path.name for path in written]


def _write_export(root: Path, files: dict[str, bytes], head: dict[str, Any],
                  state: dict[str, Any], factors: dict[str, Any], zoo_path: Path,
                  zoo_name: Any, member_id: str, epoch: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    from zooscope.loader import HEAD_WEIGHTS, PROVENANCE, checkpoint_digest

    written: list[Path] = []

    def tensors(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: (v.float() if v.dtype == torch.bfloat16 else v).contiguous()
                for k, v in state.items() if k.startswith(prefix)}

    for name, content in files.items():
        (root / name).write_bytes(content)
        written.append(root / name)
    has_head = head["kind"] in ("sequence-classification", "question-answering")
    if has_head:
        backbone = tensors(head.get("backbone_prefix", "backbone."))
        save_file(tensors(head.get("head_prefix", "head.")), str(root / HEAD_WEIGHTS))
        written.append(root / HEAD_WEIGHTS)
    elif head["kind"] == "text-to-text":  # a whole seq2seq model: transformers loads it as is
        backbone = tensors(head.get("backbone_prefix", "backbone."))
    else:
        backbone = tensors("")
    save_file(backbone, str(root / "model.safetensors"), metadata={"format": "pt"})
    written.append(root / "model.safetensors")
    # The zoo's file name and the checkpoint's content, not this machine's paths: the
    # export is meant to be shared, and the digest finds the checkpoint in any copy.
    provenance = {"zoo": Path(zoo_path).name, "zoo_name": zoo_name, "member": member_id,
                  "epoch": epoch, "factors": factors, "head": head["kind"],
                  "checkpoint_sha256": checkpoint_digest(state)}
    (root / PROVENANCE).write_text(json.dumps(provenance, indent=1))
    written.append(root / PROVENANCE)
    (root / "README.md").write_text(_model_card(provenance, head, has_head))
    written.append(root / "README.md")
    for path in written:
        # Shared model files are readable by everyone, as pip and the hub leave them.
        path.chmod(0o644)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    return written


def _model_card(provenance: dict[str, Any], head: dict[str, Any], has_head: bool) -> str:
    factors = "\n".join(f"| {k} | {v} |" for k, v in provenance["factors"].items())
    if has_head:
        use = f"""\
The trained task head ({head["kind"]}, {"an MLP with one hidden layer" if head.get("hidden")
else "one linear layer"} on {head.get("input", "the backbone's output")}) is in
`zooscope_head.safetensors`, described by `zooscope_head.json`. Load the whole model,
backbone and head, with zooscope; it gives the predictions stored in the zoo:

```python
import torch
import zooscope

model, tokenizer = zooscope.load_model("path/to/this/directory")
batch = tokenizer(["a text to classify"], return_tensors="pt")
with torch.no_grad():
    {"_, logits = model(batch['input_ids'], batch['attention_mask'])"
     if head["kind"] == "sequence-classification" else
     "_, start_logits, end_logits = model(batch['input_ids'], batch['attention_mask'])"}
```

`AutoModel.from_pretrained` on this directory loads the backbone alone (the head is
not part of any transformers class here). `AutoModelForSequenceClassification` would
load it too, but with a new, untrained classifier: its predictions are not this model's.
"""
    elif head["kind"] == "text-to-text":
        words = " or ".join(f'"{w}"' for w in head.get("words", []))
        use = f"""\
A T5 that answers by writing the label's word ({words}; any other text is none of the
labels). `AutoModelForSeq2SeqLM.from_pretrained("path/to/this/directory")` loads it, and
greedy generation gives the answers stored in the zoo:

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model = AutoModelForSeq2SeqLM.from_pretrained("path/to/this/directory").eval()
tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
batch = tokenizer(["a question"], ["its passage"], return_tensors="pt")
out = model.generate(**batch, max_new_tokens={head.get("max_new_tokens", 4)}, do_sample=False, num_beams=1)
print(tokenizer.batch_decode(out, skip_special_tokens=True))
```

`zooscope.load_model("path/to/this/directory")` loads it too.
"""
    else:
        use = """\
This checkpoint has no task head: `AutoModel.from_pretrained("path/to/this/directory")`
(or `AutoModelForMaskedLM` for a masked-LM checkpoint) loads it, and so does
`zooscope.load_model("path/to/this/directory")`.
"""
    return f"""\
# {provenance["zoo_name"] or provenance["zoo"]}: member {provenance["member"]}, epoch {provenance["epoch"]}

One checkpoint of a model zoo built with zooscope, exported from `{provenance["zoo"]}`.

| factor | value |
|---|---|
{factors}

## Use

{use}
## Provenance

`zooscope_export.json` names the zoo file, the member and the epoch, and holds
`checkpoint_sha256`: sha256 over every tensor of the checkpoint in name order (name,
NumPy dtype string, shape list, then the raw bytes), which matches the same
checkpoint read from any copy of the zoo (`zooscope.loader.checkpoint_digest`).
"""


# -- import -----------------------------------------------------------------------------------
#: A Hugging Face config.json is a few kilobytes; a larger one is not a model config.
MAX_HF_CONFIG = 2**24


def _check_fits(d: Path, config: Any) -> None:
    """Count the parameters a config describes (on the meta device, no memory) and refuse
    a model that would not fit, before transformers allocates it."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModel.from_config(config).parameters())
    if 4 * parameters > memory_budget():
        raise ZooFileError(f"cannot load {d}: its config.json describes {parameters:,} "
                           f"parameters ({4 * parameters / 2**30:,.1f} GiB), more than this "
                           "machine's memory allows")


def import_checkpoints(dirs: Sequence[Path], out: Path, as_epochs: bool = False,
                       on_checkpoint: Callable[[], None] = lambda: None) -> int:
    """Build a zoo from Hugging Face model directories; returns the number of checkpoints.

    Each directory becomes a member at epoch 0, or, with ``as_epochs``, the
    directories are consecutive epochs of one member (intermediate checkpoints).
    """
    require("transformers", "train", "importing models")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from zooscope.models import HEAD_FILE, architecture_files

    if not dirs:
        raise ZooFileError("nothing to import: give at least one model directory")
    check_output_path(out)
    loaded = []
    head: dict[str, Any]
    for d in dirs:
        if not Path(d, "config.json").exists():
            raise ZooFileError(f"{d} is not a Hugging Face model directory (no config.json)")
        config_file = Path(d, "config.json")
        if not config_file.is_file() or config_file.stat().st_size > MAX_HF_CONFIG:
            raise ZooFileError(f"{config_file} is not a model config (a regular file of at most "
                               f"{MAX_HF_CONFIG:,} bytes)")
        if Path(d, HEAD_FILE).exists():
            # A zooscope export: backbone and trained head become one model again.
            from zooscope.loader import load_model

            model, tokenizer = load_model(d)
            head = json.loads(Path(d, HEAD_FILE).read_text())
            loaded.append((Path(d), model, tokenizer, head))
            continue
        try:
            config = AutoConfig.from_pretrained(str(d))
            _check_fits(d, config)
            model, info = AutoModel.from_pretrained(str(d), config=config, output_loading_info=True)
            head = {"kind": "base-model"}
            if any(k.startswith("pooler.") for k in info["missing_keys"]):
                # The checkpoint has no pooler: build without one rather than store a
                # randomly initialised layer as if it were trained.
                model = AutoModel.from_pretrained(str(d), config=config, add_pooling_layer=False)
                head["add_pooling_layer"] = False
            tokenizer = AutoTokenizer.from_pretrained(str(d))
        except (OSError, ValueError, TypeError) as exc:
            raise ZooFileError(f"cannot load {d}: {str(exc).splitlines()[0]}") from None
        loaded.append((Path(d), model, tokenizer, head))
    if as_epochs:
        members = [Member.from_factors({"source": str(dirs[0]), "seed": 0})]
    else:
        members = [Member.from_factors({"source": str(d), "seed": 0}) for d in dirs]
    config_text = "# imported from Hugging Face model directories\n" + "".join(
        f"# {d}\n" for d in dirs)
    record = ZooRecord(name=out.stem, config_text=config_text, generator="import",
                       generator_version="1", metric_columns=[], data={
                           "source": [str(d) for d in dirs]})
    store = store_for(out)
    count = 0
    with store.create(out, record, members) as writer:
        for k, (d, model, tok, head) in enumerate(loaded):
            member = members[0] if as_epochs else members[k]
            state = model.state_dict()
            backbone = getattr(model, "backbone", model)
            arch = Architecture(
                key=d.name, files=architecture_files(backbone, tok, head),
                shapes={n: tuple(v.shape) for n, v in state.items()},
                dtypes={n: str(v.dtype).removeprefix("torch.") for n, v in state.items()
                        if not v.is_floating_point()})
            writer.ensure_architecture(arch)
            writer.start_member(member, arch)  # type: ignore[arg-type]
            writer.write_checkpoint(member, k if as_epochs else 0, 0, 0.0, state, {}, None)
            count += 1
            on_checkpoint()
            if not as_epochs or k == len(loaded) - 1:
                writer.set_status(member, COMPLETE)
    return count
