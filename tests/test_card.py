"""The zoo card: stored in every new zoo, written by `zooscope zoo card`, readable alone."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import zooscope
from zooscope.errors import ConfigError, DataError
from zooscope.services.card import zoo_card
from zooscope.stores.hdf5 import HDF5Store
from zooscope.zoo import hub_revision

from .conftest import TINY_CONFIG, run_cli, write_config

LICENSED = TINY_CONFIG.replace('epochs = 2\n', 'epochs = 1\nlicense = "cc-by-4.0"\n'
                               'data_license = "cc0-1.0"\n'
                               'description = "Two learning rates, two seeds."\n')


@pytest.fixture(scope="module")
def licensed_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("card")
    done = run_cli("generate", str(write_config(folder, LICENSED)), "--out",
                   str(folder / "licensed.h5"))
    assert done.returncode == 0, done.stderr
    return folder / "licensed.h5"


def front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def test_every_new_zoo_carries_its_card(licensed_zoo: Path) -> None:
    with zooscope.open_zoo(licensed_zoo) as zoo:
        stored = zoo.card()
        fresh = zoo_card(zoo)
        members = zoo.members()
        final = {m.id: zoo.checkpoints(m)[-1].metrics["test_accuracy"] for m in members}
        versions = zoo.info["versions"]
    assert stored == fresh  # stored when generation finished, final metrics included
    meta = front_matter(stored)
    assert meta["license"] == "cc-by-4.0"
    assert meta["size_categories"] == ["n<1K"]
    assert {"zooscope", "model-zoo", "sst2"} <= set(meta["tags"])
    assert "Two learning rates, two seeds." in stored
    assert "- **embedded data** (the test split's texts and labels in `/data`): cc0-1.0" in stored
    assert "- **members**: 4 (4 complete)" in stored
    for lr in (0.0003, 0.001):
        values = [final[m.id] for m in members if m.factors["learning_rate"] == lr]
        mean, sd = np.mean(values), np.std(values, ddof=1)
        assert f"| {lr:g} | 2 | {mean:.4f} ± {sd:.4f} |" in stored
    for key in ("python", "torch", "transformers", "datasets", "tokenizers", "zooscope"):
        assert f"| {key} | {versions[key]} |" in stored


def test_the_card_reads_the_zoo_with_plain_h5py(licensed_zoo: Path, tmp_path: Path) -> None:
    shutil.copy(licensed_zoo, tmp_path / "licensed.h5")
    with zooscope.open_zoo(licensed_zoo) as zoo:
        card = zoo.card()
        name = zoo.tensor_names()[-1]
        expect = zoo.tensor(name)
    code = re.findall(r"```python\n(.*?)```", card, re.S)[-1]
    assert "zooscope" not in code
    names: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "card", "exec"), names)
    finally:
        os.chdir(cwd)
    np.testing.assert_array_equal(names["stack"], expect)


def test_zoo_card_writes_readme(licensed_zoo: Path, tmp_path: Path) -> None:
    zoo = tmp_path / "licensed.h5"
    shutil.copy(licensed_zoo, zoo)
    done = run_cli("zoo", "card", str(zoo))
    assert done.returncode == 0, done.stderr
    with zooscope.open_zoo(zoo) as z:
        assert (tmp_path / "README.md").read_text() == z.card()
    again = run_cli("zoo", "card", str(zoo))
    assert again.returncode == 1
    assert again.stderr.splitlines()[0] == f"error: {tmp_path / 'README.md'} exists"
    printed = run_cli("zoo", "card", str(zoo), "--out", "-")
    assert printed.returncode == 0 and printed.stdout == (tmp_path / "README.md").read_text()
    assert run_cli("zoo", "card", str(zoo), "--force").returncode == 0


def test_a_card_is_added_to_an_older_zoo_and_replaced_in_place(zoo_copy: Path) -> None:
    with h5py.File(zoo_copy, "r+") as f:
        del f["card"]
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert zoo.card() is None
    writer = HDF5Store().resume(zoo_copy)
    writer.write_card("a long first card " * 100)
    writer.write_card("short")
    writer.close()
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert zoo.card() == "short"
    done = run_cli("zoo", "validate", str(zoo_copy))
    assert done.returncode == 0, done.stderr


def test_revisions_pin_hub_backbones_and_datasets(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_revision("bert-base-uncased@86b5e09") == ("bert-base-uncased", "86b5e09")
    assert hub_revision("google/boolq@v1.0") == ("google/boolq", "v1.0")
    assert hub_revision("bert-base-uncased") == ("bert-base-uncased", None)
    local = tmp_path / "model@2"
    local.mkdir()
    assert hub_revision(str(local)) == (str(local), None)
    assert hub_revision("zoo://a@b.h5#epoch=last")[1] is None

    import datasets
    import transformers

    from zooscope.kit.data import load_table
    from zooscope.kit.models import load_backbone

    seen: dict = {}

    def no_hub(name: str, **kwargs: object) -> None:
        seen[name] = kwargs
        raise OSError("no hub here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    with pytest.raises(ConfigError, match="cannot load the backbone 'bert-base-uncased@86b5e09'"):
        load_backbone("bert-base-uncased@86b5e09", 0.1)
    assert seen["bert-base-uncased"] == {"revision": "86b5e09"}
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(DataError):
        load_table("google/boolq@v1.0:validation")
    assert seen["google/boolq"] == {"split": "validation", "revision": "v1.0"}


def test_the_card_states_the_scratch_model_as_built_and_epochs_as_a_setting(
        tiny_zoo: Path) -> None:
    """The vocabulary is the trained tokenizer's (smaller than the 200 asked for), and
    the epochs are a training setting, not a factor of the grid."""
    import json

    with zooscope.open_zoo(tiny_zoo) as zoo:
        built = json.loads(zoo.model_files(zoo.members()[0])["config.json"])["vocab_size"]
        card = zoo_card(zoo)
    assert built < 200
    assert f"vocab_size {built}," in card and "vocab_size 200" not in card
    grid = card.split("## Grid", 1)[1].split("##", 1)[0]
    training = card.split("## Training", 1)[1].split("##", 1)[0]
    assert "| epochs |" not in grid and "| epochs | 2 |" in training
