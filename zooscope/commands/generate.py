"""``zooscope generate``: train a zoo from a config."""

from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Annotated

import typer

from zooscope.commands.common import (
    QuietOption,
    console,
    err_console,
    fmt,
    grid_order,
    order_factors,
    print_json,
    print_prose,
    reporter,
    rich_table,
)

#: Members the dry run's table shows; --json lists every one.
DRY_RUN_ROWS = 200


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not I/N, e.g. 0/4") from None
    from zooscope.environment import MAX_SHARDS

    if n < 1 or not 0 <= i < n:
        raise typer.BadParameter(f"{value!r}: need 0 ≤ I < N")
    if n > MAX_SHARDS:
        raise typer.BadParameter(f"{value!r}: at most {MAX_SHARDS:,} shards")
    return i, n


def generate(
    config: Annotated[Path, typer.Argument(help="A zoo config (.toml).", show_default=False)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The zoo to write: a file "
                                              "(NAME.h5) or a folder of parts (NAME.zoo); "
                                              "default NAME.h5, NAME.zoo for a shard.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted zoo.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing zoo.")] = False,
    shard: Annotated[str | None, typer.Option("--shard", help="Train only shard I of N, "
                                              "balanced by estimated cost, e.g. 0/4; 'auto' "
                                              "(the default in a SLURM job array) takes it "
                                              "from SLURM_ARRAY_TASK_ID.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show members, checkpoints and "
                                          "the zoo's size; train nothing.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    overfit: Annotated[bool, typer.Option("--overfit", help="Sanity check instead: one member "
                                          "per backbone (smallest learning rate, batch size 1, "
                                          "no dropout) trained on 10 examples for 20 epochs "
                                          "must reach 100 % training accuracy. Writes no "
                                          "zoo.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Train every member of a zoo config and record each epoch into one zoo file.

    Example: zooscope generate zoos/demo.toml --out demo.h5
    """
    from zooscope.access import store_for
    from zooscope.config import load_config
    from zooscope.environment import slurm_shard

    from_slurm = shard == "auto" or (shard is None and slurm_shard() is not None)
    if from_slurm:
        shard_t = slurm_shard()
        if shard_t is None:
            raise typer.BadParameter("--shard auto needs SLURM_ARRAY_TASK_ID and "
                                     "SLURM_ARRAY_TASK_COUNT, as a SLURM job array sets them")
    else:
        shard_t = parse_shard(shard)
    if out is not None and shard_t is None and not (dry_run or overfit):
        _check_target(out, resume, force)  # before the config's checks import transformers
    cfg = load_config(config)
    # The tasks of an array write one zoo of parts (NAME.zoo) unless told otherwise.
    target = out or Path(f"{cfg.name}.zoo" if shard_t is not None else f"{cfg.name}.h5")
    store = store_for(target)
    if shard_t is not None and not store.parts and (from_slurm or out is None):
        # Every task of an array runs the same command: each writes its own file.
        target = store.shard_path(target, *shard_t)
    if shard_t is not None and not (dry_run or overfit or quiet):
        where = f"writing its parts into {target}" if store.parts else f"writing {target}"
        err_console.print(f"shard {shard_t[0]}/{shard_t[1]}"
                          f"{' (SLURM array task)' if from_slurm else ''}: {where}",
                          soft_wrap=True)
    if not (dry_run or overfit) and not (shard_t is not None and store.parts):
        _check_target(target, resume, force)
    if dry_run:
        _dry_run(cfg, shard_t, json_)
        return
    if overfit:
        _overfit(cfg, json_, quiet)
        return
    from zooscope.engine import DiskFull, Interrupted, build_zoo

    try:
        with reporter(quiet) as bars:
            result = build_zoo(cfg, target, resume=resume, force=force, shard=shard_t,
                               progress=bars, log=lambda s: None)
    except Interrupted as exc:
        exc.hint = f"continue with: zooscope generate {config} --out {target} --resume"
        raise
    except DiskFull as exc:
        exc.hint = (f"free some space, then continue with: zooscope generate {config} "
                    f"--out {target} --resume")
        raise
    if result.main:
        _summary(result, target, json_, quiet)


def _dry_run(cfg, shard, json_: bool) -> None:  # type: ignore[no-untyped-def]
    from zooscope import registry
    from zooscope.engine import member_costs, member_list, shard_members
    from zooscope.environment import hub_offline
    from zooscope.errors import DataError
    from zooscope.lineage import expand_parents

    generator = registry.generator_for(cfg)
    generator.validate(cfg)
    hub = sorted({str(f["backbone"]) for f in (m.factors for m in cfg.members())
                  if _is_hub_id(cfg, str(f.get("backbone", "scratch")))})
    # Asked first: offline, the data below is looked up in the cache without retries.
    source = str(cfg.data.get("source", ""))
    hub_data = not source.startswith("synthetic:") and _is_hub_id(cfg, source)
    offline = hub_offline() if hub or hub_data else None
    if offline and hub:
        err_console.print(f"note: the Hugging Face hub is offline ({offline}); the size "
                          f"estimate leaves out {', '.join(hub)} unless cached", soft_wrap=True)
    # Member ids cover the data's fingerprint, so the data is loaded (not tokenised).
    task = None
    try:
        task = generator.prepare(cfg)
        members = member_list(cfg, generator, task)
        with_ids = True
        if cfg.train["batch_size"] == "auto":
            err_console.print('note: member ids cover the batch size, which batch_size = '
                              '"auto" chooses when training starts; they are left out',
                              soft_wrap=True)
            with_ids = False
    except DataError as exc:
        if not offline:
            raise
        err_console.print(f"note: the data cannot be loaded offline ({exc}); member ids, "
                          "which cover its fingerprint, are left out", soft_wrap=True)
        expand_parents(cfg)
        members, with_ids = cfg.members(), False
    title = f"zoo {cfg.name!r}: {{}}"
    if shard is not None:
        costs = member_costs(cfg, task if with_ids else None, members)
        mine = shard_members(members, *shard, costs=costs)
        share = sum(costs[m.id] for m in mine) / max(sum(costs.values()), 1e-300)
        title = (f"zoo {cfg.name!r}, shard {shard[0]}/{shard[1]}: {{}} of {len(members)}, "
                 f"{share:.0%} of the estimated training")
        members = mine
    checkpoints = sum(cfg.epochs_of(m) + 1 for m in members)
    size = generator.estimate_bytes(cfg, members)
    ids = {m.id: m for m in members}
    order = cfg.factor_names
    rows = []
    trained_epochs = 0
    for m in members:
        source = (m.lineage or {}).get("checkpoints_from")
        row = {"id": m.id if with_ids else None, **order_factors(m.factors, order),
               "epochs": cfg.epochs_of(m)}
        if not with_ids and not json_:
            del row["id"]
        if source and not with_ids:
            # The ids are left out (they cover what is unknown yet): so is the source's,
            # which is named by what it is instead.
            row["checkpoints_from"] = (None if json_ else
                                       f"its {cfg.epochs_of(ids[source])}-epoch run"
                                       if source in ids else "")
        elif source:
            row["checkpoints_from"] = source if source in ids else ""
        if source not in ids:
            trained_epochs += cfg.epochs_of(m)
        rows.append(row)
    all_epochs = sum(cfg.epochs_of(m) for m in members)
    parts = None if size is None else -(-size // cfg.max_part_size)
    if json_:
        print_json({"members": rows, "checkpoints": checkpoints, "estimated_bytes": size,
                    "max_part_size": cfg.max_part_size, "estimated_parts": parts,
                    "epochs_trained": trained_epochs, "epochs_recorded": all_epochs})
        return
    # Rendering a table costs about 5 ms a row: a large grid shows its first rows.
    console.print(rich_table(rows[:DRY_RUN_ROWS], title=title.format(
        f"{len(members)} member{'' if len(members) == 1 else 's'}")))
    if len(rows) > DRY_RUN_ROWS:
        console.print(f"... and {len(rows) - DRY_RUN_ROWS:,} more members (--json lists all)")
    if cfg.search is not None:
        drawn = ", ".join(f"{k} ~ {d}" for k, d in cfg.search.factors.items())
        cells = " in each grid cell" if cfg.grid else ""
        console.print(f"random search: {cfg.search.samples} points (seed {cfg.search.seed})"
                      f"{cells}, each trained with every seed; {drawn}")
    console.print(f"{checkpoints} checkpoints (epoch 0 included)")
    if trained_epochs < all_epochs:
        console.print(f"{trained_epochs} of {all_epochs} member-epochs are trained; the rest are "
                      f"a longer run's checkpoints ({1 - trained_epochs / all_epochs:.0%} of the "
                      "training saved)")
    if size is not None:
        console.print(f"estimated size on disk: {size / 2**20:,.1f} MiB "
                      f"({cfg.store['dtype']}, identical tensors stored once)")
        if parts is not None and parts > 1:
            hub = "; the Hugging Face Hub takes at most 50 GB a file" if size > 50e9 else ""
            print_prose(f"that is more than [zoo] max_part_size ({cfg.max_part_size:,} bytes): "
                        f"--out {cfg.name}.zoo writes it as about {parts} parts{hub}")
    elif offline:
        console.print("estimated size on disk: unknown while the hub is offline")
    else:
        print_prose(f"estimated size on disk: unknown; the {cfg.generator} generator gives "
                    "no estimate before its models are built")


def _is_hub_id(cfg, name: str) -> bool:  # type: ignore[no-untyped-def]
    if name == "scratch" or name.startswith(("zoo://", "package:")):
        return False
    return not Path(cfg.resolve(name)).exists()


#: The overfit check: this many training examples, this many epochs (of one step per example).
OVERFIT_EXAMPLES, OVERFIT_EPOCHS = 10, 20


def _overfit(cfg, json_: bool, quiet: bool) -> None:  # type: ignore[no-untyped-def]
    import tempfile

    from zooscope import registry
    from zooscope.engine import build_zoo, final_metrics
    from zooscope.errors import ConfigError, ZooscopeError

    generator = registry.generator_for(cfg)
    if not generator.supports_overfit:
        raise ConfigError(f"--overfit is for fine-tuning generators; {cfg.generator!r} is not one")
    examples, epochs = OVERFIT_EXAMPLES, OVERFIT_EPOCHS
    rates = cfg.grid.get("learning_rate") or [m.factors["learning_rate"] for m in cfg.members()]
    cfg.grid = {"learning_rate": [min(rates)],
                "backbone": cfg.grid.get("backbone", [cfg.zoo["backbone"]])}
    cfg.search = None
    cfg.zoo.update(epochs=epochs, seeds=cfg.zoo["seeds"][:1], name=f"{cfg.name}-overfit")
    # One example per step gives 200 optimizer steps (the config's batch size of 32 would
    # give 20, too few for the demo's learning rate); without dropout the training
    # accuracy measured in eval mode is the one the optimizer drove. Only training
    # accuracy decides; the other splits are cut to as many examples.
    cfg.train.update(max_train_examples=examples, max_eval_examples=examples, eval_train=True,
                     share_epochs=False, batch_size=1, dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp, reporter(quiet) as bars:
        bars.split = "train"  # each epoch shows what the check judges
        path = Path(tmp) / "overfit.h5"
        build_zoo(cfg, path, progress=bars)
        rows = final_metrics(path)
    column = next((c for c in ("train_accuracy", "train_exact_match") if c in rows[0]), None)
    if column is None:
        raise ConfigError("--overfit needs a train_accuracy or train_exact_match metric")
    report = [{"backbone": r["backbone"], "learning_rate": r["learning_rate"], column: r[column],
               "passed": r[column] >= 1.0} for r in rows]
    if json_:
        print_json({"examples": examples, "epochs": epochs, "batch_size": 1,
                    "backbones": report})
    else:
        console.print(rich_table(report, title=f"overfit {examples} examples for {epochs} epochs"))
    failed = [r for r in report if not r["passed"]]
    if failed:
        raise ZooscopeError(
            f"{len(failed)} of {len(report)} backbones did not fit {examples} training examples "
            f"in {epochs} epochs ({column} {', '.join(fmt(r[column]) for r in failed)})",
            hint="a model that cannot memorise 10 examples points at a broken input pipeline, "
                 "head or learning rate")
    if not quiet:
        err_console.print(f"ok: every backbone fits {examples} examples ({column} = 1)")


def _check_target(target: Path, resume: bool, force: bool) -> None:
    """The common mistakes with the output, answered before torch and the data load;
    the engine checks the output fully."""
    from zooscope.errors import ConfigError, ZooFileError

    if resume and force:
        raise ConfigError("--resume and --force contradict each other")
    if target.exists() and not (resume or force):
        raise ZooFileError(f"{target} already exists",
                           hint="add --resume to continue it, or --force to replace it")


def _summary(result, target: Path, json_: bool, quiet: bool) -> None:  # type: ignore[no-untyped-def]
    from zooscope.access import open_zoo

    # Every complete member, not only those this run trained: a resumed zoo's mean
    # covers the whole zoo.
    with open_zoo(target) as zoo:
        order = grid_order(zoo.config_text)
        chosen = (zoo.info.get("extra") or {}).get("auto_batch_size")
        rows = []
        for m in zoo.members():
            cps = zoo.checkpoints(m)
            if m.status == "complete" and cps:
                rows.append({"id": m.id, **order_factors(m.factors, order), **cps[-1].metrics})
    if json_:
        print_json({"zoo": str(target), "trained": result.trained, "shared": result.shared,
                    "skipped": result.skipped,
                    "members": rows})
        return
    if rows:
        metric = next((k for k in ("test_accuracy", "test_f1", "test_loss") if k in rows[0]), None)
        cols = [c for c in rows[0] if c not in ("backbone",) and not c.startswith(
            ("train_", "validation_"))]
        console.print(rich_table(rows, title=f"complete members of {target}", columns=cols))
        if metric:
            console.print(f"mean {metric}: {fmt(mean(r[metric] for r in rows))} over "
                          f"{len(rows)} complete members")
    if not quiet:
        if chosen is not None:
            err_console.print(f'batch_size = "auto": trained with batches of {chosen}, the '
                              "largest that fitted")
        shared = f"{result.shared} shared a longer run's checkpoints, " if result.shared else ""
        err_console.print(f"{result.trained} members trained, {shared}{result.skipped} already "
                          f"complete; zoo: {target}")
