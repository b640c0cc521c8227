"""The models a zoo holds: a Hugging Face backbone plus a task head, and how to rebuild them.

A zoo stores the files this module needs (``config.json``, ``zooscope_head.json``,
tokenizer files) so any checkpoint can be rebuilt with no hub and no generator code.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zooscope.errors import ConfigError, ZooFileError

if TYPE_CHECKING:
    from zooscope.zoo import Member, Zoo

HEAD_FILE = "zooscope_head.json"
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                 "attention_dropout")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "vocab.json", "merges.txt")


def mlp_head(width: int, outputs: int, hidden: int, dropout: float) -> nn.Sequential:
    """The task head: Linear(h, h) → ReLU → dropout → Linear(h, outputs), or one Linear."""
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


class SequenceClassifier(nn.Module):
    """[CLS] → Linear(h, h) → ReLU → dropout → Linear(h, labels) on a transformer backbone."""

    def __init__(self, backbone: nn.Module, num_labels: int, hidden: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = mlp_head(backbone.config.hidden_size, num_labels, hidden, dropout)
        self.num_labels = num_labels
        self._takes_token_types = uses_token_types(backbone)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state[:, 0]
        logits = self.head(hidden)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return loss, logits

    def head_spec(self) -> dict[str, Any]:
        return {"kind": "sequence-classification", "num_labels": self.num_labels,
                "hidden": int(len(self.head) > 1), "activation": "relu",
                "backbone_prefix": "backbone.", "head_prefix": "head.",
                "input": "first token ([CLS]) of last_hidden_state"}


class QuestionAnswerer(nn.Module):
    """Every token → Linear(h, h) → ReLU → dropout → Linear(h, 2): start and end logits."""

    def __init__(self, backbone: nn.Module, hidden: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = mlp_head(backbone.config.hidden_size, 2, hidden, dropout)
        self._takes_token_types = uses_token_types(backbone)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        logits = self.head(self.backbone(**kwargs).last_hidden_state)
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (nn.functional.cross_entropy(start, start_positions)
                    + nn.functional.cross_entropy(end, end_positions)) / 2
        return loss, start, end

    def head_spec(self) -> dict[str, Any]:
        return {"kind": "question-answering", "hidden": int(len(self.head) > 1),
                "activation": "relu", "backbone_prefix": "backbone.", "head_prefix": "head.",
                "input": "every token of last_hidden_state; outputs start and end logits"}


def uses_token_types(backbone: nn.Module) -> bool:
    """Whether to pass segment ids: BERT does; RoBERTa (one type) and DistilBERT (none) do not."""
    return getattr(backbone.config, "type_vocab_size", 0) > 1 and \
        "token_type_ids" in inspect.signature(backbone.forward).parameters


def set_dropout(config: Any, dropout: float) -> None:
    for key in _DROPOUT_KEYS:
        if hasattr(config, key):
            setattr(config, key, dropout)


def load_backbone(name_or_path: str, dropout: float, kind: str = "base") -> tuple[nn.Module, Any]:
    """A pre-trained backbone and its tokenizer, from a hub id or a local directory."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The load report lists the pre-training heads a backbone leaves out: expected here.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        set_dropout(config, dropout)
        if kind == "masked-lm":
            model = AutoModelForMaskedLM.from_pretrained(name_or_path, config=config)
        elif config.model_type in ("bert", "roberta"):
            model = AutoModel.from_pretrained(name_or_path, config=config, add_pooling_layer=False)
        else:
            model = AutoModel.from_pretrained(name_or_path, config=config)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load the backbone {name_or_path!r}: {first}",
            hint="use a local Hugging Face model directory, or a hub id on a machine with access",
        ) from None
    return model, tokenizer


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> Any:
    """A BERT tokenizer whose vocabulary is built from the given texts, deterministically.

    The ``tokenizers`` WordPiece trainer breaks ties in hash-map order, so two runs
    can give different vocabularies; this one takes every character (plain and
    ``##``-continued) and then the most frequent words, ties broken alphabetically.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    vocab = special + chars + [f"##{c}" for c in chars]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    vocab += words[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def scratch_backbone(scratch: dict[str, Any], texts: Iterable[str], dropout: float,
                     max_seq_len: int, kind: str = "base") -> tuple[nn.Module, Any]:
    """A small randomly initialised backbone built from a config, with a tokenizer trained here.

    The backbone's initialisation depends only on ``scratch.seed``, so every member of
    a zoo starts from the same backbone, as members of a fine-tuning zoo do.
    """
    from transformers import AutoModel, AutoModelForMaskedLM

    tokenizer = train_wordpiece(texts, int(scratch["vocab_size"]))
    config = scratch_config(scratch, len(tokenizer), max_seq_len, tokenizer.pad_token_id)
    set_dropout(config, dropout)
    tokenizer.model_max_length = max_seq_len
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(scratch["seed"]))
        if kind == "masked-lm":
            model = AutoModelForMaskedLM.from_config(config)
        else:
            kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta") else {}
            model = AutoModel.from_config(config, **kwargs)
    return model, tokenizer


def scratch_config(scratch: dict[str, Any], vocab_size: int, max_seq_len: int,
                   pad_token_id: int = 0) -> Any:
    """The transformers config a [scratch] table describes (checked by the config, used here)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        scratch["model_type"], vocab_size=vocab_size, hidden_size=scratch["hidden_size"],
        num_hidden_layers=scratch["num_hidden_layers"],
        num_attention_heads=scratch["num_attention_heads"],
        intermediate_size=scratch["intermediate_size"],
        max_position_embeddings=max(scratch["max_position_embeddings"], max_seq_len + 2),
        pad_token_id=pad_token_id,
        # DistilBERT names its feed-forward width hidden_dim
        **({"hidden_dim": scratch["intermediate_size"]} if scratch["model_type"] == "distilbert"
           else {}),
    )


