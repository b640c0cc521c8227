"""An exported checkpoint a person can use: one call loads the trained model, the files are
shareable, the model card says how, and import brings the head back into a zoo."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import zooscope
from zooscope.config import load_config
from zooscope.upkeep.export import export_checkpoint
from zooscope.upkeep.imports import import_checkpoints

from .conftest import run_cli, write_config


def _stored_test_inputs(tiny_zoo: Path, zoo: zooscope.zoo.Zoo) -> list[str]:
    from zooscope.kit.data import load_rows

    cfg = load_config(write_config(tiny_zoo.parent))
    texts, _, _ = load_rows(cfg.data["source"], None, "label")
    return [texts[int(i.removeprefix("row-"))] for i in zoo.record().test.ids]


def _predict(model: torch.nn.Module, tokenizer: object, texts: list[str]) -> np.ndarray:
    batch = tokenizer(texts, truncation=True, max_length=32, padding=True,  # type: ignore[operator]
                      return_tensors="pt")
    with torch.no_grad():
        _, logits = model(batch["input_ids"], batch["attention_mask"])
    return logits.argmax(-1).numpy()


def test_load_model_reproduces_stored_predictions_from_zoo_and_export(
        tiny_zoo: Path, tmp_path: Path) -> None:
    with zooscope.open_zoo(tiny_zoo) as zoo:
        texts = _stored_test_inputs(tiny_zoo, zoo)
        member = zoo.members()[1]
        cps = zoo.checkpoints(member)
        stored = {c.epoch: zoo.predictions([c])[0] for c in cps}
    out = tmp_path / "export"
    result = run_cli("zoo", "export", str(tiny_zoo), "--member", member.id, "--epoch", "1",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "zooscope.load_model(" in result.stdout
    np.testing.assert_array_equal(_predict(*zooscope.load_model(out), texts), stored[1])
    # From the zoo: the named epoch, and by default the last one.
    np.testing.assert_array_equal(
        _predict(*zooscope.load_model(tiny_zoo, member.id, 1), texts), stored[1])
    np.testing.assert_array_equal(
        _predict(*zooscope.load_model(tiny_zoo, member.id), texts), stored[max(stored)])
    with pytest.raises(zooscope.ZooFileError, match="holds 4 members: name one"):
        zooscope.load_model(tiny_zoo)
    with pytest.raises(zooscope.ZooFileError, match="no checkpoint at epoch 9"):
        zooscope.load_model(tiny_zoo, member.id, 9)


def test_export_is_shareable_and_says_how_to_load_it(tiny_zoo: Path, tmp_path: Path) -> None:
    from zooscope.loader import checkpoint_digest

    with zooscope.open_zoo(tiny_zoo) as zoo:
        c = zoo.checkpoints()[-1]
        digest = checkpoint_digest(zoo.state_dict(c.member, c.epoch))
    out = tmp_path / "export"
    files = export_checkpoint(tiny_zoo, c.member, c.epoch, out)
    assert sorted(p.name for p in files) == sorted(p.name for p in out.iterdir())
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    for path in out.iterdir():
        text = path.read_bytes()
        assert str(tiny_zoo.parent).encode() not in text, path.name  # no absolute path
    provenance = json.loads((out / "zooscope_export.json").read_text())
    assert provenance["zoo"] == tiny_zoo.name and provenance["member"] == c.member
    assert provenance["checkpoint_sha256"] == digest and len(digest) == 64
    card = (out / "README.md").read_text()
    assert "zooscope.load_model(" in card and "zooscope_head.safetensors" in card
    assert f"member {c.member}, epoch {c.epoch}" in card
    # The head's tensors under their own names, as docs/index.md says: the zoo's prefix
    # is dropped in the file and put back by load_model.
    from safetensors.numpy import load_file

    head = json.loads((out / "zooscope_head.json").read_text())
    with zooscope.open_zoo(tiny_zoo) as zoo:
        state = zoo.state_dict(c.member, c.epoch)
    saved = load_file(str(out / "zooscope_head.safetensors"))
    assert sorted(saved) == sorted(k[len(head["head_prefix"]):] for k in state
                                   if k.startswith(head["head_prefix"]))
    assert sorted(saved)[0] == "0.bias"


def test_export_then_import_keeps_the_head(tiny_zoo: Path, tmp_path: Path) -> None:
    with zooscope.open_zoo(tiny_zoo) as zoo:
        c = zoo.checkpoints()[-1]
        original = zoo.state_dict(c.member, c.epoch)
        texts = _stored_test_inputs(tiny_zoo, zoo)
        stored = zoo.predictions([c])[0]
    export_checkpoint(tiny_zoo, c.member, c.epoch, tmp_path / "e")
    out = tmp_path / "imported.h5"
    assert import_checkpoints([tmp_path / "e"], out) == 1
    with zooscope.open_zoo(out) as zoo:
        member = zoo.members()[0]
        state = zoo.state_dict(member, 0)
        assert state.keys() == original.keys()
        assert all(torch.equal(state[k], original[k]) for k in original)
    np.testing.assert_array_equal(_predict(*zooscope.load_model(out), texts), stored)
