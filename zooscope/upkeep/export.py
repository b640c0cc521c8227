"""``zoo export``: one checkpoint as a Hugging Face model folder, with its head and a model card.

They read through the ``Zoo`` interface and write through a store's writer; the
file format is the store's business.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from zooscope.access import open_zoo
from zooscope.errors import ZooFileError
from zooscope.extras import require
from zooscope.files import sync_folder
from zooscope.upkeep.outputs import check_output_path
from zooscope.zoo import check_safe_name


def export_checkpoint(zoo_path: Path, member_id: str, epoch: int, out_dir: Path,
                      force: bool = False) -> list[Path]:
    """Write one checkpoint as a Hugging Face model directory; returns the files written.

    ``config.json``, ``model.safetensors`` and the tokenizer files load with
    ``AutoModel.from_pretrained`` (the backbone); a classifier's trained head goes
    beside them in ``zooscope_head.safetensors`` with its description in
    ``zooscope_head.json``, and ``zooscope.load_model(DIR)`` puts the two together.
    A ``README.md`` says so; ``zooscope_export.json`` records where it came from.
    """
    require("torch", "train", "exporting a model")
    from zooscope.kit.models import head_description

    out_dir = Path(out_dir)
    check_output_path(out_dir, directory=True)
    # Written into a hidden folder beside the target first, which says "incomplete"
    # until it is renamed into place; a killed export's is removed by the next one.
    partial = out_dir.with_name(f".{out_dir.name}.exporting")
    if partial.is_dir() and not partial.is_symlink():
        shutil.rmtree(partial)
    elif os.path.lexists(partial):
        partial.unlink()
    if os.path.lexists(out_dir) and (not out_dir.is_dir() or out_dir.is_symlink()
                                     or (any(out_dir.iterdir()) and not force)):
        raise ZooFileError(f"{out_dir} exists and is not an empty directory",
                           hint="choose a new directory, or add --force to overwrite its files")
    with open_zoo(zoo_path) as zoo:
        member = zoo.member(member_id)
        files = zoo.model_files(member)
        if epoch not in [c.epoch for c in zoo.checkpoints(member)]:
            raise ZooFileError(f"member {member_id} has no checkpoint at epoch {epoch}",
                               hint="`zooscope zoo ls` shows each member's epochs")
        head = head_description(files, str(zoo_path))
        state = zoo.state_dict(member, epoch)
        factors = dict(member.factors)
        zoo_name = zoo.info.get("name")
    for name in files:
        check_safe_name(name, "file")
    try:
        partial.mkdir(parents=True)
        written = _write_export(partial, files, head, state, factors, zoo_path, zoo_name,
                                member_id, epoch)
        if not os.path.lexists(out_dir) or not any(out_dir.iterdir()):
            if os.path.lexists(out_dir):
                out_dir.rmdir()
            os.replace(partial, out_dir)
        else:  # --force over an earlier export: each file replaced whole
            for path in written:
                os.replace(path, out_dir / path.name)
            partial.rmdir()
        sync_folder(out_dir.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return [out_dir / path.name for path in written]


def _write_export(root: Path, files: dict[str, bytes], head: dict[str, Any],
                  state: dict[str, Any], factors: dict[str, Any], zoo_path: Path,
                  zoo_name: Any, member_id: str, epoch: int) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    from zooscope.loader import HEAD_WEIGHTS, PROVENANCE, checkpoint_digest

    written: list[Path] = []

    def tensors(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: (v.float() if v.dtype == torch.bfloat16 else v).contiguous()
                for k, v in state.items() if k.startswith(prefix)}

    for name, content in files.items():
        (root / name).write_bytes(content)
        written.append(root / name)
    has_head = head["kind"] in ("sequence-classification", "question-answering")
    if has_head:
        backbone = tensors(head.get("backbone_prefix", "backbone."))
        save_file(tensors(head.get("head_prefix", "head.")), str(root / HEAD_WEIGHTS))
        written.append(root / HEAD_WEIGHTS)
    elif head["kind"] == "text-to-text":  # a whole seq2seq model: transformers loads it as is
        backbone = tensors(head.get("backbone_prefix", "backbone."))
    else:
        backbone = tensors("")
    save_file(backbone, str(root / "model.safetensors"), metadata={"format": "pt"})
    written.append(root / "model.safetensors")
    # The zoo's file name and the checkpoint's content, not this machine's paths: the
    # export is meant to be shared, and the digest finds the checkpoint in any copy.
    provenance = {"zoo": Path(zoo_path).name, "zoo_name": zoo_name, "member": member_id,
                  "epoch": epoch, "factors": factors, "head": head["kind"],
                  "checkpoint_sha256": checkpoint_digest(state)}
    (root / PROVENANCE).write_text(json.dumps(provenance, indent=1))
    written.append(root / PROVENANCE)
    (root / "README.md").write_text(_model_card(provenance, head, has_head))
    written.append(root / "README.md")
    for path in written:
        # Shared model files are readable by everyone, as pip and the hub leave them.
        path.chmod(0o644)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    return written


def _model_card(provenance: dict[str, Any], head: dict[str, Any], has_head: bool) -> str:
    factors = "\n".join(f"| {k} | {v} |" for k, v in provenance["factors"].items())
    if has_head:
        use = f"""\
