"""Whole-file operations: validate, export to Hugging Face, import from it."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import zooscope
from zooscope.upkeep.export import export_checkpoint
from zooscope.upkeep.imports import import_checkpoints

from .conftest import run_cli
from .test_store import flip_byte_in


def test_validate_passes_on_a_generated_zoo(tiny_zoo: Path) -> None:
    result = run_cli("zoo", "validate", str(tiny_zoo))
    assert result.returncode == 0, result.stderr
    assert "ok: 12 checkpoints" in result.stdout


def test_validate_names_a_flipped_byte(zoo_copy: Path) -> None:
    name = "backbone.encoder.layer.0.attention.self.query.weight"
    flip_byte_in(zoo_copy, f"architectures/a0/tensors/{name}", row=2)
    result = run_cli("zoo", "validate", str(zoo_copy), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["problems"] and all(name in p for p in report["problems"])
    assert "does not match its stored digest" in report["problems"][0]
    assert result.stderr.strip().splitlines()[-2].startswith(f"error: {zoo_copy}: ")


def test_validate_finds_nan_weights_and_shapes_off_the_config(zoo_copy: Path) -> None:
    with h5py.File(zoo_copy, "r+") as f:
        ds = f["architectures/a0/tensors/head.0.bias"]
        ds[1] = np.full(ds.shape[1:], np.nan, dtype=ds.dtype)
        files = f["architectures/a0/files"]
        config = json.loads(bytes(files["config.json"][()]))
        config["intermediate_size"] = 99
        del files["config.json"]
        files["config.json"] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    result = run_cli("zoo", "validate", str(zoo_copy), "--json")
    assert result.returncode == 1
    problems = json.loads(result.stdout)["problems"]
    assert any("head.0.bias" in p and "NaN or Inf" in p for p in problems)
    assert any("intermediate.dense.weight" in p and "the config implies (99, 32)" in p
               for p in problems)


def test_export_loads_with_from_pretrained_and_gives_identical_logits(
        tiny_zoo: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from zooscope.kit.models import rebuild

    with zooscope.open_zoo(tiny_zoo) as zoo:
        c = zoo.checkpoints()[-1]
        model, _ = rebuild(zoo, c.member, c.epoch)
    out = tmp_path / "hf"
    result = run_cli("zoo", "export", str(tiny_zoo), "--member", c.member, "--epoch",
                     str(c.epoch), "--out", str(out))
    assert result.returncode == 0, result.stderr
    backbone = AutoModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    head = json.loads((out / "zooscope_head.json").read_text())
    head_weights = load_file(out / "zooscope_head.safetensors")
    batch = tokenizer(["the film was not good", "a really lovely score"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).last_hidden_state[:, 0]
        h = torch.relu(hidden @ head_weights["0.weight"].T + head_weights["0.bias"])
        logits = h @ head_weights["3.weight"].T + head_weights["3.bias"]
        _, expected = model(batch["input_ids"], batch["attention_mask"])
    assert head["kind"] == "sequence-classification" and head["num_labels"] == 2
    assert torch.equal(logits, expected)
    provenance = json.loads((out / "zooscope_export.json").read_text())
    assert provenance["member"] == c.member and provenance["epoch"] == c.epoch
    # A non-empty target is refused.
    again = run_cli("zoo", "export", str(tiny_zoo), "--member", c.member, "--epoch", "0",
                    "--out", str(out))
    assert again.returncode == 1 and "is not an empty directory" in again.stderr


def test_import_builds_a_zoo_from_model_directories(tiny_zoo: Path, tmp_path: Path) -> None:

    with zooscope.open_zoo(tiny_zoo) as zoo:
        cps = zoo.checkpoints(zoo.members()[0])
    dirs = []
    for c in cps:
        d = tmp_path / f"epoch{c.epoch}"
        export_checkpoint(tiny_zoo, c.member, c.epoch, d)
        dirs.append(d)
    out = tmp_path / "imported.h5"
    assert import_checkpoints(dirs, out) == 3
    with zooscope.open_zoo(out) as zoo, zooscope.open_zoo(tiny_zoo) as source:
        assert len(zoo.members()) == 3
        for m, c in zip(zoo.members(), cps, strict=True):
            # A zooscope export comes back whole: backbone and trained head.
            want = source.state_dict(c.member, c.epoch)
            got = zoo.state_dict(m, 0)
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want)
    epochs = tmp_path / "epochs.h5"
    result = run_cli("zoo", "import", *map(str, dirs), "--out", str(epochs), "--as-epochs")
    assert result.returncode == 0, result.stderr
    with zooscope.open_zoo(epochs) as zoo:
        assert [c.epoch for c in zoo.checkpoints()] == [0, 1, 2]
        # The frozen-in-time embeddings of epoch 0 differ from later ones; the zoo
        # still validates and analyzers read one tensor across its epochs.
        name = "backbone.embeddings.word_embeddings.weight"
        assert zoo.tensor(name).shape[0] == 3
    assert run_cli("zoo", "validate", str(epochs)).returncode == 0


def test_import_refuses_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    result = run_cli("zoo", "import", str(tmp_path), "--out", str(tmp_path / "z.h5"))
    assert result.returncode == 1
    assert "is not a Hugging Face model directory (no config.json)" in result.stderr
    assert not (tmp_path / "z.h5").exists()


@pytest.mark.parametrize("member", ["../../evil", "nope"])
def test_export_of_an_unknown_member(tiny_zoo: Path, tmp_path: Path, member: str) -> None:
    result = run_cli("zoo", "export", str(tiny_zoo), "--member", member, "--epoch", "0",
                     "--out", str(tmp_path / "x"))
    assert result.returncode == 1
    assert f"no member {member!r}" in result.stderr


def reevaluate_from_docs(path: Path, member: int = 0) -> tuple[list[int], np.ndarray]:
    """Run docs/format.md's re-evaluation example in a fresh interpreter on ``path`` for
    the member at index ``member``; returns its recomputed predictions and logits (and
    checks it imported no zooscope)."""
    import re
    import subprocess
    import sys

    from .conftest import ROOT, cli_env

    text = (ROOT / "docs" / "format.md").read_text()
    code = re.search(r"## Re-evaluating a member from the file alone.*?```python\n(.*?)```",
                     text, re.S).group(1)
    assert "member = 0  #" in code
    code = code.replace("member = 0  #", f"member = {member}  #")
    script = (f"path = {str(path)!r}\n" + code +
              "\nimport sys\nassert not any(m.split('.')[0] == 'zooscope' for m in sys.modules)"
              "\nprint(json.dumps({'recomputed': recomputed.tolist(), 'agreement': agreement,"
              " 'logits': logits.tolist()}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=cli_env(), timeout=600, cwd=path.parent)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["agreement"] == 1.0
    return result["recomputed"], np.array(result["logits"])


def test_documented_reevaluation_reproduces_stored_predictions(tiny_zoo: Path) -> None:
    from zooscope.kit.models import rebuild
    from zooscope.kit.synthetic import synthetic_sentiment

    with zooscope.open_zoo(tiny_zoo) as zoo:
        member = zoo.members()[1]
        last = zoo.checkpoints(member)[-1]
        stored = zoo.predictions([last])[0]
        header = zoo.record().test
        model, tokenizer = rebuild(zoo, member, last.epoch)
    recomputed, logits = reevaluate_from_docs(tiny_zoo, 1)
    assert recomputed == stored.tolist()
    # The inputs stored are the test split's texts, in the order of the labels.
    rows = synthetic_sentiment(400)
    assert header.texts == [rows[int(i.removeprefix("row-"))][0] for i in header.ids]
    assert header.text_pairs is None
    np.testing.assert_array_equal(
        header.labels, [rows[int(i.removeprefix("row-"))][1] for i in header.ids])
    # The head the document spells out gives zooscope's own model's logits.
    with torch.no_grad():
        for text, row in zip(header.texts[:8], logits, strict=False):
            enc = tokenizer([text], truncation=True, max_length=32, return_tensors="pt")
            _, own = model(enc["input_ids"], enc["attention_mask"])
            np.testing.assert_allclose(row, own[0].numpy(), rtol=1e-4, atol=1e-5)


def test_member_ids_follow_the_documented_recipe(tiny_zoo: Path) -> None:
    """docs/format.md's id recipe, written out by hand for the tiny config."""
    import hashlib

    with h5py.File(tiny_zoo, "r") as f:
        ids = list(f["members/id"].asstr()[()])
        factors = [json.loads(s) for s in f["members/factors"].asstr()[()]]
        data = json.loads(f.attrs["data"])
    scratch = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
               "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 200,
               "max_position_embeddings": 128, "seed": 0}
    recipe = {
        "generator": "sst2", "generator_version": "1", "epochs": 2,
        "data": {"split": {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 0},
                 "train": data["fingerprints"]["train"]},
        "train": {"batch_size": 32, "optimizer": "adamw", "dropout": 0.1,
                  "lr_schedule": "constant", "max_seq_len": 32,
                  "head": {"hidden": 1, "activation": "relu"}, "freeze_backbone": False,
                  "max_train_examples": 0, "mixed_precision": "no"},
    }
    for mid, fs in zip(ids, factors, strict=True):
        payload = {"factors": {**fs, "backbone": {"scratch": scratch}}, "recipe": recipe}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        assert mid == "m" + hashlib.sha256(text.encode()).hexdigest()[:11]
