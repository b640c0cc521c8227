"""Sentence classification generators: ``sst2``, the generic ``text-classification``.

Data from a hub id, local TSV/CSV/JSONL/parquet files, or the built-in synthetic
sentiment task; a backbone from a hub id, a local directory or built from [scratch].
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zooscope
from zooscope.errors import ConfigError, DataError, ZooFileError
from zooscope.generation import Generator, MemberSetup, TaskData, example_caps

if TYPE_CHECKING:
    import numpy as np
    import torch

    from zooscope.config import ZooConfig
    from zooscope.zoo import Member

# torch, numpy and transformers are imported inside methods: registering this
# plugin must stay cheap, since `zooscope plugins` and `--help` load it.

TEXT_COLUMNS = ("sentence", "content", "text", "review")
SPLITS = ("train", "validation", "test")
_FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix in _FORMATS


def load_table(source: str) -> Any:
    """A data source as a ``datasets.Dataset``: a local file or folder, or a hub dataset.

    A hub id may name its split after a colon (``google/boolq:validation``); the
    default is ``train``. Every failure is a ``DataError`` naming the source.
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_dataset(str(path), split="train")
        elif _is_local(source):
            if not path.exists():
                raise DataError(f"no data file at {path}")
            if not path.is_file():  # a device or pipe would be read without end
                raise DataError(f"{path} is not a regular file")
            fmt = _FORMATS.get(path.suffix)
            if fmt is None:
                raise DataError(f"cannot read {path.name}: use .tsv, .csv, .jsonl or .parquet")
            if fmt in ("csv", "json"):
                _check_utf8(path)
            kwargs: dict[str, Any] = {}
            if path.suffix == ".tsv":
                kwargs = {"delimiter": "\t", "quoting": 3}  # csv.QUOTE_NONE: GLUE TSVs hold raw quotes
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
        else:
            name, _, split = source.partition(":")
            ds = datasets.load_dataset(name, split=split or "train")
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"{source} is not UTF-8 text") from None
    except FileNotFoundError as exc:
        raise DataError(f"cannot find the data source {source!r}: {exc}") from None
    except Exception as exc:  # datasets wraps parser and hub errors in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "corresponds to no data" in first:
            raise DataError(f"{source} holds no rows") from None
        raise DataError(f"cannot load the data source {source!r}: {first}") from None
    if len(ds) == 0:
        raise DataError(f"{source} holds no rows")
    return ds


def load_rows(source: str, text_column: str | None, label_column: str,
              pair_column: str | None = None) -> tuple[list[str], list[Any], list[str] | None]:
    """Texts, labels and (for sentence pairs) second texts of a data source."""
    if source.startswith("synthetic:"):
        from zooscope.generators.synthetic import synthetic_sentiment

        rows = synthetic_sentiment(synthetic_size(source))
        return [t for t, _ in rows], [y for _, y in rows], None
    ds = load_table(source)
    columns = list(ds.column_names)
    if text_column is None:
        text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
        if text_column is None:
            raise DataError(f"{source} has no text column (looked for {', '.join(TEXT_COLUMNS)}; "
                            f"it has {', '.join(columns)})", hint="set [data] text_column")
    for col in (text_column, label_column, pair_column):
        if col is not None and col not in columns:
            raise DataError(f"{source} has no column {col!r} (it has {', '.join(columns)})",
                            hint="set [data] text_column / text_pair_column / label_column")
    texts = ["" if t is None else str(t) for t in ds[text_column]]
    pairs = None if pair_column is None else ["" if t is None else str(t) for t in ds[pair_column]]
    return texts, list(ds[label_column]), pairs


#: Most examples ``synthetic:sentiment:N`` may ask for (the demo uses 3000).
MAX_SYNTHETIC = 1_000_000
#: Most classes a data set may have: integer labels are class ids 0..max.
MAX_CLASSES = 100_000


def synthetic_size(source: str) -> int:
    """The number of examples ``synthetic:sentiment[:N]`` asks for; a ``ConfigError`` when
    the source is not of that form."""
    kind, _, n = source.partition(":")[2].partition(":")
    if kind != "sentiment":
        raise ConfigError(f"unknown synthetic task {kind!r}", hint="use synthetic:sentiment:N")
    if not n:
        return 3000
    if not n.isascii() or not n.isdigit() or not 0 < int(n) <= MAX_SYNTHETIC:
        raise ConfigError(f"[data] source {source!r}: N must be a whole number from 1 to "
                          f"{MAX_SYNTHETIC:,}", hint="e.g. synthetic:sentiment:3000")
    return int(n)


def _check_utf8(path: Path) -> None:
    """Text files must be UTF-8; checked in a streaming pass before any parser sees them."""
    import codecs

    if not path.is_file():  # a device or pipe would be read without end
        raise DataError(f"{path} is not a regular file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        try:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text",
                            hint="convert it, e.g. iconv -f latin1 -t utf-8") from None