The trained task head ({head["kind"]}, {"an MLP with one hidden layer" if head.get("hidden")
else "one linear layer"} on {head.get("input", "the backbone's output")}) is in
`zooscope_head.safetensors`, described by `zooscope_head.json`. Load the whole model,
backbone and head, with zooscope; it gives the predictions stored in the zoo:

```python
import torch
import zooscope

model, tokenizer = zooscope.load_model("path/to/this/directory")
batch = tokenizer(["a text to classify"], return_tensors="pt")
with torch.no_grad():
    {"_, logits = model(batch['input_ids'], batch['attention_mask'])"
     if head["kind"] == "sequence-classification" else
     "_, start_logits, end_logits = model(batch['input_ids'], batch['attention_mask'])"}
```

`AutoModel.from_pretrained` on this directory loads the backbone alone (the head is
not part of any transformers class here). `AutoModelForSequenceClassification` would
load it too, but with a new, untrained classifier: its predictions are not this model's.
"""
    elif head["kind"] == "text-to-text":
        words = " or ".join(f'"{w}"' for w in head.get("words", []))
        use = f"""\
A T5 that answers by writing the label's word ({words}; any other text is none of the
labels). `AutoModelForSeq2SeqLM.from_pretrained("path/to/this/directory")` loads it, and
greedy generation gives the answers stored in the zoo:

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model = AutoModelForSeq2SeqLM.from_pretrained("path/to/this/directory").eval()
tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
batch = tokenizer(["a question"], ["its passage"], return_tensors="pt")
out = model.generate(**batch, max_new_tokens={head.get("max_new_tokens", 4)}, do_sample=False, num_beams=1)
print(tokenizer.batch_decode(out, skip_special_tokens=True))
```

`zooscope.load_model("path/to/this/directory")` loads it too.
"""
    else:
        use = """\
This checkpoint has no task head: `AutoModel.from_pretrained("path/to/this/directory")`
(or `AutoModelForMaskedLM` for a masked-LM checkpoint) loads it, and so does
`zooscope.load_model("path/to/this/directory")`.
"""
    return f"""\
# {provenance["zoo_name"] or provenance["zoo"]}: member {provenance["member"]}, epoch {provenance["epoch"]}

One checkpoint of a model zoo built with zooscope, exported from `{provenance["zoo"]}`.

| factor | value |
|---|---|
{factors}

## Use

{use}
## Provenance

`zooscope_export.json` names the zoo file, the member and the epoch, and holds
`checkpoint_sha256`: sha256 over every tensor of the checkpoint in name order (name,
NumPy dtype string, shape list, then the raw bytes), which matches the same
checkpoint read from any copy of the zoo (`zooscope.loader.checkpoint_digest`).
"""
