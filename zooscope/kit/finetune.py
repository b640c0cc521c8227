"""What fine-tuning generators share: the backbone loaded once per zoo, a member's model
and training batches, padded batches, and the architecture record a member stores.

A generator of its own (``docs/plugins.md``) builds on these and on ``zooscope.kit.data``;
it never needs to import another generator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from zooscope.generator import MemberSetup, TaskData

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zooscope.config import ZooConfig
    from zooscope.zoo import Architecture, Member


def cached_backbone(cfg: ZooConfig, task: TaskData, name: str,
                    texts: Callable[[], Iterable[str]],
                    prepare: Callable[[Any, Any], Any], kind: str = "base") -> tuple[Any, Any, Any]:
    """The backbone ``name`` (its model and tokenizer) and what ``prepare(model, tokenizer)``
    makes of the data (the encoded splits), loaded once per zoo and kept in ``task.cache``.

    ``texts()`` gives the training texts, read only where a tokenizer is trained
    ([scratch] backbones); ``kind`` is ``"base"``, ``"masked-lm"`` or ``"text-to-text"``
    (``zooscope.kit.models.load_backbone``)."""
    key = f"backbone:{name}"
    if key not in task.cache:
        model, tok = backbone_for(cfg, name, texts(), kind=kind)
        task.cache[key] = (model, tok, prepare(model, tok))
    return task.cache[key]


def backbone_for(cfg: ZooConfig, name: str, texts: Iterable[str], kind: str = "base"
                 ) -> tuple[nn.Module, Any]:
    """A member's starting model and tokenizer: built from [scratch], a zoo checkpoint
    (``zoo://``), a local directory or a hub id. ``kind`` is ``"base"`` (the encoder)
    or ``"masked-lm"`` (with its pre-training head)."""
    from zooscope.kit.models import load_backbone, scratch_backbone
    from zooscope.lineage import is_zoo_ref, load_from_zoo

    dropout = float(cfg.train["dropout"])
    max_len = int(cfg.train["max_seq_len"])
    if name == "scratch":
        return scratch_backbone(cfg.scratch, texts, dropout, max_len, kind)
    if is_zoo_ref(name):
        base = cfg.path.parent if cfg.path is not None else None
        return load_from_zoo(name, base, dropout, kind,
                             expected=cfg.lineage_of(name).get("checkpoint"))
    return load_backbone(cfg.resolve(name), dropout, kind)


def finetune_setup(cfg: ZooConfig, member: Member, name: str, base: torch.nn.Module, tok: Any,
                   encoded: dict[str, Any], make_model: Callable[..., torch.nn.Module],
                   targets: Callable[[dict[str, Any], list[int]], dict[str, torch.Tensor]],
                   ) -> MemberSetup:
    """A fine-tuning member: a copy of the backbone under a head seeded by the member's
    seed (backbone frozen where the config says), and shuffled padded batches of the
    encoded training split with the targets the task takes."""
    import torch

    backbone = copy.deepcopy(base)
    torch.manual_seed(int(member.factors["seed"]))  # the head's initialisation
    model = make_model(backbone, int(cfg.train["head"].get("hidden", 1)),
                       float(cfg.train["dropout"]))
    if cfg.train["freeze_backbone"]:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    arch = architecture_record(name, model, backbone, tok,
                               {**model.head_spec(), "max_seq_len": int(cfg.train["max_seq_len"])})
    pad = int(tok.pad_token_id or 0)
    train = encoded["train"]
    batch_size = cfg.batch_size_of(member)
    n = len(train["input_ids"])

    def batches(generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield collate(train, idx, pad, **targets(train, idx))

    return MemberSetup(model=model, architecture=arch, train_batches=batches,
                       steps_per_epoch=(n + batch_size - 1) // batch_size,
                       state={"encoded": encoded, "pad": pad, "tokenizer": tok})


def architecture_record(name: str, model: torch.nn.Module, backbone: torch.nn.Module, tok: Any,
                        head: dict[str, Any]) -> Architecture:
    """The architecture a member's model has: stored files, tensor shapes, integer dtypes.

    ``head`` is written as the head file (``zooscope_head.json``): the head's kind and
    shape, and ``max_seq_len`` where inputs are truncated, since a reader
    re-evaluating a member must truncate the same way."""
    from zooscope.kit.models import architecture_files
    from zooscope.zoo import Architecture

    state = model.state_dict()
    return Architecture(
        key=name, files=architecture_files(backbone, tok, head),
        shapes={k: tuple(v.shape) for k, v in state.items()},
        dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in state.items()
                if not v.is_floating_point()},
    )


def collate(encoded: dict[str, Any], idx: list[int], pad: int,
            **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of an encoded split, padded to the batch's longest (never to max_seq_len)."""
    import torch

    from zooscope.kit.data import take_rows

    sequences = take_rows(encoded["input_ids"], idx)
    kinds = take_rows(encoded["token_type_ids"], idx) if "token_type_ids" in encoded else None
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    types = torch.zeros((len(sequences), width), dtype=torch.long) \
        if "token_type_ids" in encoded else None
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
        if types is not None:
            types[row, : len(seq)] = torch.as_tensor(kinds[row], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": mask}
    if types is not None:
        out["token_type_ids"] = types
    return {**out, **extra}
