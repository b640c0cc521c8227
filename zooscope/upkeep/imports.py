"""``zoo import``: Hugging Face model folders as a zoo (one member each, or the epochs of one).

They read through the ``Zoo`` interface and write through a store's writer; the
file format is the store's business.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zooscope.access import store_for
from zooscope.errors import ZooFileError
from zooscope.extras import require
from zooscope.record import ZooRecord
from zooscope.store import memory_budget
from zooscope.upkeep.outputs import check_output_path
from zooscope.zoo import COMPLETE, Architecture, Member

#: A Hugging Face config.json is a few kilobytes; a larger one is not a model config.
MAX_HF_CONFIG = 2**24


def _check_fits(d: Path, config: Any) -> None:
    """Count the parameters a config describes (on the meta device, no memory) and refuse
    a model that would not fit, before transformers allocates it."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        parameters = sum(p.numel() for p in AutoModel.from_config(config).parameters())
    if 4 * parameters > memory_budget():
        raise ZooFileError(f"cannot load {d}: its config.json describes {parameters:,} "
                           f"parameters ({4 * parameters / 2**30:,.1f} GiB), more than this "
                           "machine's memory allows")


def import_checkpoints(dirs: Sequence[Path], out: Path, as_epochs: bool = False,
                       on_checkpoint: Callable[[], None] = lambda: None) -> int:
    """Build a zoo from Hugging Face model directories; returns the number of checkpoints.

    Each directory becomes a member at epoch 0, or, with ``as_epochs``, the
    directories are consecutive epochs of one member (intermediate checkpoints).
    """
    require("transformers", "train", "importing models")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from zooscope.kit.models import HEAD_FILE, architecture_files

    if not dirs:
        raise ZooFileError("nothing to import: give at least one model directory")
    check_output_path(out)
    loaded = []
    head: dict[str, Any]
    for d in dirs:
        if not Path(d, "config.json").exists():
            raise ZooFileError(f"{d} is not a Hugging Face model directory (no config.json)")
        config_file = Path(d, "config.json")
        if not config_file.is_file() or config_file.stat().st_size > MAX_HF_CONFIG:
            raise ZooFileError(f"{config_file} is not a model config (a regular file of at most "
                               f"{MAX_HF_CONFIG:,} bytes)")
        if Path(d, HEAD_FILE).exists():
            # A zooscope export: backbone and trained head become one model again.
            from zooscope.loader import load_model

            model, tokenizer = load_model(d)
            head = json.loads(Path(d, HEAD_FILE).read_text())
            loaded.append((Path(d), model, tokenizer, head))
            continue
        try:
            config = AutoConfig.from_pretrained(str(d))
            _check_fits(d, config)
            model, info = AutoModel.from_pretrained(str(d), config=config, output_loading_info=True)
            head = {"kind": "base-model"}
            if any(k.startswith("pooler.") for k in info["missing_keys"]):
                # The checkpoint has no pooler: build without one rather than store a
                # randomly initialised layer as if it were trained.
                model = AutoModel.from_pretrained(str(d), config=config, add_pooling_layer=False)
                head["add_pooling_layer"] = False
            tokenizer = AutoTokenizer.from_pretrained(str(d))
        except (OSError, ValueError, TypeError) as exc:
            raise ZooFileError(f"cannot load {d}: {str(exc).splitlines()[0]}") from None
        loaded.append((Path(d), model, tokenizer, head))
    if as_epochs:
        members = [Member.from_factors({"source": str(dirs[0]), "seed": 0})]
    else:
        members = [Member.from_factors({"source": str(d), "seed": 0}) for d in dirs]
    config_text = "# imported from Hugging Face model directories\n" + "".join(
        f"# {d}\n" for d in dirs)
    record = ZooRecord(name=out.stem, config_text=config_text, generator="import",
                       generator_version="1", metric_columns=[], data={
                           "source": [str(d) for d in dirs]})
    store = store_for(out)
    count = 0
    with store.create(out, record, members) as writer:
        for k, (d, model, tok, head) in enumerate(loaded):
            member = members[0] if as_epochs else members[k]
            state = model.state_dict()
            backbone = getattr(model, "backbone", model)
            arch = Architecture(
                key=d.name, files=architecture_files(backbone, tok, head),
                shapes={n: tuple(v.shape) for n, v in state.items()},
                dtypes={n: str(v.dtype).removeprefix("torch.") for n, v in state.items()
                        if not v.is_floating_point()})
            writer.ensure_architecture(arch)
            writer.start_member(member, arch)  # type: ignore[arg-type]
            writer.write_checkpoint(member, k if as_epochs else 0, 0, 0.0, state, {}, None)
            count += 1
            on_checkpoint()
            if not as_epochs or k == len(loaded) - 1:
                writer.set_status(member, COMPLETE)
    return count
