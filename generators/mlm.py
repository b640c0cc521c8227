"""Continued masked-LM pre-training (``mlm``): the pretext zoos downstream zoos start from.

Texts come from plain-text files (``../shared/data/openwebtext/sample.txt``, a folder
of ``.txt`` files) or a hub dataset with a ``text`` column (``Skylion007/openwebtext``).
Documents are split 80/10/10, tokenised and packed into blocks of ``max_seq_len``
tokens. Everything stays in Arrow files that ``datasets`` memory-maps, so a corpus
larger than memory works; batches are read block by block.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import zooscope
from zooscope.config import ConfigKey
from zooscope.errors import ConfigError, DataError
from zooscope.generator import Generator, MemberSetup, TaskData
from zooscope.kit.finetune import architecture_record, cached_backbone

if TYPE_CHECKING:
    import numpy as np
    import torch

    from zooscope.config import ZooConfig
    from zooscope.zoo import Member

SPLITS = ("train", "validation", "test")
#: BERT's masking: of the selected tokens 80 % become [MASK], 10 % a random token, 10 % stay.
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1


def load_corpus(source: str) -> Any:
    """A ``datasets.Dataset`` with a ``text`` column, one row per document; empty ones dropped."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    local = source.startswith((".", "/", "~")) or path.suffix == ".txt"
    try:
        if local or path.is_dir():
            if not path.exists():
                raise DataError(f"no text corpus at {path}")
            files = sorted(str(p) for p in path.rglob("*.txt")) if path.is_dir() else [str(path)]
            if not files:
                raise DataError(f"{path} holds no .txt files")
            for f in files:
                _check_utf8(Path(f))
            # One document per paragraph: OpenWebText dumps separate them by blank lines.
            ds = datasets.load_dataset("text", data_files=files, split="train", sample_by="paragraph")
        else:
            name, _, split = source.partition(":")
            ds = datasets.load_dataset(name, split=split or "train")
    except DataError:
        raise
    except Exception as exc:  # datasets wraps parser and hub errors in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot load the text corpus {source!r}: {first}") from None
    if "text" not in ds.column_names:
        raise DataError(f"{source} has no 'text' column (it has {', '.join(ds.column_names)})")
    ds = ds.select_columns(["text"]).filter(
        lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    if len(ds) == 0:
        raise DataError(f"{source} holds no text")
    return ds


def _check_utf8(path: Path) -> None:
    from zooscope.kit.data import check_utf8 as check

    check(path)


def _texts(ds: Any, batch: int = 1000) -> Iterator[str]:
    for rows in ds.iter(batch_size=batch):
        yield from rows["text"]


def _fingerprint(ds: Any) -> str:
    h = hashlib.sha256()
    for text in _texts(ds):
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab: int,
                generator: torch.Generator, probability: float = 0.15
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch: inputs with replacements, labels (-100 where not predicted).

    ``special`` marks positions never selected ([CLS], [SEP], padding). Every row with
    a candidate gets at least one selected token, so no batch has an empty loss.
    """
    import torch

    probs = torch.full(input_ids.shape, probability)
    probs[special] = 0.0
    selected = torch.bernoulli(probs, generator=generator).bool()
    empty = ~selected.any(dim=1) & (~special).any(dim=1)
    if empty.any():  # choose one candidate in such rows
        first = (~special).float().argmax(dim=1)
        selected[empty, first[empty]] = True
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator)
    masked = selected & (draw < MASK_SHARE)
    randomised = selected & (draw >= MASK_SHARE) & (draw < MASK_SHARE + RANDOM_SHARE)
    inputs = input_ids.clone()
    inputs[masked] = mask_id
    random_ids = torch.randint(vocab, input_ids.shape, generator=generator)
    inputs[randomised] = random_ids[randomised]
    return inputs, labels


class MaskedLMGenerator(Generator):
    """Continues masked-LM pre-training of a backbone (its MLM head kept or initialised)."""

    name = "mlm"
    version = "1"
    description = "continued masked-LM pre-training on a text corpus (MLM loss, accuracy, perplexity)"
    default_optimizer = "adam"
    supports_overfit = False
    default_source = "Skylion007/openwebtext"
    config_keys: ClassVar[dict[str, dict[str, ConfigKey]]] = {"data": {
        "mlm_probability": ConfigKey((int, float), 0.15, "the fraction of tokens masked "
                                     "(80 % [MASK], 10 % random, 10 % kept)"),
    }}

    def _source(self, cfg: ZooConfig) -> str:
        return cfg.resolve(cfg.data.get("source", self.default_source))

    def validate(self, cfg: ZooConfig) -> None:
        source = cfg.data.get("source", self.default_source)
        resolved = Path(cfg.resolve(source)).expanduser()
        if (source.startswith((".", "/", "~")) or resolved.suffix == ".txt") and not resolved.exists():
            raise ConfigError(f"[data] source: no text corpus at {resolved}")
        p = float(self.setting(cfg, "data", "mlm_probability"))
        if not 0 < p < 1:
            raise ConfigError(f"[data] mlm_probability must be in (0, 1), got {p!r}")
        if cfg.train["max_seq_len"] < 8:
            raise ConfigError("[train] max_seq_len must be at least 8 for masked-LM blocks")

    def prepare(self, cfg: ZooConfig) -> TaskData:
        import numpy as np

        source = self._source(cfg)
        ds = load_corpus(source)
        split_cfg = cfg.data["split"]
        order = np.random.default_rng(int(split_cfg.get("seed", 0))).permutation(len(ds))
        n = len(ds)
        n_train = int(round(float(split_cfg.get("train", 0.8)) * n))
        n_val = int(round(float(split_cfg.get("validation", 0.1)) * n))
        bounds = {"train": order[:n_train], "validation": order[n_train : n_train + n_val],
                  "test": order[n_train + n_val :]}
        splits = {}
        for split, idx in bounds.items():
            if len(idx) == 0:
                raise DataError(f"the {split} split of {source} has no documents",
                                hint="use more text or change [data] split")
            splits[split] = ds.select(np.sort(idx))
        info = {"source": source, "documents": {s: len(d) for s, d in splits.items()},
                "sizes": {s: len(d) for s, d in splits.items()},
                "fingerprints": {s: _fingerprint(d) for s, d in splits.items()},
                "mlm_probability": float(self.setting(cfg, "data", "mlm_probability"))}
        columns = [f"{s}_{m}" for s in SPLITS for m in ("loss", "accuracy", "perplexity")]
        return TaskData(splits=splits, info=info, metric_columns=columns)

    def _blocks(self, cfg: ZooConfig, name: str, task: TaskData) -> tuple[Any, Any, dict[str, Any]]:
        """The backbone with its MLM head, its tokenizer, and every split packed into blocks."""

        def packed(model: Any, tok: Any) -> dict[str, Any]:
            blocks = {s: pack(d, tok, int(cfg.train["max_seq_len"]),
                              task.info["fingerprints"][s]) for s, d in task.splits.items()}
            for split, b in blocks.items():
                if len(b) == 0:
                    raise DataError(f"the {split} split holds fewer than max_seq_len = "
                                    f"{cfg.train['max_seq_len']} tokens",
                                    hint="use more text or a smaller [train] max_seq_len")
            return blocks

        return cached_backbone(cfg, task, name, lambda: _texts(task.splits["train"]), packed,
                               kind="masked-lm")

    def setup(self, cfg: ZooConfig, member: Member, task: TaskData) -> MemberSetup:
        import torch

        name = str(member.factors["backbone"])
        base, tok, blocks = self._blocks(cfg, name, task)
        model = copy.deepcopy(base)
        arch = architecture_record(name, model, model, tok, {"kind": "masked-lm"})
        train = blocks["train"]
        batch_size = cfg.batch_size_of(member)
        n = len(train)
        masking = _Masking(tok, float(self.setting(cfg, "data", "mlm_probability")))

        def batches(generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
            order = torch.randperm(n, generator=generator).tolist()
            for start in range(0, n, batch_size):
                ids = train[order[start : start + batch_size]]["input_ids"]
                yield masking(ids, generator)

        return MemberSetup(model=model, architecture=arch, train_batches=batches,
                           steps_per_epoch=(n + batch_size - 1) // batch_size,
                           state={"blocks": blocks, "masking": masking})

    def evaluate(self, cfg: ZooConfig, setup: MemberSetup, task: TaskData,
                 device: torch.device) -> tuple[dict[str, float], np.ndarray | None]:
        splits = SPLITS if cfg.train["eval_train"] else SPLITS[1:]
        return self._evaluate(cfg, setup.model, setup.state["blocks"], setup.state["masking"],
                              device, splits), None

    def evaluate_model(self, cfg: ZooConfig, task: TaskData, model: torch.nn.Module,
                       tokenizer: Any, device: torch.device, splits: tuple[str, ...] = ("test",),
                       ) -> tuple[dict[str, float], np.ndarray | None]:
        blocks = {s: pack(task.splits[s], tokenizer, int(cfg.train["max_seq_len"]),
                          task.info["fingerprints"][s]) for s in splits}
        masking = _Masking(tokenizer, float(self.setting(cfg, "data", "mlm_probability")))
        return self._evaluate(cfg, model.to(device), blocks, masking, device, splits), None

    def _evaluate(self, cfg: ZooConfig, model: torch.nn.Module, blocks: dict[str, Any],
                  masking: _Masking, device: torch.device, splits: tuple[str, ...]
                  ) -> dict[str, float]:
        import torch

        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        batch_size = int(cfg.train["eval_batch_size"])
        with torch.no_grad():
            for split in splits:
                # The same masked positions at every checkpoint: a fixed generator per split.
                generator = torch.Generator().manual_seed(7919 + SPLITS.index(split))
                data = blocks[split]
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                correct = torch.zeros((), dtype=torch.long, device=device)
                count = 0
                for start in range(0, len(data), batch_size):
                    batch = masking(data[start : start + batch_size]["input_ids"], generator)
                    labels = batch.pop("labels").to(device)
                    logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
                    chosen = labels != -100
                    picked = logits[chosen].float()
                    loss_sum += torch.nn.functional.cross_entropy(
                        picked, labels[chosen], reduction="sum").double()
                    correct += (picked.argmax(-1) == labels[chosen]).sum()
                    count += int(chosen.sum())
                loss = float(loss_sum) / max(count, 1)
                metrics[f"{split}_loss"] = loss
                metrics[f"{split}_accuracy"] = int(correct) / max(count, 1)
                metrics[f"{split}_perplexity"] = math.exp(min(loss, 700.0))
        model.train(was_training)
        return metrics


class _Masking:
    """Masks a batch of blocks for one tokenizer (special ids, [MASK] id, vocabulary size)."""

    def __init__(self, tok: Any, probability: float) -> None:
        import torch

        if tok.mask_token_id is None:
            raise ConfigError("the backbone's tokenizer has no mask token: it cannot do masked LM")
        self.special_ids = torch.as_tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)
        self.mask_id = int(tok.mask_token_id)
        self.vocab = len(tok)
        self.probability = probability

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        import torch

        special = torch.isin(input_ids, self.special_ids)
        inputs, labels = mask_tokens(input_ids, special, self.mask_id, self.vocab, generator,
                                     self.probability)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}


def pack(split: Any, tok: Any, block: int, fingerprint: str) -> Any:
    """Tokenise a split's documents and pack them into blocks of ``block`` tokens.

    Each block is the tokenizer's special tokens around ``block - specials`` tokens of
    the concatenated documents (the tail that fills no block is dropped, as BERT's
    pre-training does). The result is an Arrow dataset on disk, memory-mapped,
    cached under a fingerprint of the text, the tokenizer and the block size.
    """
    prefix, suffix = special_frame(tok)
    body = block - len(prefix) - len(suffix)
    from zooscope.kit.data import tokenizer_digest

    stem = hashlib.sha256(f"{fingerprint}:{tokenizer_digest(tok)}:{block}".encode()).hexdigest()

    def tokenise(rows: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        enc = tok(rows["text"], add_special_tokens=False, return_attention_mask=False,
                  return_token_type_ids=False, verbose=False)
        return {"ids": enc["input_ids"]}

    def group(rows: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        flat = [t for ids in rows["ids"] for t in ids]
        usable = len(flat) - len(flat) % body
        return {"input_ids": [prefix + flat[i : i + body] + suffix
                              for i in range(0, usable, body)]}

    ids = split.map(tokenise, batched=True, remove_columns=split.column_names,
                    new_fingerprint=stem[:32] + "t")
    # Groups of 1,000 documents are packed together: the tail of each group is dropped.
    blocks = ids.map(group, batched=True, batch_size=1000, remove_columns=["ids"],
                     new_fingerprint=stem[:32] + "b")
    return blocks.with_format("torch")


def special_frame(tok: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence ([CLS] … [SEP])."""
    bare = tok("a", add_special_tokens=False)["input_ids"]
    framed = tok("a")["input_ids"]
    for k in range(len(framed) - len(bare) + 1):
        if framed[k : k + len(bare)] == bare:
            return framed[:k], framed[k + len(bare) :]
    return [], []


@zooscope.hookimpl
def zooscope_register_generators(register: Any) -> None:
    register(MaskedLMGenerator())
