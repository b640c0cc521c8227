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

from zooscope.environment import hub_offline
from zooscope.errors import ConfigError, ZooFileError
from zooscope.zoo import hub_revision

if TYPE_CHECKING:
    from zooscope.zoo import Member, Zoo

HEAD_FILE = "zooscope_head.json"
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                 "attention_dropout", "dropout_rate")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "vocab.json", "merges.txt", "spiece.model")


#: Encoder-decoder model types whose encoder alone serves as a backbone under a head.
T5_TYPES = ("t5",)


def is_t5(config: Any) -> bool:
    return getattr(config, "model_type", None) in T5_TYPES


def base_model(config: Any) -> nn.Module:
    """The backbone a config describes, untrained: BERT and RoBERTa without their pooler
    (heads read the hidden states), T5 as its encoder alone."""
    from transformers import AutoModel, T5EncoderModel

    if is_t5(config):
        return T5EncoderModel(config)
    if config.model_type in ("bert", "roberta"):
        return AutoModel.from_config(config, add_pooling_layer=False)
    return AutoModel.from_config(config)


def mlp_head(width: int, outputs: int, hidden: int, dropout: float) -> nn.Sequential:
    """The task head: Linear(h, h) → ReLU → dropout → Linear(h, outputs), or one Linear."""
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


