"""Sentence classification generators: ``sst2``, the generic ``text-classification``.

Data from a hub id, local TSV/CSV/JSONL/parquet files, or the built-in synthetic
sentiment task; a backbone from a hub id, a local directory or built from [scratch].
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import zooscope
from zooscope.config import ConfigKey
from zooscope.errors import ConfigError, DataError, ZooFileError
from zooscope.generator import Generator, MemberSetup, TaskData, example_caps
from zooscope.kit.data import (
    Column,
    RowIds,
    encode_column,
    is_local,
    label_ids,
    load_rows,
    row_lengths,
    synthetic_size,
    tokenizer_digest,
)
from zooscope.kit.finetune import cached_backbone, collate, finetune_setup
from zooscope.record import TestSet, ZooRecord

if TYPE_CHECKING:
    import numpy as np
    import torch

    from zooscope.config import ZooConfig
    from zooscope.zoo import Member

# torch, numpy and transformers are imported inside methods: registering this
# plugin must stay cheap, since `zooscope plugins` and `--help` load it.

SPLITS = ("train", "validation", "test")

def fingerprint(ids: Iterable[str], texts: Iterable[str], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for i, t, y in zip(ids, texts, labels.tolist(), strict=True):
        h.update(f"{i}\t{t}\t{y}\n".encode())
    return h.hexdigest()


def _pick(values: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a column: a lazy ``Column`` stays lazy, a list is indexed."""
    if values is None or isinstance(values, Column):
        return None if values is None else values[idx]
    return [values[i] for i in idx]


