"""Generation end to end: the CLI, determinism, resume, shards, two processes, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import zooscope
from zooscope.config import load_config, parse_config
from zooscope.engine import build_zoo, member_list, shard_members

from .conftest import TINY_CONFIG, cli_env, run_cli, write_config

ONE_MEMBER = (TINY_CONFIG.replace("seeds = [0, 1]", "seeds = [0]")
              .replace("learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]")
              .replace("epochs = 2", "epochs = 3"))


def assert_same_weights(a: Path, b: Path, exact: bool = True, atol: float = 1e-6) -> None:
    with zooscope.open_zoo(a) as za, zooscope.open_zoo(b) as zb:
        ca = {(c.member, c.epoch): c for c in za.checkpoints()}
        cb = {(c.member, c.epoch): c for c in zb.checkpoints()}
        assert ca.keys() == cb.keys()
        for member, epoch in ca:
            sa, sb = za.state_dict(member, epoch), zb.state_dict(member, epoch)
            for name in sa:
                if exact:
                    assert torch.equal(sa[name], sb[name]), (member, epoch, name)
                else:
                    torch.testing.assert_close(sa[name], sb[name], rtol=1e-5, atol=atol)
            assert ca[(member, epoch)].metrics == pytest.approx(cb[(member, epoch)].metrics,
                                                                abs=1e-5)


def test_tiny_zoo_has_every_member_epoch_and_split(tiny_zoo: Path) -> None:
    result = run_cli("zoo", "ls", str(tiny_zoo), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 4
    cfg = load_config(write_config(tiny_zoo.parent))
    assert sorted(r["id"] for r in rows) == sorted(m.id for m in member_list(cfg))
    for row in rows:
        assert row["status"] == "complete" and row["epochs"] == [0, 1, 2]
        for split in ("train", "validation", "test"):
            assert 0.0 <= row[f"{split}_accuracy"] <= 1.0 and row[f"{split}_loss"] > 0
    with zooscope.open_zoo(tiny_zoo) as zoo:
        info = zoo.info
        assert info["data"]["sizes"] == {"train": 320, "validation": 40, "test": 40}
        assert set(info["data"]["fingerprints"]) == {"train", "validation", "test"}
        assert zoo.config_text == TINY_CONFIG
        # Stored test predictions reproduce the stored test accuracy.
        labels = zoo.test_labels()
        for c in zoo.checkpoints():
            acc = (zoo.predictions([c])[0] == labels).mean()
            assert acc == pytest.approx(c.metrics["test_accuracy"], abs=1e-6)
        # Epoch 0 is the same backbone for every member: stored once.
        name = "backbone.embeddings.word_embeddings.weight"
        epoch0 = zoo.tensor(name, zoo.checkpoints(epochs=[0]))
        assert all(np.array_equal(epoch0[0], e) for e in epoch0[1:])


def test_the_model_rebuilt_from_the_zoo_reproduces_stored_predictions(tiny_zoo: Path) -> None:
    from zooscope.kit.data import load_rows
    from zooscope.kit.finetune import collate
    from zooscope.kit.models import rebuild

    cfg = load_config(write_config(tiny_zoo.parent))
    with zooscope.open_zoo(tiny_zoo) as zoo:
        c = zoo.checkpoints()[-1]
        model, tokenizer = rebuild(zoo, c.member, c.epoch)
        texts, _, _ = load_rows(cfg.data["source"], None, "label")
        ids = [int(i.removeprefix("row-")) for i in zoo.record().test.ids]
        enc = tokenizer([texts[i] for i in ids], truncation=True, max_length=32)["input_ids"]
        with torch.no_grad():
            batch = collate({"input_ids": enc}, list(range(len(enc))), tokenizer.pad_token_id)
            _, logits = model(**batch)
        np.testing.assert_array_equal(logits.argmax(-1).numpy(), zoo.predictions([c])[0])


def test_same_member_spec_gives_identical_weights(tmp_path: Path) -> None:
    cfg = parse_config(ONE_MEMBER.replace("epochs = 3", "epochs = 1"))
    build_zoo(cfg, tmp_path / "a.h5")
    build_zoo(cfg, tmp_path / "b.h5")
    assert_same_weights(tmp_path / "a.h5", tmp_path / "b.h5")


def test_max_eval_examples_cuts_validation_and_test(tmp_path: Path) -> None:
    text = ONE_MEMBER.replace("epochs = 3", "epochs = 1").replace(
        "num_threads = 1", "num_threads = 1\nmax_train_examples = 50\nmax_eval_examples = 7")
    build_zoo(parse_config(text), tmp_path / "cut.h5")
    with zooscope.open_zoo(tmp_path / "cut.h5") as zoo:
        labels = zoo.test_labels()
        assert labels is not None and len(labels) == 7
        assert zoo.predictions().shape == (2, 7)  # epochs 0 and 1
        last = zoo.checkpoints()[-1]
        hits = (zoo.predictions([last])[0] == labels).sum()
        assert last.metrics["test_accuracy"] == pytest.approx(hits / 7)
        assert zoo.info["data"]["sizes"] == {"train": 50, "validation": 7, "test": 7}
    bad = run_cli("generate", str(write_config(tmp_path, text.replace("= 7", "= -1"), "bad.toml")),
                  "--out", str(tmp_path / "bad.h5"))
    assert bad.returncode == 1 and not (tmp_path / "bad.h5").exists()
    assert "error: [train] max_eval_examples must be ≥ 0 (0 means all)" in bad.stderr


def test_existing_zoo_is_not_overwritten(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "z.h5"
    out.write_bytes(b"precious")
    result = run_cli("generate", str(tiny_config), "--out", str(out))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {out} already exists",
                                          "hint: add --resume to continue it, or --force to replace it"]
    assert out.read_bytes() == b"precious"


def test_dry_run_trains_nothing(tiny_config: Path, tmp_path: Path) -> None:
    result = run_cli("generate", str(tiny_config), "--dry-run", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["members"]) == 4 and data["checkpoints"] == 12
    assert data["estimated_bytes"] > 0
    assert not list(tmp_path.glob("*.h5"))


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = cli_env()
    return subprocess.Popen([sys.executable, "-m", "zooscope", "generate", str(config), "--out",
                             str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for_checkpoints(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"generate ended early: {proc.stderr.read() if proc.stderr else ''}")
        if out.exists():
            try:
                with zooscope.open_zoo(out) as zoo:
                    if len(zoo.checkpoints()) >= n:
                        return
            except zooscope.ZooFileError:
                pass  # the file is being created
        time.sleep(0.05)
    pytest.fail("no checkpoints appeared")


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path: Path) -> None:
    config = write_config(tmp_path, ONE_MEMBER, "one.toml")
    build_zoo(load_config(config), tmp_path / "straight.h5")
    out = tmp_path / "killed.h5"
    proc = _start(config, out)
    _wait_for_checkpoints(out, 2, proc)  # epochs 0 and 1 committed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with zooscope.open_zoo(out) as zoo:
        done = len(zoo.checkpoints())
        assert 2 <= done < 4
    resumed = run_cli("generate", str(config), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "straight.h5", out)
    assert not out.with_name(out.name + ".state").exists()  # dropped once complete


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_resume_hint(tmp_path: Path) -> None:
    config = write_config(tmp_path, ONE_MEMBER, "one.toml")
    out = tmp_path / "int.h5"
    proc = _start(config, out)
    _wait_for_checkpoints(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [ln for ln in stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert lines[0].startswith("error: interrupted in epoch")
    assert lines[1] == f"hint: continue with: zooscope generate {config} --out {out} --resume"
    assert "Traceback" not in stderr
    resumed = run_cli("generate", str(config), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with zooscope.open_zoo(out) as zoo:
        assert [c.epoch for c in zoo.checkpoints()] == [0, 1, 2, 3]


def test_shards_split_like_accelerate() -> None:
    from accelerate import PartialState

    members = list(range(7))
    assert [shard_members(members, i, 2) for i in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert sum((shard_members(members, i, 3) for i in range(3)), []) == members
    state = PartialState(cpu=True)  # one process: the whole list, as shard 0 of 1
    with state.split_between_processes(members) as mine:
        assert list(mine) == shard_members(members, 0, 1)


@pytest.mark.slow
def test_shards_merge_into_the_same_zoo(tiny_zoo: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}.h5"
        result = run_cli("generate", str(config), "--out", str(part), "--shard", f"{i}/2")
        assert result.returncode == 0, result.stderr
        parts.append(part)
    merged = tmp_path / "merged.h5"
    result = run_cli("zoo", "merge", *map(str, parts), "--out", str(merged))
    assert result.returncode == 0, result.stderr
    assert_same_weights(tiny_zoo, merged)
    # Overlapping shards are refused and leave nothing behind.
    again = run_cli("zoo", "merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "x.h5"))
    assert again.returncode == 1
    assert "has checkpoints in both" in again.stderr
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow
def test_two_processes_produce_the_same_members(tiny_zoo: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = tmp_path / "two.h5"
    env = cli_env()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "-m", "zooscope", "generate", str(config), "--out", str(out), "--json"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(tiny_zoo, out, exact=False)
    assert not list(tmp_path.glob("two.part*"))  # shards merged and removed
    summary = json.loads(result.stdout)  # only the main process prints
    assert len(summary["members"]) == 4


@pytest.mark.slow
def test_ddp_strategy_trains_one_member_over_two_processes(tmp_path: Path) -> None:
    text = (ONE_MEMBER.replace("epochs = 3", 'epochs = 2\nstrategy = "ddp"')
            .replace("[train]\n", "[train]\ndropout = 0.0\n"))  # dropout masks differ per process
    config = write_config(tmp_path, text, "ddp.toml")
    build_zoo(load_config(config), tmp_path / "one.h5")
    out = tmp_path / "ddp.h5"
    env = cli_env()
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "-m", "zooscope", "generate", str(config), "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Each process saw half of every batch; DDP's averaged gradients equal the whole batch's
    # up to the order of floating-point sums.
    assert_same_weights(tmp_path / "one.h5", out, exact=False, atol=1e-5)
    assert not list(tmp_path.glob("ddp.part*"))


# -- random search -----------------------------------------------------------------------------
SEARCH_CONFIG = TINY_CONFIG.replace(
    "[grid]\nlearning_rate = [3e-4, 1e-3]\n",
    '[search]\nsamples = 3\nseed = 2\nlearning_rate = "log_uniform(1e-4, 3e-3)"\n'
    'batch_size = "choice([16, 32])"\n')


def plain_draws(samples: int, seed: int) -> list[dict[str, object]]:
    """The documented draws, by hand: factors alphabetically, reals to 4 digits."""
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(samples):
        batch = [16, 32][rng.integers(2)]
        lr = np.exp(np.log(1e-4) + (np.log(3e-3) - np.log(1e-4)) * rng.random())
        points.append({"batch_size": batch, "learning_rate": float(f"{lr:.4g}")})
    return points


def test_search_draws_are_reproducible_within_range_and_in_every_grid_cell() -> None:
    cfg = parse_config(SEARCH_CONFIG)
    points = plain_draws(3, 2)
    assert [{k: m.factors[k] for k in ("batch_size", "learning_rate")}
            for m in cfg.members()] == [p for p in points for _ in (0, 1)]
    assert [m.factors["seed"] for m in cfg.members()] == [0, 1] * 3
    assert all(1e-4 <= p["learning_rate"] <= 3e-3 for p in points)
    assert len({p["learning_rate"] for p in points}) == 3
    # The same config draws the same members; another seed other points.
    assert [m.id for m in parse_config(SEARCH_CONFIG).members()] == \
        [m.id for m in cfg.members()]
    other = parse_config(SEARCH_CONFIG.replace("seed = 2", "seed = 3")).members()
    assert {m.factors["learning_rate"] for m in other}.isdisjoint(
        {p["learning_rate"] for p in points})
    # With a grid, every cell gets the same points.
    both = parse_config(SEARCH_CONFIG.replace("[search]", "[grid]\nweight_decay = [0.0, 0.01]\n\n"
                                              "[search]")).members()
    assert len(both) == 12
    for wd in (0.0, 0.01):
        cell = [m for m in both if m.factors["weight_decay"] == wd]
        assert [m.factors["learning_rate"] for m in cell] == \
            [p["learning_rate"] for p in points for _ in (0, 1)]


def test_search_zoo_stores_drawn_factors_and_predict_regresses_them(tmp_path: Path) -> None:
    """Built, the zoo holds the drawn values as factors; the dry run lists them; predict
    regresses the continuous learning rate and classifies only the choice."""
    from zooscope import registry
    from zooscope.services.results import run_analysis

    config = write_config(tmp_path, SEARCH_CONFIG, "search.toml")
    dry = run_cli("generate", str(config), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)["members"]
    points = plain_draws(3, 2)
    assert [{k: r[k] for k in ("batch_size", "learning_rate")} for r in listed] == \
        [p for p in points for _ in (0, 1)]
    out = tmp_path / "search.h5"
    build_zoo(load_config(config), out)
    with zooscope.open_zoo(out) as zoo:
        assert [(m.id, m.factors) for m in zoo.members()] == \
            [(r["id"], {k: r[k] for k in ("backbone", "batch_size", "learning_rate", "seed")})
             for r in listed]
    for name in ("weightstats", "predict"):
        result = run_analysis(out, registry.get_analyzer(name), [], None, None, tmp_path / name,
                              force=False)
    scores = result.tables["scores"]
    rows = set(zip(scores["target"], scores["metric"], strict=True))
    assert ("learning_rate", "r2") in rows and ("batch_size", "accuracy") in rows
    assert ("learning_rate", "accuracy") not in rows


def test_resume_of_a_complete_zoo_leaves_its_bytes_and_mtime(tiny_zoo: Path,
                                                              tmp_path: Path) -> None:
    import hashlib
    import os
    import shutil

    zoo = tmp_path / "tiny.h5"
    shutil.copy2(tiny_zoo, zoo)
    config = write_config(tmp_path)
    os.utime(zoo, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = hashlib.sha256(zoo.read_bytes()).hexdigest()
    done = run_cli("generate", str(config), "--out", str(zoo), "--resume")
    assert done.returncode == 0, done.stderr
    assert zoo.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert hashlib.sha256(zoo.read_bytes()).hexdigest() == before
    assert "0 members trained, 4 already complete" in " ".join(done.stderr.split())
