"""``zooscope generate``: train a zoo from a config."""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Annotated

import typer

from zooscope.commands.common import console, err_console, fmt, print_json, progress, rich_table


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise typer.BadParameter(f"{value!r}: need 0 ≤ I < N")
    return i, n


def generate(
    config: Annotated[Path, typer.Argument(help="A zoo config (.toml).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The zoo file to write "
                                              "(default: NAME.h5 from the config).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted zoo.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing zoo.")] = False,
    shard: Annotated[str | None, typer.Option("--shard", help="Train only shard I of N "
                                              "(SLURM arrays), e.g. 0/4.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show members, checkpoints and "
                                          "the zoo's size; train nothing.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train every member of a zoo config and record each epoch into one zoo file.

    Example: zooscope generate zoos/demo.toml --out demo.h5
    """
    from zooscope.config import load_config

    shard_t = parse_shard(shard)
    cfg = load_config(config)
    target = out or Path(f"{cfg.name}.h5")
    if dry_run:
        _dry_run(cfg, shard_t, json_)
        return
    from zooscope.training import Interrupted
    from zooscope.training import generate as run_generate

    try:
        with progress() as bars:
            result = run_generate(cfg, target, resume=resume, force=force, shard=shard_t,
                                  progress=bars, log=lambda s: None)
    except Interrupted as exc:
        exc.hint = f"continue with: zooscope generate {config} --out {target} --resume"
        raise
    if result.main:
        _summary(result, target, json_)


def _dry_run(cfg, shard, json_: bool) -> None:  # type: ignore[no-untyped-def]
    from zooscope import registry
    from zooscope.training import shard_members

    generator = registry.get_generator(cfg.generator)
    generator.validate(cfg)
    members = cfg.members()
    if shard is not None:
        members = shard_members(members, *shard)
    checkpoints = sum(cfg.epochs_of(m) + 1 for m in members)
    estimate = getattr(generator, "estimate_bytes", None)
    size = estimate(cfg, members) if estimate else None
    rows = [{"id": m.id, **m.factors, "epochs": cfg.epochs_of(m)} for m in members]
    if json_:
        print_json({"members": rows, "checkpoints": checkpoints, "estimated_bytes": size})
        return
    console.print(rich_table(rows, title=f"zoo {cfg.name!r}: {len(members)} members"))
    console.print(f"{checkpoints} checkpoints (epoch 0 included)")
    if size is not None:
        console.print(f"estimated size on disk: {size / 2**20:,.1f} MiB "
                      f"({cfg.store['dtype']}, identical tensors stored once)")


def _summary(result, target: Path, json_: bool) -> None:  # type: ignore[no-untyped-def]
    rows = result.members
    if json_:
        print_json({"zoo": str(target), "trained": result.trained, "skipped": result.skipped,
                    "members": rows})
        return
    if rows:
        metric = next((k for k in ("test_accuracy", "test_f1", "test_loss") if k in rows[0]), None)
        cols = [c for c in rows[0] if c not in ("backbone",) and not c.startswith(
            ("train_", "validation_"))]
        console.print(rich_table(rows, title=f"members trained into {target}", columns=cols))
        if metric:
            console.print(f"mean {metric}: {fmt(mean(r[metric] for r in rows))} over "
                          f"{len(rows)} members")
    err_console.print(f"{result.trained} members trained, {result.skipped} already complete; "
                      f"zoo: {target}")
