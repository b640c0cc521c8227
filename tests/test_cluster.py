"""Zoos on a cluster: SLURM job arrays derive each task's shard and part file, shards are
balanced by estimated cost, and the parts merge into the one-process zoo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zooscope.config import parse_config
from zooscope.engine import member_costs, shard_members, slurm_shard
from zooscope.errors import ConfigError
from zooscope.zoo import Member

from .conftest import ROOT, TINY_CONFIG, cli_env, run_cli, write_config
from .test_generate import assert_same_weights


def scripts() -> list[str]:
    text = (ROOT / "docs" / "cluster.md").read_text()
    return [s for s in re.findall(r"```bash\n(.*?)```", text, re.S) if "#SBATCH" in s]


def sbatch_env(task: int | None, count: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, **cli_env(), **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    if task is not None:
        env.update(SLURM_ARRAY_JOB_ID="4242", SLURM_ARRAY_TASK_ID=str(task),
                   SLURM_ARRAY_TASK_COUNT=str(count), SLURM_ARRAY_TASK_MIN="0",
                   SLURM_ARRAY_TASK_MAX=str(count - 1), SLURM_ARRAY_TASK_STEP="1")
    return env


@pytest.mark.slow
def test_the_documented_array_merges_into_the_one_process_zoo(tiny_zoo: Path,
                                                               tmp_path: Path) -> None:
    generate, merge = scripts()[:2]
    (tmp_path / "generate.sbatch").write_text(generate)
    (tmp_path / "merge.sbatch").write_text(merge)
    config = write_config(tmp_path)
    for task in range(3):  # as SLURM would start them, here one after another
        done = subprocess.run(["bash", "generate.sbatch"], cwd=tmp_path, capture_output=True,
                              text=True, env=sbatch_env(task, 3, CONFIG=str(config),
                                                        OUT="tiny.h5"), timeout=900)
        assert done.returncode == 0, done.stderr
        assert f"shard {task}/3 (SLURM array task): writing tiny.part{task}of3.h5" in done.stderr
    parts = sorted(p.name for p in tmp_path.glob("tiny.part*of3.h5"))
    assert parts == ["tiny.part0of3.h5", "tiny.part1of3.h5", "tiny.part2of3.h5"]
    assert not (tmp_path / "tiny.h5").exists()
    # A requeued task finds its part complete and changes nothing.
    again = subprocess.run(["bash", "generate.sbatch"], cwd=tmp_path, capture_output=True,
                           text=True, env=sbatch_env(1, 3, CONFIG=str(config), OUT="tiny.h5"))
    assert again.returncode == 0, again.stderr
    done = subprocess.run(["bash", "merge.sbatch"], cwd=tmp_path, capture_output=True, text=True,
                          env=sbatch_env(None, 0, OUT="tiny.h5"), timeout=900)
    assert done.returncode == 0, done.stderr
    assert "ok: 12 checkpoints" in done.stdout
    assert_same_weights(tiny_zoo, tmp_path / "tiny.h5")


def test_slurm_variables_give_the_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert slurm_shard() is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")
    assert slurm_shard() == (3, 4)  # --array=1-7:2 → tasks 1, 3, 5, 7
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID=4 is not one of 4 array tasks"):
        slurm_shard()


def test_shard_auto_outside_an_array_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}
    done = run_cli("generate", str(write_config(tmp_path)), "--shard", "auto", env=env)
    assert done.returncode == 2
    assert "--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT" in \
        " ".join(done.stderr.split())


def member(name: str, cost_key: str, checkpoints_from: str | None = None) -> Member:
    lineage = {"checkpoints_from": checkpoints_from} if checkpoints_from else None
    return Member(id=name, factors={"backbone": cost_key}, lineage=lineage)


def test_shards_are_balanced_by_cost_not_position() -> None:
    """Six backbones of very different sizes, three members each: by position each of six
    shards would get one backbone; balanced, the loads are near equal."""
    sizes = {"distil": 66, "base": 110, "roberta": 125, "electra": 14, "deberta": 184,
             "large": 355}
    members = [member(f"{b}{k}", b) for b in sizes for k in range(3)]
    costs = {m.id: float(sizes[m.factors["backbone"]]) for m in members}

    def loads(shards: list[list[Member]]) -> list[float]:
        return [sum(costs[m.id] for m in s) for s in shards]

    by_position = [shard_members(members, i, 6) for i in range(6)]
    balanced = [shard_members(members, i, 6, costs) for i in range(6)]
    assert sorted(m.id for s in balanced for m in s) == sorted(m.id for m in members)
    assert max(loads(by_position)) / min(loads(by_position)) > 20
    total = sum(costs.values())
    assert max(loads(balanced)) <= total / 6 + max(sizes.values())  # LPT's bound
    assert max(loads(balanced)) / min(loads(balanced)) < 1.3
    # A member sharing a longer member's epochs goes with it.
    chained = [*members, member("short", "large", checkpoints_from="large0")]
    for i in range(6):
        shard = {m.id for m in shard_members(chained, i, 6, {**costs, "short": 1.0})}
        assert ("short" in shard) == ("large0" in shard)


def test_member_costs_follow_backbone_size_examples_and_epochs(tmp_path: Path) -> None:
    text = TINY_CONFIG.replace("[grid]\n", "[grid]\nepochs = [1, 3]\n").replace(
        "epochs = 2\n", "")
    cfg = parse_config(text, tmp_path / "c.toml")

    class Task:
        info = {"sizes": {"train": 320}}

    members = cfg.members()
    costs = member_costs(cfg, Task(), members)  # type: ignore[arg-type]
    import torch
    from transformers import AutoConfig

    from zooscope.kit.models import base_model

    sc = cfg.scratch
    config = AutoConfig.for_model(sc["model_type"], vocab_size=sc["vocab_size"],
                                  hidden_size=sc["hidden_size"],
                                  num_hidden_layers=sc["num_hidden_layers"],
                                  num_attention_heads=sc["num_attention_heads"],
                                  intermediate_size=sc["intermediate_size"])
    with torch.device("meta"):
        params = sum(p.numel() for p in base_model(config).parameters())
    for m in members:
        assert costs[m.id] == params * 320 * cfg.epochs_of(m)


def test_linear_schedule_is_transformers_linear_warmup(tmp_path: Path) -> None:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from zooscope.engine.loop import lr_factor

    text = TINY_CONFIG.replace("[train]\n", '[train]\nlr_schedule = "linear"\nwarmup_ratio = 0.2\n')
    cfg = parse_config(text, tmp_path / "c.toml")
    m = cfg.members()[0]
    total = 37
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, int(0.2 * total), total)
    for step in range(total):
        assert lr_factor(cfg, m, step, total) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    constant = parse_config(TINY_CONFIG, tmp_path / "d.toml")
    assert lr_factor(constant, constant.members()[0], 5, total) == 1.0


def test_a_schedule_factor_trains_and_is_recorded(tmp_path: Path) -> None:
    """lr_schedule as a grid factor: both schedules train and differ; epochs are not
    shared under a decaying rate."""
    import zooscope

    text = TINY_CONFIG.replace("[grid]\n", '[grid]\nlr_schedule = ["constant", "linear"]\n'
                               ).replace("learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]"
                               ).replace("seeds = [0, 1]", "seeds = [0]")
    config = write_config(tmp_path, text)
    out = tmp_path / "s.h5"
    done = run_cli("generate", str(config), "--out", str(out))
    assert done.returncode == 0, done.stderr
    with zooscope.open_zoo(out) as zoo:
        by = {m.factors["lr_schedule"]: m for m in zoo.members()}
        assert set(by) == {"constant", "linear"}
        a = zoo.state_dict(by["constant"], 2)
        b = zoo.state_dict(by["linear"], 2)
        assert any(not torch_equal(a[k], b[k]) for k in a)
    epochs = parse_config(TINY_CONFIG.replace("epochs = 2\n", "").replace(
        "[grid]\n", "[grid]\nepochs = [1, 2]\n").replace(
        "[train]\n", '[train]\nlr_schedule = "linear"\n'), tmp_path / "e.toml")
    assert not any((m.lineage or {}).get("checkpoints_from") for m in epochs.members())


def torch_equal(a, b) -> bool:  # noqa: ANN001
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.slow
def test_a_killed_linear_run_resumes_bitwise(tmp_path: Path) -> None:
    import signal

    import zooscope
    from zooscope.config import load_config
    from zooscope.engine import build_zoo

    from .test_generate import ONE_MEMBER, _start, _wait_for_checkpoints

    config = write_config(tmp_path, ONE_MEMBER.replace("[train]\n", '[train]\nlr_schedule = "linear"\n'
                                                       'warmup_ratio = 0.3\n'), "one.toml")
    build_zoo(load_config(config), tmp_path / "straight.h5")
    out = tmp_path / "killed.h5"
    proc = _start(config, out)
    _wait_for_checkpoints(out, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with zooscope.open_zoo(out) as zoo:
        assert 2 <= len(zoo.checkpoints()) < 4
    resumed = run_cli("generate", str(config), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "straight.h5", out)


def test_tensorboard_logs_every_epoch_of_every_member(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import zooscope

    text = TINY_CONFIG.replace("[train]\n", '[train]\nlog_with = "tensorboard"\n').replace(
        "seeds = [0, 1]", "seeds = [0]")
    out = tmp_path / "tb.h5"
    done = run_cli("generate", str(write_config(tmp_path, text)), "--out", str(out))
    assert done.returncode == 0, done.stderr
    with zooscope.open_zoo(out) as zoo:
        members = zoo.members()
        expect = {(c.member, c.epoch): c.metrics for c in zoo.checkpoints()}
    for m in members:
        events = EventAccumulator(str(tmp_path / "tb_logs" / m.id))
        events.Reload()
        for name in ("validation_loss", "validation_accuracy", "test_accuracy", "train_loss"):
            scalars = {e.step: e.value for e in events.Scalars(name)}
            assert sorted(scalars) == [0, 1, 2]
            for epoch, value in scalars.items():
                assert value == pytest.approx(expect[(m.id, epoch)][name], rel=1e-6)


def test_unknown_or_missing_trackers_are_refused_before_training(tmp_path: Path) -> None:
    text = TINY_CONFIG.replace("[train]\n", '[train]\nlog_with = ["tensorbord"]\n')
    done = run_cli("generate", str(write_config(tmp_path, text)), "--out", str(tmp_path / "x.h5"))
    assert done.returncode == 1
    assert "log_with 'tensorbord' is not one of tensorboard, wandb" in done.stderr
    assert not (tmp_path / "x.h5").exists()


def test_accumulated_micro_batches_equal_one_large_batch(tmp_path: Path) -> None:
    """4 micro-batches of 8 accumulated give the weights of batches of 32 (to float
    rounding), with no dropout; clipping changes them, and both enter member ids."""
    import zooscope
    from zooscope.config import load_config
    from zooscope.engine import build_zoo

    base = (TINY_CONFIG.replace("seeds = [0, 1]", "seeds = [0]")
            .replace("learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]")
            .replace("[train]\n", "[train]\ndropout = 0.0\n"))
    whole = write_config(tmp_path, base, "whole.toml")
    parts = write_config(tmp_path, base.replace("batch_size = 32", "batch_size = 8\n"
                                                "gradient_accumulation_steps = 4"), "parts.toml")
    clipped = write_config(tmp_path, base.replace("[train]\n", "[train]\nmax_grad_norm = 0.05\n"),
                           "clipped.toml")
    for config in (whole, parts, clipped):
        build_zoo(load_config(config), tmp_path / f"{config.stem}.h5")
    with zooscope.open_zoo(tmp_path / "whole.h5") as a, \
            zooscope.open_zoo(tmp_path / "parts.h5") as b, \
            zooscope.open_zoo(tmp_path / "clipped.h5") as c:
        assert a.members()[0].id != b.members()[0].id != c.members()[0].id
        assert [x.step for x in a.checkpoints()] == [x.step for x in b.checkpoints()]
        sa = a.state_dict(a.members()[0], 2)
        sb = b.state_dict(b.members()[0], 2)
        sc = c.state_dict(c.members()[0], 2)
    import torch

    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(sa[n], sc[n]) for n in sa)


def test_auto_batch_size_picks_the_largest_that_fits_and_records_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches over 16 rows fail as out-of-memory would: 16 is chosen, trained with and
    recorded; a resumed run keeps it without probing."""
    import zooscope
    from zooscope import registry
    from zooscope.config import load_config
    from zooscope.engine import build_zoo

    generator = type(registry.get_generator("sst2"))
    real = generator.train_loss
    tried: list[int] = []

    def small_memory(self, model, batch):  # noqa: ANN001, ANN202
        rows = batch["input_ids"].shape[0]
        tried.append(rows)
        if rows > 16:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, model, batch)

    monkeypatch.setattr(generator, "train_loss", small_memory)
    text = (TINY_CONFIG.replace("batch_size = 32", 'batch_size = "auto"\nmax_batch_size = 100')
            .replace("seeds = [0, 1]", "seeds = [0]"))
    config = write_config(tmp_path, text)
    out = tmp_path / "auto.h5"
    build_zoo(load_config(config), out)
    assert tried[:3] == [64, 32, 16]  # 100 → 64, halved until it fits
    with zooscope.open_zoo(out) as zoo:
        assert zoo.info["extra"] == {"auto_batch_size": 16}
        steps = {c.epoch: c.step for c in zoo.checkpoints()}
        card = zoo.card()
    train = 320  # 400 synthetic rows, 80 % for training
    assert steps[1] == -(-train // 16)
    assert "- **batch size**: 16, the largest that fitted" in card
    tried.clear()
    build_zoo(load_config(config), out, resume=True)
    assert max(tried, default=0) <= 16  # no probe: the recorded size is kept


def test_auto_batch_size_never_exceeds_the_training_examples(tmp_path: Path) -> None:
    """max_batch_size far above the data: the largest power of two up to the 320
    training examples is tried first, and a batch larger than the data is never recorded
    as the largest that fitted."""
    import zooscope
    from zooscope.config import load_config
    from zooscope.engine import build_zoo

    text = (TINY_CONFIG.replace("batch_size = 32", 'batch_size = "auto"\nmax_batch_size = 1048576')
            .replace("seeds = [0, 1]", "seeds = [0]").replace("epochs = 2", "epochs = 1")
            .replace("learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]"))
    out = tmp_path / "auto.h5"
    build_zoo(load_config(write_config(tmp_path, text)), out)
    with zooscope.open_zoo(out) as zoo:
        assert zoo.info["extra"] == {"auto_batch_size": 256}  # 320 training examples


def test_a_batch_size_that_is_neither_a_number_nor_auto_is_refused(tmp_path: Path) -> None:
    text = TINY_CONFIG.replace("batch_size = 32", 'batch_size = "large"')
    done = run_cli("generate", str(write_config(tmp_path, text)), "--dry-run")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == \
        "error: [train] batch_size must be an integer or \"auto\", not 'large'"


@pytest.mark.slow
def test_merge_copies_stored_chunks_without_decoding(tiny_zoo: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards merge by copying each stored chunk; no tensor is decoded (state_dict would
    be), and the merged zoo validates (every tensor's digest recomputed) and equals the
    one-process zoo."""
    from zooscope.stores.h5reader import HDF5Zoo
    from zooscope.upkeep.merge import merge_zoos
    from zooscope.upkeep.validate import validate_zoo

    config = write_config(tmp_path)
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}.h5"
        done = run_cli("generate", str(config), "--out", str(part), "--shard", f"{i}/2")
        assert done.returncode == 0, done.stderr
        parts.append(part)

    def no_decoding(self, member, epoch):  # noqa: ANN001, ANN202
        raise AssertionError("merge decoded a tensor")

    monkeypatch.setattr(HDF5Zoo, "state_dict", no_decoding)
    merged = tmp_path / "merged.h5"
    assert merge_zoos(parts, merged) == 12
    monkeypatch.undo()
    report = validate_zoo(merged)
    assert report.ok, report.problems
    assert_same_weights(tiny_zoo, merged)
    assert merged.stat().st_size <= tiny_zoo.stat().st_size * 1.05


def test_dry_run_shows_an_array_tasks_share(tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}
    env.update(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="3", COLUMNS="200")
    done = run_cli("generate", str(write_config(tmp_path)), "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert "zoo 'tiny', shard 1/3: 1 member of 4, 25% of the estimated training" in \
        " ".join(done.stdout.split())  # the title wraps to the table's width
