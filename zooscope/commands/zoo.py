"""``zooscope zoo ...``: inspect, validate, merge, export and import zoo files."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from zooscope.commands.common import (
    JsonOption,
    ZooPath,
    console,
    err_console,
    fail,
    fmt,
    grid_order,
    order_factors,
    print_json,
    reporter,
    rich_table,
)
from zooscope.commands.common import ZooscopeGroup as _Group
from zooscope.progress import task

app = typer.Typer(cls=_Group, no_args_is_help=True, help="Inspect, validate, merge, export "
                  "and import zoo files.")


def member_rows(zoo: Any) -> list[dict[str, Any]]:
    """One row per member: id, factors, status, epochs and the last epoch's metrics."""
    rows = []
    for m in zoo.members():
        cps = zoo.checkpoints(m)
        last = cps[-1] if cps else None
        rows.append({"id": m.id, "factors": m.factors, "status": m.status,
                     "epochs": [c.epoch for c in cps], "lineage": m.lineage,
                     "metrics": dict(last.metrics) if last else {}})
    return rows


@app.command()
def info(zoo: ZooPath, json_: JsonOption = False) -> None:
    """Show what a zoo is: name, generator, versions, data, members and checkpoints.

    Example: zooscope zoo info demo.h5
    """
    from zooscope.access import open_zoo

    with open_zoo(zoo) as z:
        data = z.info
        data["status"] = {}
        for m in z.members():
            data["status"][m.status] = data["status"].get(m.status, 0) + 1
        data["analyses"] = [f"{a['name']}/{a['key']}" for a in z.analyses()]
        parts = z.parts()
        if parts is not None:  # a folder of parts: how many files it is
            data["parts"] = len(parts)
        data["config"] = z.config_text
    if json_:
        print_json(data)
        return
    rows = [{"field": k, "value": v} for k, v in _info_lines(data)
            if k not in ("config", "extra")]
    console.print(rich_table(rows, title=str(zoo)))


def _info_lines(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Zoo metadata as ``field, text`` pairs a person reads: nested records become dotted
    fields, a flat record one line (``torch 2.13.0, numpy 2.4.6``), digests 12 characters
    (``--json`` has them whole), and absent values are left out."""
    lines: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if value is None or value == {}:
            continue
        if isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values()):
            lines += _info_lines(value, f"{name}.")
        elif isinstance(value, dict):
            short = name.endswith("fingerprints")
            lines.append((name, ", ".join(
                f"{k} {str(v)[:12] + '…' if short and len(str(v)) > 12 else fmt(v)}"
                for k, v in value.items() if v is not None)))
        elif isinstance(value, list):
            lines.append((name, ", ".join(fmt(v) for v in value) or "none"))
        else:
            lines.append((name, fmt(value)))
    return lines


@app.command("ls")
def ls(zoo: ZooPath, json_: JsonOption = False) -> None:
    """List members with factors, status, epochs and last-epoch metrics.

    Example: zooscope zoo ls demo.h5 --json
    """
    from zooscope.access import open_zoo

    with open_zoo(zoo) as z:
        rows = member_rows(z)
        order = grid_order(z.config_text)
    if json_:
        print_json([{"id": r["id"], "factors": r["factors"], "status": r["status"],
                     "epochs": r["epochs"], "lineage": r["lineage"], **r["metrics"]} for r in rows])
        return
    flat = []
    for r in rows:
        metrics = {k: v for k, v in r["metrics"].items() if k.startswith("test_")}
        epochs = f"{r['epochs'][0]}-{r['epochs'][-1]}" if r["epochs"] else "-"
        flat.append({"id": r["id"], **order_factors(r["factors"], order), "status": r["status"],
                     "epochs": epochs,
                     **metrics})
    console.print(rich_table(flat, title=f"{zoo}: {len(rows)} members"))


@app.command()
def validate(zoo: ZooPath, json_: JsonOption = False) -> None:
    """Check format, shapes against the model config, checksums, NaN/Inf and completeness.

    Exit code 1 names each bad tensor. Example: zooscope zoo validate demo.h5
    """
    from zooscope.access import open_zoo
    from zooscope.upkeep.validate import validate_zoo

    with open_zoo(zoo) as z:
        total = len(z.checkpoints())
    with reporter():
        checked = task("checking checkpoints", total=total)
        report = validate_zoo(zoo, on_checkpoint=checked.advance)
    if json_:
        print_json({"zoo": str(zoo), "ok": report.ok, "checkpoints": report.checkpoints,
                    "tensors_checked": report.tensors_checked, "problems": report.problems,
                    "notes": report.notes})
    else:
        for note in report.notes:
            console.print(f"note: {note}")
        for problem in report.problems:
            err_console.print(f"[red]bad:[/] {escape(problem)}", markup=True)
    if not report.ok:
        fail(f"{zoo}: {len(report.problems)} problem(s) in {report.checkpoints} checkpoints",
             hint="the first problem names the tensor; see above")
    if not json_:
        console.print(f"ok: {report.checkpoints} checkpoints, {report.tensors_checked} tensors "
                      f"checked in {zoo}")


@app.command()
def card(
    zoo: ZooPath,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where to write the card; '-' prints it. Default: README.md "
        "beside a zoo file, inside a zoo folder.", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write the zoo's card: a Hugging Face dataset card (README.md with YAML front matter).

    What the zoo is, how it was made (generator, backbones and revisions, data and its
    fingerprints, the grid, the environment), its final metrics, its licences and how
    to read it with plain h5py. Example: zooscope zoo card demo.h5
    """
    from zooscope.access import open_zoo, store_for
    from zooscope.files import write_atomic
    from zooscope.services.card import zoo_card

    with open_zoo(zoo) as z:
        text = zoo_card(z)
    if out is not None and str(out) == "-":
        sys.stdout.write(text)
        return
    # A zoo folder keeps its card inside: the page a repository of it shows.
    home = zoo if store_for(zoo).folders else zoo.parent
    target = out if out is not None else home / "README.md"
    if target.is_dir():
        fail(f"{target} is a directory", hint="give a file name, e.g. --out README.md")
    if os.path.lexists(target) and not force:
        fail(f"{target} exists", hint="add --force to replace it, or choose another --out")
    try:
        write_atomic(target, text)  # whole or not at all; a link there is replaced
    except OSError as exc:
        fail(f"cannot write {target} ({exc.strerror or exc})")
    console.print(f"wrote the card of {zoo.name} to {target}")


@app.command()
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Shard files of one zoo.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged zoo file.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    json_: JsonOption = False,
) -> None:
    """Join shards written by separate processes or SLURM tasks into one zoo; a zoo of
    parts (NAME.zoo) given alone becomes one file.

    Example: zooscope zoo merge part0.h5 part1.h5 --out zoo.h5
    """
    from zooscope.errors import ZooFileError
    from zooscope.upkeep.merge import merge_zoos

    if out.exists() and not force:
        raise ZooFileError(f"{out} already exists", hint="add --force to replace it")
    if out.resolve() in {s.resolve() for s in shards}:
        raise ZooFileError("the output must not be one of the shards")
    with reporter():
        from zooscope.access import open_zoo

        total = 0
        for shard in shards:
            with open_zoo(shard) as part:
                total += len(part.checkpoints())
        copied = task("copying checkpoints", total=total)
        n = merge_zoos(shards, out, on_checkpoint=copied.advance)
    if json_:
        print_json({"zoo": str(out), "shards": len(shards), "checkpoints": n})
        return
    console.print(f"merged {len(shards)} shards, {n} checkpoints, into {out}")