def _label_ids(labels: list[Any], source: str) -> tuple[np.ndarray, list[str]]:
    import numpy as np

    if any(v is None for v in labels):
        raise DataError(f"{source} has rows without a label")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        if any(not 0 <= v < MAX_CLASSES for v in labels):
            bad = next(v for v in labels if not 0 <= v < MAX_CLASSES)
            if bad < 0:
                raise DataError(f"{source} has negative labels (unlabelled rows?)")
            # Integer labels are class ids: one this large would ask for a head that size.
            raise DataError(f"{source} has the label {bad}; integer labels are class ids "
                            f"from 0 to {MAX_CLASSES - 1:,}",
                            hint="use class ids 0..K-1, or text labels")
        arr = np.asarray(labels, dtype=np.int64)
        names = [str(i) for i in range(int(arr.max()) + 1)]
        return arr, names
    names = sorted({str(v) for v in labels})
    lookup = {n: i for i, n in enumerate(names)}
    return np.asarray([lookup[str(v)] for v in labels], dtype=np.int64), names


def fingerprint(ids: list[str], texts: list[str], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for i, t, y in zip(ids, texts, labels.tolist(), strict=True):
        h.update(f"{i}\t{t}\t{y}\n".encode())
    return h.hexdigest()


class TextClassificationGenerator(Generator):
    """Fine-tunes a backbone with an MLP head on a sentence classification task."""

    version = "1"
    default_source: str | None = None

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
                if _is_local(value) and not resolved.exists():
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
        from transformers import AutoConfig, AutoModel

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
                with torch.device("meta"):
                    backbone = AutoModel.from_config(config)
                h = config.hidden_size
                n = sum(p.numel() for p in backbone.parameters())
                sizes[name] = (n, h * h + h + 2 * h + 2)
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
        return (cfg.data.get("text_column", text), cfg.data.get("label_column", label),
                cfg.data.get("text_pair_column", pair))

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
        fixed = int(cfg.data.get("train_examples", 0))
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
        labels, names = _label_ids(raw_labels, source)
        splits: dict[str, dict[str, Any]] = {}
        for split, idx in parts.items():
            idx = np.sort(idx) if split != "train" else idx
            splits[split] = {"ids": [f"row-{i}" for i in idx], "texts": [texts[i] for i in idx],
                             "pairs": None if pairs is None else [pairs[i] for i in idx],
                             "labels": labels[idx]}
        for key, split, prefix in (("test_source", "test", "test"),
                                   ("validation_source", "validation", "dev")):
            other = cfg.data.get(key) if key != "test_source" or not fixed else None
            if not other:
                continue
            if key == "validation_source" and not fixed:
                raise ConfigError("[data] validation_source goes with train_examples",
                                  hint="set [data] train_examples, or drop validation_source")
            o_texts, o_raw, o_pairs = load_rows(cfg.resolve(other), text_col, label_col, pair_col)
            o_labels, o_names = _label_ids(o_raw, other)
            if o_names != names[: len(o_names)]:
                raise DataError(f"{other} has labels the training data lacks")
            splits[split] = {"ids": [f"{prefix}-{i}" for i in range(len(o_texts))],
                             "texts": o_texts, "pairs": o_pairs, "labels": o_labels}
        for split, cap in example_caps(cfg).items():
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
        columns = [f"{s}_{m}" for s in SPLITS for m in ("loss", "accuracy")]
        test = splits["test"]
        return TaskData(splits=splits, info=info, metric_columns=columns,
                        predictions={"kind": "class", "shape": [len(test["ids"])]},
                        test_labels=test["labels"].astype(np.int32), test_ids=test["ids"],
                        test_texts=list(test["texts"]),
                        test_text_pairs=None if test["pairs"] is None else list(test["pairs"]),
                        cache={"num_labels": len(names)})

    def stored_task(self, cfg: ZooConfig, header: Any) -> TaskData | None:
        """The test split from the zoo's stored inputs and labels, checked against the
        test fingerprint the zoo recorded."""
        import numpy as np

        texts, labels, ids = header.test_texts, header.test_labels, header.test_ids
        names = (header.data or {}).get("label_names")
        if texts is None or labels is None or ids is None or not names:
            return None
        test = {"ids": list(ids), "texts": list(texts), "pairs": header.test_text_pairs,
                "labels": labels.astype(np.int64)}
        want = (header.data.get("fingerprints") or {}).get("test")
        if want and fingerprint(test["ids"], _joined(test), test["labels"]) != want:
            raise ZooFileError("the zoo's stored test inputs do not match its test "
                               "fingerprint", hint="zooscope zoo validate ZOO")
        return TaskData(splits={"test": test}, info=dict(header.data),
                        metric_columns=list(header.metric_columns),
                        predictions=header.predictions, test_labels=labels, test_ids=test["ids"],
                        test_texts=test["texts"], test_text_pairs=test["pairs"],
                        cache={"num_labels": len(names)})

    # -- models ----------------------------------------------------------------------------
    def _encode(self, cfg: ZooConfig, tok: Any, data: dict[str, Any], token_types: bool
                ) -> dict[str, Any]:
        import torch

        max_len = int(cfg.train["max_seq_len"])
        enc = tok(data["texts"], data["pairs"], truncation=True, max_length=max_len)
        out = {"input_ids": enc["input_ids"],
               "labels": torch.as_tensor(data["labels"], dtype=torch.long)}
        if token_types and data["pairs"] is not None and "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    def _backbone(self, cfg: ZooConfig, name: str, task: TaskData) -> tuple[torch.nn.Module, Any]:
        """Load (once per zoo and backbone) the backbone and tokenise every split with it."""
        from zooscope.models import backbone_for, uses_token_types

        key = f"backbone:{name}"
        if key not in task.cache:
            model, tok = backbone_for(cfg, name, _joined(task.splits["train"]))
            types = uses_token_types(model)
            encoded = {split: self._encode(cfg, tok, data, types)
                       for split, data in task.splits.items()}
            task.cache[key] = (model, tok, encoded)
        return task.cache[key]

    def setup(self, cfg: ZooConfig, member: Member, task: TaskData) -> MemberSetup:
        from zooscope.models import SequenceClassifier

        name = str(member.factors["backbone"])
        base, tok, encoded = self._backbone(cfg, name, task)
        return finetune_setup(
            cfg, member, name, base, tok, encoded,
            lambda backbone, hidden, dropout: SequenceClassifier(
                backbone, task.cache["num_labels"], hidden=hidden, dropout=dropout),
            lambda train, idx: {"labels": train["labels"][idx]})

    def evaluate_model(self, cfg: ZooConfig, task: TaskData, model: torch.nn.Module,
                       tokenizer: Any, device: torch.device, splits: tuple[str, ...] = ("test",),
                       ) -> tuple[dict[str, float], np.ndarray | None]:
        import torch

        from zooscope.models import uses_token_types

        types = uses_token_types(getattr(model, "backbone", model))
        encoded = {split: self._encode(cfg, tokenizer, task.splits[split], types)
                   for split in splits}
        setup = MemberSetup(model=model.to(device), architecture=None,  # type: ignore[arg-type]
                            train_batches=lambda g: iter(()), steps_per_epoch=0,
                            state={"encoded": encoded, "pad": int(tokenizer.pad_token_id or 0)})
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

        model = setup.model
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        predictions = None
        batch_size = int(cfg.train["eval_batch_size"])
        for split in splits:
            data = setup.state["encoded"][split]
            ids = data["input_ids"]
            # Length-sorted batches pad least; predictions go back to the split's order.
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            preds = torch.empty(len(ids), dtype=torch.long)
            loss_sum = torch.zeros((), device=device)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = collate(data, idx, setup.state["pad"], labels=data["labels"][idx])
                batch = {k: v.to(device) for k, v in batch.items()}
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
    arch = architecture_record(name, model, backbone, tok, int(cfg.train["max_seq_len"]))
    pad = int(tok.pad_token_id or 0)
    train = encoded["train"]
    batch_size = int(member.factors.get("batch_size", cfg.train["batch_size"]))
    n = len(train["input_ids"])

    def batches(generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield collate(train, idx, pad, **targets(train, idx))

    return MemberSetup(model=model, architecture=arch, train_batches=batches,
                       steps_per_epoch=(n + batch_size - 1) // batch_size,
                       state={"encoded": encoded, "pad": pad})


def _joined(data: dict[str, Any]) -> list[str]:
    """The split's texts, each with its pair text where there is one (for fingerprints
    and for training a scratch tokenizer)."""
    if data.get("pairs") is None:
        return data["texts"]
    return [f"{a}\t{b}" for a, b in zip(data["texts"], data["pairs"], strict=True)]


def architecture_record(name: str, model: torch.nn.Module, backbone: torch.nn.Module, tok: Any,
                        max_seq_len: int | None = None) -> Any:
    """The architecture a member's model has: stored files, tensor shapes, integer dtypes.

    ``max_seq_len`` goes into the head file: inputs are truncated to it, and a reader
    re-evaluating a member must truncate the same way."""
    from zooscope.models import architecture_files
    from zooscope.store import Architecture

    state = model.state_dict()
    return Architecture(
        key=name, files=architecture_files(backbone, tok, {
            **model.head_spec(), **({} if max_seq_len is None else {"max_seq_len": max_seq_len})}),
        shapes={k: tuple(v.shape) for k, v in state.items()},
        dtypes={k: str(v.dtype).removeprefix("torch.") for k, v in state.items()
                if not v.is_floating_point()},
    )


def collate(encoded: dict[str, Any], idx: list[int], pad: int,
            **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of an encoded split, padded to the batch's longest (never to max_seq_len)."""
    import torch

    sequences = [encoded["input_ids"][i] for i in idx]
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    types = torch.zeros((len(sequences), width), dtype=torch.long) \
        if "token_type_ids" in encoded else None
    for row, (i, seq) in enumerate(zip(idx, sequences, strict=True)):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
        if types is not None:
            types[row, : len(seq)] = torch.as_tensor(encoded["token_type_ids"][i], dtype=torch.long)
    out = {"input_ids": input_ids, "attention_mask": mask}
    if types is not None:
        out["token_type_ids"] = types
    return {**out, **extra}


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
