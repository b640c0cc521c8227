"""The zoo card: a Hugging Face dataset card (README.md with YAML front matter) saying what
a zoo is, how it was made and how to read it without zooscope.

``generate`` stores it in the zoo (``/card``) when the zoo is created and again when
it finishes; ``zooscope zoo card`` writes it as README.md for a dataset repository.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections import defaultdict
from typing import Any

from zooscope.config import DEFAULTS
from zooscope.errors import ZooscopeError
from zooscope.markdown import code, fence, paragraphs, text, yaml_scalar
from zooscope.zoo import Zoo

#: Hugging Face's size categories, by number of checkpoints (the zoo's rows).
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M")]


def _config(zoo: Zoo) -> dict[str, Any]:
    try:
        return tomllib.loads(zoo.config_text)
    except tomllib.TOMLDecodeError:
        return {}


def _built(zoo: Zoo, members: list[Any]) -> dict[str, Any]:
    """The sizes of the scratch model as built (its stored config.json): the vocabulary is
    the trained tokenizer's, which can be smaller than the one asked for."""
    member = next((m for m in members if m.factors.get("backbone") == "scratch"), None)
    if member is None:
        return {}
    try:
        built = json.loads(zoo.model_files(member).get("config.json", b"{}"))
    except (ZooscopeError, ValueError, RecursionError):
        return {}
    if not isinstance(built, dict):
        return {}
    return {k: built[k] for k in DEFAULTS["scratch"] if k in built
            and isinstance(built[k], int | float | str) and not isinstance(built[k], bool)}


def _listed(values: Any) -> list[Any]:
    return values if isinstance(values, list) else [values]


def _cell_code(value: Any) -> str:
    """A code span inside a table cell: a pipe would end the cell even there."""
    return code(value).replace("|", "\\|")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _metric_summary(zoo: Zoo) -> tuple[list[str], list[list[str]]]:
    """Per configuration (the varying factors but the seed): members and each test
    metric's mean ± standard deviation over seeds at the members' last epoch."""
    members = zoo.members()
    last: dict[str, Any] = {}
    for c in zoo.checkpoints():
        if c.member not in last or c.epoch >= last[c.member].epoch:
            last[c.member] = c
    keys = sorted({k for m in members for k in m.factors})
    varying = [k for k in keys if k != "seed"
               and len({json.dumps(m.factors.get(k), default=str) for m in members}) > 1]
    metrics = sorted({k for c in last.values() for k in c.metrics if k.startswith("test_")})
    groups: dict[tuple[str, ...], list[Any]] = defaultdict(list)
    for m in members:
        if m.id in last:
            groups[tuple(_fmt(m.factors.get(k)) for k in varying)].append(last[m.id])
    head = [text(h) for h in (*varying, "members", *metrics)]
    rows = []
    for config, cps in sorted(groups.items()):
        cells = [*(text(c) for c in config), str(len(cps))]
        for name in metrics:
            values = [float(c.metrics[name]) for c in cps if name in c.metrics]
            values = [v for v in values if not math.isnan(v)]
            if not values:
                cells.append("")
                continue
            mean = sum(values) / len(values)
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 \
                if len(values) > 1 else 0.0
            cells.append(f"{mean:.4f} ± {sd:.4f}" if len(values) > 1 else f"{mean:.4f}")
        rows.append(cells)
    return head, rows


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(none yet)"]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows)]