def architecture_files(backbone: nn.Module, tokenizer: Any, head: dict[str, Any]) -> dict[str, bytes]:
    """config.json, the head spec and the tokenizer files, as the zoo stores them."""
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backbone.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for p in sorted(Path(tmp).iterdir()):
            if p.name == "config.json" or p.name in _TOKENIZER_FILES:
                files[p.name] = p.read_bytes()
    files[HEAD_FILE] = json.dumps(head, indent=1, sort_keys=True).encode()
    return files


def skeleton(files: dict[str, bytes]) -> nn.Module:
    """The (untrained) model the stored files describe; weights come from the zoo."""
    from transformers import AutoConfig, AutoModel

    head = json.loads(files.get(HEAD_FILE, b'{"kind": "base-model"}'))
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "config.json").write_bytes(files["config.json"])
        config = AutoConfig.from_pretrained(tmp)
    kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta") else {}
    if head["kind"] == "sequence-classification":
        backbone = AutoModel.from_config(config, **kwargs)
        return SequenceClassifier(backbone, head["num_labels"], head["hidden"])
    if head["kind"] == "question-answering":
        return QuestionAnswerer(AutoModel.from_config(config, **kwargs), head["hidden"])
    if head["kind"] == "masked-lm":
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM.from_config(config)
    if head["kind"] == "base-model":
        if head.get("add_pooling_layer") is False:
            return AutoModel.from_config(config, add_pooling_layer=False)
        return AutoModel.from_config(config)
    raise ZooFileError(f"unknown model kind {head['kind']!r} in the zoo")


def load_tokenizer(files: dict[str, bytes]) -> Any:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        return AutoTokenizer.from_pretrained(tmp)


def rebuild(zoo: Zoo, member: Member | str, epoch: int) -> tuple[nn.Module, Any]:
    """The member's model at an epoch and its tokenizer, from the zoo file alone."""
    files = zoo.model_files(member)
    if "config.json" not in files:
        raise ZooFileError("the zoo lacks the model files needed to rebuild this member")
    model = skeleton(files)
    state = {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in
             zoo.state_dict(member, epoch).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ZooFileError(f"stored tensors do not fit the model (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    model.eval()
    return model, load_tokenizer(files)