class SequenceClassifier(nn.Module):
    """[CLS] → Linear(h, h) → ReLU → dropout → Linear(h, labels) on a transformer backbone.

    Encoders without a [CLS] token (T5's) are read by the mean of the hidden states over
    the non-padding tokens instead."""

    def __init__(self, backbone: nn.Module, num_labels: int, hidden: int = 1,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        width = getattr(backbone.config, "hidden_size", None) or backbone.config.d_model
        self.head = mlp_head(width, num_labels, hidden, dropout)
        self.num_labels = num_labels
        self.pooling = "mean" if is_t5(backbone.config) else "first"
        self._takes_token_types = uses_token_types(backbone)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        states = self.backbone(**kwargs).last_hidden_state
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            hidden = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            hidden = states[:, 0]
        logits = self.head(hidden)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return loss, logits

    def head_spec(self) -> dict[str, Any]:
        return {"kind": "sequence-classification", "num_labels": self.num_labels,
                "hidden": int(len(self.head) > 1), "activation": "relu",
                "backbone_prefix": "backbone.", "head_prefix": "head.", "pooling": self.pooling,
                "input": "first token ([CLS]) of last_hidden_state" if self.pooling == "first"
                else "mean of last_hidden_state over the attention mask"}


class TextToText(nn.Module):
    """A whole encoder-decoder (T5) that answers by writing its label's word.

    Trained on the word's tokens (teacher forcing, the seq2seq loss); evaluated by
    greedy generation, the generated text compared with each label's word. ``targets``
    are each label's token ids (the word and the end token)."""

    def __init__(self, backbone: nn.Module, words: list[str], targets: list[list[int]],
                 max_new_tokens: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.words = list(words)
        self.targets = [list(t) for t in targets]
        self.num_labels = len(words)
        self.max_new_tokens = max_new_tokens or max(len(t) for t in targets) + 2
        width = max(len(t) for t in targets)
        padded = torch.full((len(targets), width), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            padded[i, : len(t)] = torch.as_tensor(t, dtype=torch.long)
        # Not a weight: left out of the state dict, rebuilt from the head file.
        self.register_buffer("target_ids", padded, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(mean token loss of the batch, per-example loss) for class ids ``labels``."""
        if labels is None:
            return None, None
        target = self.target_ids[labels]
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=target)
        per_token = nn.functional.cross_entropy(out.logits.float().transpose(1, 2), target,
                                                ignore_index=-100, reduction="none")
        counted = (target != -100).sum(1).clamp(min=1)
        return out.loss, per_token.sum(1) / counted

    def generate_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        tokenizer: Any) -> tuple[torch.Tensor, list[str]]:
        """Each input's generated text and its class: the label whose word it is, or
        ``num_labels`` (none of them) for any other text."""
        out = self.backbone.generate(input_ids=input_ids, attention_mask=attention_mask,
                                     max_new_tokens=self.max_new_tokens, do_sample=False,
                                     num_beams=1)
        texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        lookup = {w.lower(): i for i, w in enumerate(self.words)}
        classes = torch.as_tensor([lookup.get(t.lower(), self.num_labels) for t in texts],
                                  dtype=torch.long)
        return classes, texts

    def head_spec(self) -> dict[str, Any]:
        return {"kind": "text-to-text", "num_labels": self.num_labels, "words": self.words,
                "targets": self.targets, "max_new_tokens": self.max_new_tokens,
                "backbone_prefix": "backbone.",
                "input": "the text (and its pair) as the tokenizer joins them; the label is "
                "the word greedy generation writes; any other text is class num_labels"}


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
    """A pre-trained backbone and its tokenizer, from a hub id or a local directory.

    ``kind``: ``"base"`` (the encoder; T5's encoder alone), ``"masked-lm"`` (with its
    pre-training head) or ``"text-to-text"`` (a T5 whole; any other model as ``"base"``)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # The load report lists the pre-training heads a backbone leaves out: expected here.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    source, at = hub_revision(name_or_path)
    pinned: dict[str, Any] = {"revision": at} if at else {}
    # A hub id with the hub out of reach is read from the cache at once: asking the
    # hub would retry each file for ~20 s and print every retry.
    offline = None if Path(source).expanduser().exists() else hub_offline()
    try:
        config = AutoConfig.from_pretrained(source, **pinned)
        set_dropout(config, dropout)
        if kind == "masked-lm":
            model = AutoModelForMaskedLM.from_pretrained(source, config=config, **pinned)
        elif kind == "text-to-text" and is_t5(config):
            from transformers import AutoModelForSeq2SeqLM

            model = AutoModelForSeq2SeqLM.from_pretrained(source, config=config, **pinned)
        elif is_t5(config):
            from transformers import T5EncoderModel

            model = T5EncoderModel.from_pretrained(source, config=config, **pinned)
        elif config.model_type in ("bert", "roberta"):
            model = AutoModel.from_pretrained(source, config=config, add_pooling_layer=False,
                                              **pinned)
        else:
            model = AutoModel.from_pretrained(source, config=config, **pinned)
        tokenizer = AutoTokenizer.from_pretrained(source, **pinned)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if offline:
            first = f"it is not in the local Hugging Face cache, and the hub is offline ({offline})"
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


#: Head kinds and the fields each needs, with their types.
HEAD_KINDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "sequence-classification": {"num_labels": int, "hidden": int},
    "question-answering": {"hidden": int},
    "text-to-text": {"words": list, "targets": list},
    "masked-lm": {},
    "base-model": {},
}


def head_description(files: dict[str, bytes], where: str) -> dict[str, Any]:
    """The checked head description (``zooscope_head.json``) among a model's files."""
    raw = files.get(HEAD_FILE, b'{"kind": "base-model"}')
    try:
        head = json.loads(raw)
    except (ValueError, RecursionError):
        head = None
    if not isinstance(head, dict) or not isinstance(head.get("kind"), str):
        raise ZooFileError(f"{where}: {HEAD_FILE} is not a JSON object with a kind",
                           hint="the file is damaged; export or import the checkpoint again")
    fields = HEAD_KINDS.get(head["kind"])
    if fields is None:
        raise ZooFileError(f"{where}: unknown model kind {head['kind']!r} in {HEAD_FILE}",
                           hint=f"known kinds: {', '.join(HEAD_KINDS)}")
    for name, kind in fields.items():
        value = head.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) \
                or (kind is int and not 0 <= value <= 1 << 20):
            raise ZooFileError(f"{where}: {HEAD_FILE} gives {name} = {value!r}, not a "
                               f"{'count' if kind is int else 'list'}",
                               hint="the file is damaged; export or import the checkpoint again")
    for name in ("backbone_prefix", "head_prefix"):
        if not isinstance(head.get(name, ""), str):
            raise ZooFileError(f"{where}: {HEAD_FILE} gives {name} = {head[name]!r}, not text")
    return head


def skeleton(files: dict[str, bytes], where: str = "the zoo") -> nn.Module:
    """The (untrained) model the stored files describe; weights come from the zoo."""
    from transformers import AutoConfig, AutoModel

    head = head_description(files, where)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "config.json").write_bytes(files["config.json"])
            config = AutoConfig.from_pretrained(tmp)
        if head["kind"] == "sequence-classification":
            return SequenceClassifier(base_model(config), head["num_labels"], head["hidden"])
        if head["kind"] == "question-answering":
            return QuestionAnswerer(base_model(config), head["hidden"])
        if head["kind"] == "text-to-text":
            from transformers import AutoModelForSeq2SeqLM

            return TextToText(AutoModelForSeq2SeqLM.from_config(config), head["words"],
                              head["targets"], head.get("max_new_tokens"))
        if head["kind"] == "masked-lm":
            from transformers import AutoModelForMaskedLM

            return AutoModelForMaskedLM.from_config(config)
        if head.get("add_pooling_layer") is False:
            return AutoModel.from_config(config, add_pooling_layer=False)
        return AutoModel.from_config(config)
    except (ValueError, TypeError, KeyError, RuntimeError, OverflowError, OSError,
            RecursionError, MemoryError, ArithmeticError) as exc:
        # transformers and torch check a config's values only as they build from them
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ZooFileError(f"{where}: config.json describes no model that can be built "
                           f"({reason})",
                           hint="the file is damaged or crafted; export or import the "
                                "checkpoint again") from None


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
    model = skeleton(files, str(zoo.path))
    state = {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in
             zoo.state_dict(member, epoch).items()}
    load_weights(model, state, str(zoo.path))
    return model, load_tokenizer(files)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model`` exactly (position ids aside) and set it to eval mode;
    a tensor of another shape, a missing or a left-over one is an error naming ``where``."""
    problem = f"{where}: the tensors do not fit the model its config.json describes"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape than the config says
        raise ZooFileError(f"{problem} ({str(exc).strip().splitlines()[-1].strip()[:200]})") \
            from None
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ZooFileError(f"{problem} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