def zoo_card(zoo: Zoo) -> str:
    """The card of an open zoo, from what the zoo records (nothing of this machine)."""
    info = zoo.info
    cfg = _config(zoo)
    zoo_table = cfg.get("zoo", {})
    name = str(info.get("name", "zoo"))
    members = zoo.members()
    checkpoints = zoo.checkpoints()
    licence = str(zoo_table.get("license") or "other")
    data_licence = zoo_table.get("data_license")
    backbones = sorted({str(m.factors.get("backbone")) for m in members if "backbone" in m.factors})
    size = next((label for limit, label in _SIZES if len(checkpoints) < limit), "n>1M")
    tags = ["zooscope", "model-zoo", "weight-space", str(info.get("generator"))]
    # Everything the zoo holds is data here: YAML scalars quoted, Markdown escaped for
    # where it goes, file names in code through repr.
    lines = ["---", f"license: {yaml_scalar(licence)}", f"pretty_name: {yaml_scalar(name)}",
             "tags:", *(f"- {yaml_scalar(t)}" for t in tags), "size_categories:",
             f"- {yaml_scalar(size)}", "---", "", f"# {text(name)}", ""]
    description = zoo_table.get("description")
    lines += [paragraphs(str(description).strip()) if description else
              f"A model zoo of {len(members)} transformer models trained with the "
              f"{code(info.get('generator'))} generator over a grid of generating factors, "
              "every epoch recorded.", ""]

    status: dict[str, int] = defaultdict(int)
    for m in members:
        status[m.status] += 1
    data = info.get("data") or {}
    lines += ["## Contents", "",
              f"- **members**: {len(members)} "
              f"({', '.join(f'{n} {text(s)}' for s, n in sorted(status.items()))})",
              f"- **checkpoints**: {len(checkpoints)} (every member at every epoch, epoch 0 "
              "before training)",
              f"- **generator**: {code(info.get('generator'))} version "
              f"{text(info.get('generator_version'))}",
              f"- **format**: zooscope zoo file, format {text(info.get('format'))}; tensors "
              f"stored as {text(info.get('storage_dtype'))}, compression "
              f"{text(info.get('compression'))}",
              f"- **created**: {text(info.get('created'))}",
              *([f"- **batch size**: {text(extra['auto_batch_size'])}, the largest that fitted "
                 "(`batch_size = \"auto\"`)"]
                if "auto_batch_size" in (extra := info.get("extra") or {}) else []), ""]

    lines += ["## Backbones", ""]
    if backbones:
        lines += ["| backbone | revision | members |", "|---|---|---|"]
        for b in backbones:
            base, _, revision = b.partition("@") if not b.startswith("zoo://") else (b, "", "")
            count = sum(1 for m in members if str(m.factors.get("backbone")) == b)
            if base == "scratch" or base.startswith("zoo://"):
                revision = "-"
            lines.append(f"| {_cell_code(base)} | "
                         f"{text(revision) or 'none pinned (the default branch then)'} "
                         f"| {count} |")
    else:
        lines.append("(recorded per member in the factors)")
    lines.append("")

    lines += ["## Data", ""]
    for key in ("source", "validation_source", "test_source"):
        if data.get(key):
            lines.append(f"- **{key.replace('_', ' ')}**: {code(data[key])}")
    sizes = data.get("sizes") or {}
    fingerprints = data.get("fingerprints") or {}
    if sizes or fingerprints:
        lines += ["", "| split | examples | fingerprint (SHA-256 of the examples) |", "|---|---|---|"]
        for split in sorted(set(sizes) | set(fingerprints)):
            lines.append(f"| {text(split)} | {text(sizes.get(split, ''))} | "
                         f"{_cell_code(fingerprints.get(split, ''))} |")
    lines.append("")

    grid = cfg.get("grid", {})
    lines += ["## Grid", "", "| factor | values |", "|---|---|"]
    if "seeds" in zoo_table:
        lines.append(f"| seed | {', '.join(text(_fmt(s)) for s in _listed(zoo_table['seeds']))} |")
    for factor, values in grid.items():
        lines.append(f"| {text(factor)} | {', '.join(text(_fmt(v)) for v in _listed(values))} |")
    lines += ["", "The zoo config, verbatim, is the root attribute `config`.", ""]

    given = cfg.get("train", {})
    train = {**DEFAULTS["train"], **given}
    extra = info.get("extra") or {}
    settings = {
        **({"epochs": zoo_table["epochs"]} if "epochs" in zoo_table else {}),
        "batch size": extra.get("auto_batch_size", train["batch_size"]),
        "optimizer": given.get("optimizer", "the generator's default"),
        "learning-rate schedule": train["lr_schedule"],
        "max sequence length": train["max_seq_len"],
        "dropout": train["dropout"],
        "head": json.dumps(train["head"]),
        "backbone frozen": train["freeze_backbone"],
    }
    if train["lr_schedule"] != "constant":
        settings["warm-up"] = f"{train['warmup_ratio']:g} of the steps"
    for key, label in (("gradient_accumulation_steps", "gradient accumulation"),
                       ("max_grad_norm", "gradient clipping (max norm)"),
                       ("mixed_precision", "mixed precision"),
                       ("max_train_examples", "training examples (cap)")):
        if train[key] != DEFAULTS["train"][key]:
            settings[label] = extra.get(key, train[key])
    if "scratch" in backbones:
        scratch = {**DEFAULTS["scratch"], **cfg.get("scratch", {}), **_built(zoo, members)}
        settings["scratch backbone"] = ", ".join(f"{k} {v}" for k, v in scratch.items())
    lines += ["## Training", "", "| setting | value |", "|---|---|",
              *(f"| {k} | {text(_fmt(v))} |" for k, v in settings.items()),
              "", "Every member starts from its backbone and trains with its own seed; "
              "epoch 0 is the state before the first step.", ""]

    head, rows = _metric_summary(zoo)
    lines += ["## Final metrics", "",
              "Test metrics at each member's last epoch, mean ± standard deviation over "
              "seeds:", "", *_table(head, rows), ""]

    versions = info.get("versions") or {}
    lines += ["## Environment", "", "| | |", "|---|---|",
              *(f"| {text(k)} | {text(v)} |" for k, v in sorted(versions.items())), ""]

    lines += ["## Licence", "",
              f"- **weights**: {text(licence)}"
              + ("" if zoo_table.get("license") else " (no `[zoo] license` was given)"),
              f"- **embedded data** (the test split's texts and labels in `/data`): "
              f"{text(data_licence) if data_licence else 'that of the data source above'}", ""]

    file = zoo.path.name
    lines += ["## Reading it", "", "With zooscope (`pip install zooscope`):", "",
              *fence("\n".join([
                  "import zooscope", "",
                  f"zoo = zooscope.open_zoo({file!r})",
                  "zoo.members_frame()            # members and their factors",
                  "zoo.metrics()                  # every metric, long format",
                  'zoo.tensor("<tensor name>")    # one tensor across all checkpoints']),
                  "python"), "",
              "With plain h5py and numpy (the format is documented in zooscope's "
              "docs/format.md)" + (
                  ": the folder's `zoo.json` lists its parts, each a zoo file of the same "
                  "format holding some of the checkpoints." if zoo.parts() else ":"), "",
              *fence("\n".join([
                  *(["import json", "from pathlib import Path", "", "import h5py", "",
                     f"folder = Path({file!r})",
                     'for part in json.loads((folder / "zoo.json").read_text())["parts"]:',
                     '  with h5py.File(folder / part, "r") as f:']
                    if zoo.parts() else
                    ["import json", "", "import h5py", "", f'with h5py.File({file!r}, "r") as f:']),
                  '    ids = f["members/id"].asstr()[()]',
                  '    factors = [json.loads(s) for s in f["members/factors"].asstr()[()]]',
                  '    index = f["checkpoints/index"][()]        # member, epoch, arch_row, ...',
                  '    columns = json.loads(f["checkpoints/metrics"].attrs["columns"])',
                  '    metrics = f["checkpoints/metrics"][: len(index)]',
                  "    # one tensor across every checkpoint of the first architecture",
                  '    arch = f["architectures/a0"]',
                  '    names = json.loads(arch.attrs["tensor_names"])',
                  '    rows = arch["rows"][:, names.index(names[-1])]',
                  '    mine = index[index["architecture"] == 0]',
                  '    stack = arch["tensors"][names[-1]][()][rows[mine["arch_row"]]]']),
                  "python"), ""]
    return "\n".join(lines)