class TextClassificationGenerator(Generator):
    """Fine-tunes a backbone with an MLP head on a sentence classification task."""

    version = "1"
    default_source: str | None = None
    config_keys: ClassVar[dict[str, dict[str, ConfigKey]]] = {"data": {
        "text_column": ConfigKey((str,), help="the column holding the text (default: the "
                                 "task's own, e.g. SST-2's sentence)"),
        "label_column": ConfigKey((str,), help="the column holding the class label"),
        "text_pair_column": ConfigKey((str,), help="the column holding the second text of a "
                                      "sentence pair (BoolQ's passage)"),
        "train_examples": ConfigKey((int,), 0, "a fixed training-set size: N rows of the "
                                    "source drawn with the split seed train, the rest of the "
                                    "source is the test split, validation_source the dev set",
                                    minimum=0),
    }, "train": {
        "t5": ConfigKey((str,), "encoder", "how a T5 backbone classifies: encoder (its encoder, "
                        "mean-pooled, under the MLP head) or text-to-text (the whole model writes "
                        "the label's word: yes/no for true/false labels)",
                        choices=("encoder", "text-to-text")),
    }}

    def __init__(self, name: str, description: str, default_source: str | None = None,
                 columns: tuple[str | None, str, str | None] = (None, "label", None)) -> None:
        self.name = name
        self.description = description
        self.default_source = default_source
        #: Default text, label and pair-text columns; [data] keys override them.
        self.columns = columns

    def _source(self, cfg: ZooConfig) -> str:
        source = cfg.data.get("source", self.default_source)
        if not source:
            raise ConfigError("[data] needs a source (a hub id or a local file)")
        return cfg.resolve(source)

    def validate(self, cfg: ZooConfig) -> None:
        for key in ("source", "test_source", "validation_source"):
            value = cfg.data.get(key) or (self.default_source if key == "source" else None)
            if value and value.startswith("synthetic:"):
                synthetic_size(value)
            elif value:
                resolved = Path(cfg.resolve(value)).expanduser()
                if is_local(value) and not resolved.exists():
                    raise ConfigError(f"[data] {key}: no data file at {resolved}")
        for backbone in cfg.grid.get("backbone", [cfg.zoo["backbone"]]):
            if backbone == "scratch" or backbone.startswith(("zoo://", "scratch")):
                continue
            resolved = Path(cfg.resolve(backbone)).expanduser()
            if backbone.startswith((".", "/", "~", "package:")) and not resolved.is_dir():
                raise ConfigError(f"backbone {backbone!r}: no model directory at {resolved}")

    def estimate_bytes(self, cfg: ZooConfig, members: list[Member]) -> int | None:
        """Size of the zoo's tensors on disk, counting shared tensors once; None if unknown."""
        import torch
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        from zooscope.kit.models import base_model, is_t5

        width = {"float32": 4, "float16": 2, "bfloat16": 2}[cfg.store["dtype"]]
        sizes: dict[str, tuple[int, int]] = {}
        total = 0
        ids = {m.id for m in members}
        for m in members:
            name = str(m.factors["backbone"])
            if name not in sizes:
                try:
                    if name == "scratch":
                        sc = cfg.scratch
                        config = AutoConfig.for_model(
                            sc["model_type"], vocab_size=sc["vocab_size"],
                            hidden_size=sc["hidden_size"], num_hidden_layers=sc["num_hidden_layers"],
                            num_attention_heads=sc["num_attention_heads"],
                            intermediate_size=sc["intermediate_size"])
                    else:
                        config = AutoConfig.from_pretrained(cfg.resolve(name))
                except (OSError, ValueError):
                    return None
                whole = is_t5(config) and self._text_to_text(cfg)
                with torch.device("meta"):
                    backbone = AutoModelForSeq2SeqLM.from_config(config) if whole \
                        else base_model(config)
                h = getattr(config, "hidden_size", None) or config.d_model
                # T5 ties its embeddings and output layer: a tensor counted once.
                n = sum(p.numel() for p in {id(p): p for p in backbone.parameters()}.values())
                sizes[name] = (n, 0 if whole else h * h + h + 2 * h + 2)
                total += n  # epoch 0's backbone: the same for every member
            backbone_n, head_n = sizes[name]
            if (m.lineage or {}).get("checkpoints_from") in ids:
                continue  # a longer run's checkpoints: no tensors of its own
            epochs = cfg.epochs_of(m)
            trained = 0 if cfg.train["freeze_backbone"] else backbone_n * epochs
            total += trained + head_n * (epochs + 1)
        return total * width

    # -- data ------------------------------------------------------------------------------
    def _columns(self, cfg: ZooConfig) -> tuple[str | None, str, str | None]:
        text, label, pair = self.columns
        return (self.setting(cfg, "data", "text_column") or text,
                self.setting(cfg, "data", "label_column") or label,
                self.setting(cfg, "data", "text_pair_column") or pair)

    def prepare(self, cfg: ZooConfig) -> TaskData:
        import numpy as np

        source = self._source(cfg)
        text_col, label_col, pair_col = self._columns(cfg)
        texts, raw_labels, pairs = load_rows(source, text_col, label_col, pair_col)
        split_cfg = cfg.data["split"]
        rng = np.random.default_rng(int(split_cfg.get("seed", 0)))
        order = rng.permutation(len(texts))
        fractions = {k: float(split_cfg.get(k, 0.0)) for k in SPLITS}
        test_source = cfg.data.get("test_source")
        validation_source = cfg.data.get("validation_source")
        fixed = int(self.setting(cfg, "data", "train_examples"))
        n = len(texts)
        if fixed:
            # The homework's split: a fixed number of training examples, the rest of the
            # training source as test, the validation source (the official dev set) as dev.
            if not validation_source:
                raise ConfigError("[data] train_examples needs a validation_source (the dev set)")
            if fixed >= n:
                raise DataError(f"{source} has {n} rows: none left for the test split after "
                                f"{fixed} training examples", hint="lower [data] train_examples")
            parts = {"train": order[:fixed], "validation": order[:0], "test": order[fixed:]}
        else:
            if test_source:
                kept = fractions["train"] + fractions["validation"]
                fractions = {"train": fractions["train"] / kept,
                             "validation": fractions["validation"] / kept, "test": 0.0}
            n_train = int(round(fractions["train"] * n))
            n_val = int(round(fractions["validation"] * n)) if fractions["test"] else n - n_train
            parts = {"train": order[:n_train], "validation": order[n_train : n_train + n_val],
                     "test": order[n_train + n_val :]}
        # Evaluation splits in file order; each split cut to its cap here already, so a
        # large corpus's permutation is dropped before anything per row is read.
        caps = example_caps(cfg)
        for split, idx in parts.items():
            idx = np.sort(idx) if split != "train" else idx
            parts[split] = (idx[: caps[split]] if caps[split] else idx).copy()
        del order
        names = label_ids(raw_labels, source, np.zeros(0, dtype=np.int64))[1]
        splits: dict[str, dict[str, Any]] = {}
        for split, idx in parts.items():
            splits[split] = {"ids": RowIds("row", idx), "texts": _pick(texts, idx),
                             "pairs": _pick(pairs, idx),
                             "labels": label_ids(raw_labels, source, idx)[0]}
        for key, split, prefix in (("test_source", "test", "test"),
                                   ("validation_source", "validation", "dev")):
            other = cfg.data.get(key) if key != "test_source" or not fixed else None
            if not other:
                continue
            if key == "validation_source" and not fixed:
                raise ConfigError("[data] validation_source goes with train_examples",
                                  hint="set [data] train_examples, or drop validation_source")
            o_texts, o_raw, o_pairs = load_rows(cfg.resolve(other), text_col, label_col, pair_col)
            o_labels, o_names = label_ids(o_raw, other)
            if o_names != names[: len(o_names)]:
                raise DataError(f"{other} has labels the training data lacks")
            splits[split] = {"ids": RowIds(prefix, np.arange(len(o_texts))),
                             "texts": o_texts, "pairs": o_pairs, "labels": o_labels}
        for split, cap in caps.items():
            if cap:
                splits[split] = {k: None if v is None else v[:cap] for k, v in splits[split].items()}
        for split in SPLITS:
            if len(splits[split]["ids"]) == 0:
                raise DataError(f"the {split} split of {source} is empty",
                                hint="use more data or change [data] split")
        info = {  # paths as resolved, so the record means the same from any folder
            "source": source,
            "test_source": cfg.resolve(test_source) if test_source else test_source,
            "validation_source": cfg.resolve(validation_source) if validation_source
            else validation_source,
            "label_names": names, "sizes": {s: len(splits[s]["ids"]) for s in SPLITS},
            "fingerprints": {s: fingerprint(splits[s]["ids"], _joined(splits[s]),
                                            splits[s]["labels"]) for s in SPLITS},
        }
        for s in SPLITS:  # the key the tokenised split is cached under
            splits[s]["fingerprint"] = info["fingerprints"][s]
        columns = [f"{s}_{m}" for s in SPLITS for m in ("loss", "accuracy")]
        test = splits["test"]
        return TaskData(splits=splits, info=info, metric_columns=columns,
                        test=TestSet(
                            predictions={"kind": "class", "shape": [len(test["ids"])]},
                            labels=test["labels"].astype(np.int32), ids=list(test["ids"]),
                            texts=list(test["texts"]),
                            text_pairs=None if test["pairs"] is None else list(test["pairs"])),
                        cache={"num_labels": len(names)})

    def stored_task(self, cfg: ZooConfig, record: ZooRecord) -> TaskData | None:
        """The test split from the zoo's stored inputs and labels, checked against the
        test fingerprint the zoo recorded."""
        import numpy as np

        kept = record.test
        names = (record.data or {}).get("label_names")
        if kept.texts is None or kept.labels is None or kept.ids is None or not names:
            return None
        test = {"ids": list(kept.ids), "texts": list(kept.texts), "pairs": kept.text_pairs,
                "labels": kept.labels.astype(np.int64)}
        want = (record.data.get("fingerprints") or {}).get("test")
        if want and fingerprint(test["ids"], _joined(test), test["labels"]) != want:
            raise ZooFileError("the zoo's stored test inputs do not match its test "
                               "fingerprint", hint="zooscope zoo validate ZOO")
        return TaskData(splits={"test": test}, info=dict(record.data),
                        metric_columns=list(record.metric_columns), test=kept,
                        cache={"num_labels": len(names)})

    # -- models ----------------------------------------------------------------------------
    def _encode(self, cfg: ZooConfig, tok: Any, data: dict[str, Any], token_types: bool
                ) -> dict[str, Any]:
        """A split's token ids (and token types for pairs where the model takes them),
        with its labels. A split read from a file or the hub is tokenised into a cached,
        memory-mapped Arrow file; one held in memory (synthetic, or the test split
        stored in a zoo) stays in memory."""
        import torch

        max_len = int(cfg.train["max_seq_len"])
        with_types = token_types and data["pairs"] is not None

        def encode(texts: list[str], pairs: list[str] | None) -> dict[str, list[list[int]]]:
            enc = tok(texts, pairs, truncation=True, max_length=max_len)
            out = {"input_ids": enc["input_ids"]}
            if with_types and "token_type_ids" in enc:
                out["token_type_ids"] = enc["token_type_ids"]
            return out

        texts = data["texts"]
        if isinstance(texts, Column) and data.get("fingerprint"):
            key = hashlib.sha256(f"{data['fingerprint']}:{tokenizer_digest(tok)}:{max_len}:"
                                 f"{with_types}".encode()).hexdigest()
            out = encode_column(texts, data["pairs"], key, encode)
        else:
            out = encode(list(texts), None if data["pairs"] is None else list(data["pairs"]))
        return {**out, "labels": torch.as_tensor(data["labels"], dtype=torch.long)}

    def _text_to_text(self, cfg: ZooConfig) -> bool:
        return self.setting(cfg, "train", "t5") == "text-to-text"

    def _backbone(self, cfg: ZooConfig, name: str, task: TaskData) -> tuple[torch.nn.Module, Any]:
        """The backbone, loaded once per zoo, with every split tokenised by it: a T5 whole
        (encoder and decoder) for text-to-text, else the encoder."""
        from zooscope.kit.models import uses_token_types

        return cached_backbone(
            cfg, task, name, lambda: _joined(task.splits["train"]),
            lambda model, tok: {split: self._encode(cfg, tok, data, uses_token_types(model))
                                for split, data in task.splits.items()},
            kind="text-to-text" if self._text_to_text(cfg) else "base")

    def setup(self, cfg: ZooConfig, member: Member, task: TaskData) -> MemberSetup:
        from zooscope.kit.models import SequenceClassifier, TextToText, is_t5

        name = str(member.factors["backbone"])
        base, tok, encoded = self._backbone(cfg, name, task)
        if is_t5(base.config) and hasattr(base, "lm_head"):
            if cfg.train["freeze_backbone"]:
                raise ConfigError("[train] freeze_backbone leaves a text-to-text T5 nothing to "
                                  "train", hint='use t5 = "encoder" to train a head on it')
            words = label_words(task.info["label_names"])
            targets = [tok(w)["input_ids"] for w in words]
            if len({tuple(t) for t in targets}) < len(targets):
                raise DataError(f"the label words {words} are the same tokens to {name!r}'s "
                                "tokenizer")

            def make(backbone: Any, hidden: int, dropout: float) -> torch.nn.Module:
                return TextToText(backbone, words, targets)
        else:
            def make(backbone: Any, hidden: int, dropout: float) -> torch.nn.Module:
                return SequenceClassifier(backbone, task.cache["num_labels"], hidden=hidden,
                                          dropout=dropout)
        return finetune_setup(cfg, member, name, base, tok, encoded, make,
                              lambda train, idx: {"labels": train["labels"][idx]})

    def evaluate_model(self, cfg: ZooConfig, task: TaskData, model: torch.nn.Module,
                       tokenizer: Any, device: torch.device, splits: tuple[str, ...] = ("test",),
                       ) -> tuple[dict[str, float], np.ndarray | None]:
        import torch

        from zooscope.kit.models import uses_token_types

        types = uses_token_types(getattr(model, "backbone", model))
        encoded = {split: self._encode(cfg, tokenizer, task.splits[split], types)
                   for split in splits}
        setup = MemberSetup(model=model.to(device), architecture=None,  # type: ignore[arg-type]
                            train_batches=lambda g: iter(()), steps_per_epoch=0,
                            state={"encoded": encoded, "pad": int(tokenizer.pad_token_id or 0),
                                   "tokenizer": tokenizer})
        with torch.no_grad():
            return self._evaluate(cfg, setup, device, splits)

    def evaluate(self, cfg: ZooConfig, setup: MemberSetup, task: TaskData,
                 device: torch.device) -> tuple[dict[str, float], np.ndarray | None]:
        import torch

        with torch.no_grad():
            splits = SPLITS if cfg.train["eval_train"] else SPLITS[1:]
            return self._evaluate(cfg, setup, device, splits)

    def _evaluate(self, cfg: ZooConfig, setup: MemberSetup, device: torch.device,
                  splits: tuple[str, ...]) -> tuple[dict[str, float], np.ndarray | None]:
        import numpy as np
        import torch

        from zooscope.kit.models import TextToText

        model = setup.model
        writes = isinstance(model, TextToText)
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        predictions = None
        batch_size = int(cfg.train["eval_batch_size"])
        for split in splits:
            data = setup.state["encoded"][split]
            ids = data["input_ids"]
            # Length-sorted batches pad least; predictions go back to the split's order.
            order = np.argsort(row_lengths(ids), kind="stable").tolist()
            preds = torch.empty(len(ids), dtype=torch.long)
            loss_sum = torch.zeros((), device=device)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = collate(data, idx, setup.state["pad"], labels=data["labels"][idx])
                batch = {k: v.to(device) for k, v in batch.items()}
                if writes:  # the generated word is the answer; the loss is the gold word's
                    _, per_example = model(**batch)
                    loss_sum += per_example.sum()
                    preds[idx] = model.generate_labels(batch["input_ids"], batch["attention_mask"],
                                                       setup.state["tokenizer"])[0]
                    continue
                _, logits = model(**batch)
                loss_sum += torch.nn.functional.cross_entropy(
                    logits.float(), batch["labels"], reduction="sum")
                preds[idx] = logits.argmax(-1).cpu()
            labels = data["labels"]
            metrics[f"{split}_loss"] = float(loss_sum) / len(ids)
            metrics[f"{split}_accuracy"] = float((preds == labels).float().mean())
            if split == "test":
                predictions = preds.numpy().astype(np.int32)
        model.train(was_training)
        return metrics, predictions


def label_words(names: list[str]) -> list[str]:
    """The word a text-to-text model writes for each label: yes/no for true/false labels
    (BoolQ), else the label's own name, lower-cased."""
    lowered = [str(n).lower() for n in names]
    if lowered == ["false", "true"]:
        return ["no", "yes"]
    return lowered


def _joined(data: dict[str, Any]) -> Iterable[str]:
    """The split's texts, each with its pair text where there is one (for fingerprints
    and for training a scratch tokenizer), read as they are iterated."""
    if data.get("pairs") is None:
        return data["texts"]
    return (f"{a}\t{b}" for a, b in zip(data["texts"], data["pairs"], strict=True))



@zooscope.hookimpl
def zooscope_register_generators(register: Any) -> None:
    register(TextClassificationGenerator(
        "sst2", "SST-2 sentiment (accuracy): fine-tune a backbone with an MLP head",
        default_source="stanfordnlp/sst2"))
    register(TextClassificationGenerator(
        "text-classification", "any sentence (or sentence-pair) classification data set (accuracy)"))
    register(TextClassificationGenerator(
        "boolq", "BoolQ yes/no questions over a passage (accuracy): question [SEP] passage",
        default_source="google/boolq", columns=("question", "answer", "passage")))