@app.command()
def split(
    zoo: ZooPath,
    out: Annotated[Path, typer.Option("--out", "-o", help="The zoo of parts to write "
                                      "(a new folder NAME.zoo).")],
    max_part_size: Annotated[str, typer.Option("--max-part-size", help="The most bytes a "
                                               "part holds: \"45GB\" (the default, under the "
                                               "Hugging Face Hub's 50 GB per file), "
                                               "\"500MB\", or bytes.")] = "45GB",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing zoo.")] = False,
    json_: JsonOption = False,
) -> None:
    """Write a zoo as a folder of parts, each a zoo file under a size limit (the reverse
    of `zoo merge`); no checkpoint is split.

    Example: zooscope zoo split sst2.h5 --out sst2.zoo --max-part-size 45GB
    """
    from zooscope.access import open_zoo, store_for
    from zooscope.config import parse_size
    from zooscope.errors import ZooFileError
    from zooscope.upkeep.merge import merge_zoos

    limit = parse_size("--max-part-size", max_part_size)
    if not store_for(out).parts:
        raise ZooFileError(f"{out} is not a folder of parts",
                           hint=f"give --out a name ending in .zoo, e.g. {out.stem}.zoo")
    if out.exists() and not force:
        raise ZooFileError(f"{out} already exists", hint="add --force to replace it")
    if out.resolve() == zoo.resolve():
        raise ZooFileError("the output must not be the zoo being split")
    with reporter():
        with open_zoo(zoo) as whole:
            total = len(whole.checkpoints())
        copied = task("copying checkpoints", total=total)
        n = merge_zoos([zoo], out, on_checkpoint=copied.advance, max_part_size=limit)
    with open_zoo(out) as parts:
        count = len(parts.parts() or [out])
    if json_:
        print_json({"zoo": str(out), "parts": count, "checkpoints": n})
        return
    console.print(f"wrote {n} checkpoints into {count} parts in {out}")


@app.command("export")
def export(
    zoo: ZooPath,
    member: Annotated[str, typer.Option("--member", help="Member id (see `zoo ls`).")],
    epoch: Annotated[int, typer.Option("--epoch", help="Epoch of the checkpoint.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new directory.")],
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty "
                                        "directory.")] = False,
    json_: JsonOption = False,
) -> None:
    """Write one checkpoint as a Hugging Face model directory (safetensors + config + tokenizer).

    Example: zooscope zoo export demo.h5 --member m90e7a9253c2 --epoch 3 --out model/
    """
    from zooscope.upkeep.export import export_checkpoint

    files = export_checkpoint(zoo, member, epoch, out, force=force)
    if json_:
        print_json({"directory": str(out), "member": member, "epoch": epoch,
                    "files": [str(f) for f in files]})
        return
    console.print(f"wrote {len(files)} files to {out}; load the trained model with "
                  f"zooscope.load_model({str(out)!r}) (see {out / 'README.md'})")


@app.command("import")
def import_(
    dirs: Annotated[list[Path], typer.Argument(help="Hugging Face model directories.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The zoo file to create.")],
    as_epochs: Annotated[bool, typer.Option("--as-epochs", help="Treat the directories as "
                                            "consecutive epochs of one member.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    json_: JsonOption = False,
) -> None:
    """Build a zoo from existing Hugging Face checkpoints, so analyzers work on them.

    Example: zooscope zoo import run1/ run2/ run3/ --out imported.h5
    """
    from zooscope.errors import ZooFileError
    from zooscope.upkeep.imports import import_checkpoints

    if out.exists() and not force:
        raise ZooFileError(f"{out} already exists", hint="add --force to replace it")
    with reporter():
        imported = task("importing", total=len(dirs))
        n = import_checkpoints(dirs, out, as_epochs=as_epochs, on_checkpoint=imported.advance)
    if json_:
        print_json({"zoo": str(out), "checkpoints": n})
        return
    console.print(f"imported {n} checkpoints into {out}")
