"""Extractive question answering on SQuAD v1.1 (``squad``): exact match and F1.

Data from the official nested JSON (``data[].paragraphs[].qas[]``), a file in the
hub's flat layout (``id, title, context, question, answers{text, answer_start}``) or
the hub itself (``rajpurkar/squad``). Questions are split 80/10/10 by paragraph, so
no context is seen in training and then tested. Long contexts are cut into windows
of ``max_seq_len`` tokens overlapping by ``[data] stride`` tokens; each question's
best span over its windows is mapped back to characters of the context. Questions
stay in an Arrow table (``SquadRows``) and windows go to the tokenised cache, so a
corpus larger than memory trains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import zooscope
from zooscope.config import ConfigKey
from zooscope.errors import ConfigError, DataError
from zooscope.generator import Generator, MemberSetup, TaskData, example_caps
from zooscope.kit.finetune import cached_backbone, collate, finetune_setup
from zooscope.record import TestSet

if TYPE_CHECKING:
    import numpy as np
    import torch

    from zooscope.config import ZooConfig
    from zooscope.zoo import Member

SPLITS = ("train", "validation", "test")
MAX_ANSWER_TOKENS = 30


COLUMNS = ("id", "title", "context", "question", "answers")


class SquadRows(Sequence):
    """Questions of a table in the flat layout at chosen rows, as dicts (id, title,
    context, question, answers, starts), read from Arrow CHUNK rows at a time; a slice
    or an array of positions gives another SquadRows."""

    def __init__(self, table: Any, rows: np.ndarray) -> None:
        self.table, self.rows = table, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) or (not isinstance(key, int) and hasattr(key, "__len__")):
            return SquadRows(self.table, self.rows[key])
        return self.read(self.rows[[key]])[0]

    def read(self, rows: np.ndarray) -> list[dict[str, Any]]:
        from zooscope.kit.data import take

        columns = {name: take(self.table.column(name), rows).to_pylist()
                   for name in self.table.column_names}
        out = []
        for r in ({k: v[i] for k, v in columns.items()} for i in range(len(rows))):
            answers = r["answers"] or {}
            out.append({"id": str(r["id"]), "title": str(r.get("title") or ""),
                        "context": r["context"], "question": r["question"],
                        "answers": list(answers.get("text") or []),
                        "starts": [int(s) for s in answers.get("answer_start") or []]})
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from zooscope.kit.data import CHUNK

        for start in range(0, len(self.rows), CHUNK):
            yield from self.read(self.rows[start : start + CHUNK])


def load_squad(source: str) -> SquadRows:
    """The questions of a data source, in file order."""
    import numpy as np
    import pyarrow as pa

    path = Path(source).expanduser()
    local = source.startswith((".", "/", "~")) or path.suffix in (".json", ".jsonl", ".parquet")
    if local and not path.exists():
        raise DataError(f"no SQuAD file at {path}")
    if local and not path.is_dir() and not path.is_file():  # a device or pipe: endless
        raise DataError(f"{path} is not a regular file")
    if local and path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(doc, dict) and "data" in doc:
            rows = _nested(doc, path)
            table = pa.table({
                "id": [r["id"] for r in rows], "title": [r["title"] for r in rows],
                "context": [r["context"] for r in rows], "question": [r["question"] for r in rows],
                "answers": [{"text": r["answers"], "answer_start": r["starts"]} for r in rows]})
            return SquadRows(table, np.arange(len(rows)))
    from zooscope.kit.data import load_table

    ds = load_table(source)
    need = {"id", "context", "question", "answers"}
    if not need <= set(ds.column_names):
        raise DataError(f"{source} is neither SQuAD's nested JSON nor its flat layout "
                        f"(columns {', '.join(sorted(need))}; it has {', '.join(ds.column_names)})")
    if getattr(ds, "_indices", None) is not None:  # a view of another table: its rows
        ds = ds.flatten_indices()
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    return SquadRows(table.select([c for c in COLUMNS if c in table.column_names]),
                     np.arange(table.num_rows))


def _nested(doc: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        for article in doc["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    rows.append({
                        "id": str(qa["id"]), "title": str(article.get("title", "")),
                        "context": para["context"], "question": qa["question"],
                        "answers": [a["text"] for a in qa["answers"]],
                        "starts": [int(a["answer_start"]) for a in qa["answers"]],
                    })
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path} does not have SQuAD's layout (data[].paragraphs[].qas[]): "
                        f"missing {exc}") from None
    if not rows:
        raise DataError(f"{path} holds no questions")
    return rows


class SquadGenerator(Generator):
    """Fine-tunes a backbone with a token-level MLP head predicting answer start and end."""

    name = "squad"
    version = "1"
    description = "SQuAD v1.1 extractive QA (exact match, F1): a start/end head on every token"
    default_source = "rajpurkar/squad"
    config_keys: ClassVar[dict[str, dict[str, ConfigKey]]] = {"data": {
        "stride": ConfigKey((int,), 128, "tokens by which the windows over a long context "
                            "overlap (less than half of max_seq_len)", minimum=1),
    }}

    def _source(self, cfg: ZooConfig) -> str:
        return cfg.resolve(cfg.data.get("source", self.default_source))

    def validate(self, cfg: ZooConfig) -> None:
        source = cfg.data.get("source", self.default_source)
        resolved = Path(cfg.resolve(source)).expanduser()
        if source.startswith((".", "/", "~")) or resolved.suffix in (".json", ".jsonl"):
            if not resolved.exists():
                raise ConfigError(f"[data] source: no SQuAD file at {resolved}")
        stride = int(self.setting(cfg, "data", "stride"))
        if not 0 < stride < cfg.train["max_seq_len"] // 2:
            raise ConfigError(f"[data] stride = {stride} must be positive and less than half of "
                              f"[train] max_seq_len = {cfg.train['max_seq_len']}")

    def prepare(self, cfg: ZooConfig) -> TaskData:
        import numpy as np
        import pyarrow.compute as pc

        source = self._source(cfg)
        rows = load_squad(source)
        for r in rows:
            for text, start in zip(r["answers"], r["starts"], strict=True):
                if r["context"][start : start + len(text)] != text:
                    raise DataError(f"question {r['id']} of {source}: answer {text!r} is not at "
                                    f"character {start} of its context")
        # Split by paragraph: every question about a context lands in the same split. The
        # contexts are ranked in sorted order (Arrow sorts by code point, as Python does)
        # and shuffled; nothing but their ranks is held per question.
        context = rows.table.column("context")
        unique = pc.unique(context)
        unique = unique.take(pc.sort_indices(unique))
        paragraph = pc.index_in(context, value_set=unique).to_numpy()[rows.rows]
        split_cfg = cfg.data["split"]
        n = len(unique)
        order = np.random.default_rng(int(split_cfg.get("seed", 0))).permutation(n)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        n_train = int(round(float(split_cfg.get("train", 0.8)) * n))
        n_val = int(round(float(split_cfg.get("validation", 0.1)) * n))
        part = np.searchsorted([n_train, n_train + n_val], rank[paragraph], side="right")
        splits: dict[str, SquadRows] = {s: rows[np.flatnonzero(part == k)]
                                        for k, s in enumerate(SPLITS)}
        for split, cap in example_caps(cfg).items():
            if cap:
                splits[split] = splits[split][:cap]
        for split in SPLITS:
            if not len(splits[split]):
                raise DataError(f"the {split} split of {source} has no questions",
                                hint="use more data or change [data] split")
            if split == "train" and not any(r["answers"] for r in splits[split]):
                raise DataError(f"the training questions of {source} have no answers")
        fingerprints = {s: _fingerprint(v) for s, v in splits.items()}
        paragraphs = {s: len(np.unique(paragraph[np.searchsorted(rows.rows, v.rows)]))
                      for s, v in splits.items()}
        info = {"source": source, "sizes": {s: len(v) for s, v in splits.items()},
                "paragraphs": paragraphs, "fingerprints": fingerprints,
                "stride": int(self.setting(cfg, "data", "stride"))}
        columns = [f"{s}_{m}" for s in SPLITS for m in ("loss", "exact_match", "f1")]
        test = list(splits["test"])
        return TaskData(splits=splits, info=info, metric_columns=columns,
                        test=TestSet(predictions={"kind": "span", "shape": [len(test), 2]},
                                     ids=[r["id"] for r in test],
                                     texts=[r["question"] for r in test],
                                     contexts=[r["context"] for r in test],
                                     answers=[r["answers"] for r in test]))

    # -- features ----------------------------------------------------------------------------
    def _encode(self, cfg: ZooConfig, tok: Any, rows: Sequence[dict[str, Any]],
                token_types: bool) -> dict[str, Any]:
        """A split's windows; from a table (``SquadRows``) through the tokenised cache,
        rows held in memory (a zoo's stored test split) in memory."""
        max_len, stride = int(cfg.train["max_seq_len"]), int(self.setting(cfg, "data", "stride"))
        if not isinstance(rows, SquadRows):
            return encode_windows(tok, list(rows), max_len, stride, token_types)
        from zooscope.kit.data import tokenizer_digest

        key = hashlib.sha256(f"squad:{_fingerprint(rows)}:{tokenizer_digest(tok)}:{max_len}:"
                             f"{stride}:{token_types}".encode()).hexdigest()
        return cached_windows(tok, rows, max_len, stride, token_types, key)

    def _backbone(self, cfg: ZooConfig, name: str, task: TaskData) -> tuple[Any, Any, dict[str, Any]]:
        from zooscope.kit.models import uses_token_types

        def encode(model: Any, tok: Any) -> dict[str, Any]:
            if not getattr(tok, "is_fast", False):
                raise ConfigError(f"backbone {name!r} has no fast tokenizer: SQuAD needs character "
                                  "offsets", hint="use a backbone with a tokenizer.json")
            types = uses_token_types(model)
            return {s: self._encode(cfg, tok, rows, types) for s, rows in task.splits.items()}

        return cached_backbone(
            cfg, task, name,
            lambda: (t for r in task.splits["train"] for t in (r["question"], r["context"])),
            encode)

    def setup(self, cfg: ZooConfig, member: Member, task: TaskData) -> MemberSetup:
        from zooscope.kit.models import QuestionAnswerer

        name = str(member.factors["backbone"])
        base, tok, encoded = self._backbone(cfg, name, task)
        setup = finetune_setup(
            cfg, member, name, base, tok, encoded,
            lambda backbone, hidden, dropout: QuestionAnswerer(backbone, hidden, dropout),
            lambda train, idx: {"start_positions": train["starts"][idx],
                                "end_positions": train["ends"][idx]})
        setup.state["rows"] = task.splits
        return setup

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, cfg: ZooConfig, setup: MemberSetup, task: TaskData,
                 device: torch.device) -> tuple[dict[str, float], np.ndarray | None]:
        splits = SPLITS if cfg.train["eval_train"] else SPLITS[1:]
        return self._evaluate(cfg, setup.model, setup.state, device, splits)

    def evaluate_model(self, cfg: ZooConfig, task: TaskData, model: torch.nn.Module,
                       tokenizer: Any, device: torch.device, splits: tuple[str, ...] = ("test",),
                       ) -> tuple[dict[str, float], np.ndarray | None]:
        from zooscope.kit.models import uses_token_types

        types = uses_token_types(model.backbone)
        state = {"encoded": {s: self._encode(cfg, tokenizer, task.splits[s], types) for s in splits},
                 "pad": int(tokenizer.pad_token_id or 0), "rows": task.splits}
        return self._evaluate(cfg, model.to(device), state, device, splits)

    def _evaluate(self, cfg: ZooConfig, model: torch.nn.Module, state: dict[str, Any],
                  device: torch.device, splits: tuple[str, ...]
                  ) -> tuple[dict[str, float], np.ndarray | None]:
        import numpy as np
        import torch

        from zooscope.kit.data import row_lengths, take_rows
        from zooscope.kit.qa import squad_scores

        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        predictions = None
        batch_size = int(cfg.train["eval_batch_size"])
        with torch.no_grad():
            for split in splits:
                data = state["encoded"][split]
                rows = state["rows"][split]
                n = len(data["input_ids"])
                best = np.full(len(rows), -np.inf)
                spans = np.zeros((len(rows), 2), dtype=np.int32)
                loss_sum = 0.0
                order = np.argsort(row_lengths(data["input_ids"]), kind="stable").tolist()
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    batch = collate(data, idx, state["pad"], start_positions=data["starts"][idx],
                                    end_positions=data["ends"][idx])
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss, s_logits, e_logits = model(**batch)
                    loss_sum += float(loss) * len(idx)
                    scores, s_tok, e_tok = best_spans(s_logits.float(), e_logits.float(),
                                                      take_rows(data["context_mask"], idx))
                    for k, i in enumerate(idx):
                        q = int(data["example"][i])
                        if scores[k] > best[q]:
                            offsets = data["offsets"][i]
                            best[q] = scores[k]
                            spans[q] = (offsets[s_tok[k]][0], offsets[e_tok[k]][1])
                answers = [r["context"][s:e] for r, (s, e) in zip(rows, spans, strict=True)]
                em, f1 = squad_scores(answers, [r["answers"] for r in rows])
                metrics[f"{split}_loss"] = loss_sum / max(n, 1)
                metrics[f"{split}_exact_match"] = em
                metrics[f"{split}_f1"] = f1
                if split == "test":
                    predictions = spans
        model.train(was_training)
        return metrics, predictions


def best_spans(start: torch.Tensor, end: torch.Tensor, context_masks: list[list[bool]],
               max_tokens: int = MAX_ANSWER_TOKENS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window, the best context span: max start + end logit with start ≤ end and at
    most ``max_tokens`` tokens. Returns scores (-inf where a window has no context) and
    the start and end token positions."""
    import torch

    rows, width = start.shape
    mask = torch.zeros((rows, width), dtype=torch.bool, device=start.device)
    for r, m in enumerate(context_masks):
        mask[r, : len(m)] = torch.as_tensor(m, dtype=torch.bool)
    neg = torch.finfo(start.dtype).min
    s = start.masked_fill(~mask, neg)
    e = end.masked_fill(~mask, neg)
    pos = torch.arange(width, device=start.device)
    band = (pos[None, :] >= pos[:, None]) & (pos[None, :] - pos[:, None] < max_tokens)
    pair = s[:, :, None] + e[:, None, :]
    pair = pair.masked_fill(~band[None], neg)
    flat = pair.view(rows, -1).argmax(dim=1)
    score = pair.view(rows, -1).gather(1, flat[:, None])[:, 0]
    score = score.masked_fill(~mask.any(dim=1), float("-inf"))
    return (score.cpu().numpy(), (flat // width).cpu().numpy(), (flat % width).cpu().numpy())


def encode_windows(tok: Any, rows: list[dict[str, Any]], max_len: int, stride: int,
                   token_types: bool) -> dict[str, Any]:
    """Question + context windows: token ids, which tokens are context, their character
    offsets, the question each window belongs to and its answer's token positions
    (the first gold answer; position 0 where the window does not hold it)."""
    import torch

    # A window must keep more than `stride` context tokens: cut overlong questions.
    room = max_len - stride - 4
    questions = [r["question"].lstrip() for r in rows]
    q_enc = tok(questions, add_special_tokens=False, return_offsets_mapping=True)
    questions = [q if len(ids) <= room else q[: offsets[room - 1][1]]
                 for q, ids, offsets in zip(questions, q_enc["input_ids"], q_enc["offset_mapping"],
                                            strict=True)]
    enc = tok(questions, [r["context"] for r in rows], truncation="only_second",
              max_length=max_len, stride=stride, return_overflowing_tokens=True,
              return_offsets_mapping=True, padding=False)
    out: dict[str, Any] = {"input_ids": enc["input_ids"], "example": [], "offsets": [],
                           "context_mask": []}
    if token_types and "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    starts, ends = [], []
    for w in range(len(enc["input_ids"])):
        q = int(enc["overflow_to_sample_mapping"][w])
        seq = enc.sequence_ids(w)
        offsets = enc["offset_mapping"][w]
        context = [s == 1 for s in seq]
        out["example"].append(q)
        out["offsets"].append([tuple(o) for o in offsets])
        out["context_mask"].append(context)
        s_tok = e_tok = 0
        row = rows[q]
        if row["answers"]:
            a_start = row["starts"][0]
            a_end = a_start + len(row["answers"][0])
            inside = [i for i, c in enumerate(context) if c]
            if inside and offsets[inside[0]][0] <= a_start and offsets[inside[-1]][1] >= a_end:
                s_tok = next(i for i in inside if offsets[i][1] > a_start)
                e_tok = next(i for i in reversed(inside) if offsets[i][0] < a_end)
        starts.append(s_tok)
        ends.append(e_tok)
    out["starts"] = torch.as_tensor(starts, dtype=torch.long)
    out["ends"] = torch.as_tensor(ends, dtype=torch.long)
    return out


def cached_windows(tok: Any, rows: SquadRows, max_len: int, stride: int, token_types: bool,
                   key: str) -> dict[str, Any]:
    """``encode_windows`` over a table of questions CHUNK questions at a time, into the
    tokenised cache: token ids, offsets and context masks stay memory-mapped; the
    question and answer positions of each window are arrays."""
    import numpy as np
    import pyarrow as pa
    import torch

    from zooscope.kit.data import Tokens, cached_table

    def chunk(start: int, stop: int) -> dict[str, Any]:
        enc = encode_windows(tok, rows.read(rows.rows[start:stop]), max_len, stride, token_types)
        ints = pa.list_(pa.int32())
        out = {"input_ids": pa.array(enc["input_ids"], type=ints),
               "example": pa.array(np.asarray(enc["example"], dtype=np.int64) + start),
               "offsets": pa.array(enc["offsets"], type=pa.list_(pa.list_(pa.int32(), 2))),
               "context_mask": pa.array(enc["context_mask"], type=pa.list_(pa.bool_())),
               "starts": pa.array(enc["starts"].numpy()), "ends": pa.array(enc["ends"].numpy())}
        if "token_type_ids" in enc:
            out["token_type_ids"] = pa.array(enc["token_type_ids"], type=ints)
        return out

    table = cached_table(key, len(rows), chunk)
    out: dict[str, Any] = {name: Tokens(table.column(name)) for name in
                           ("input_ids", "offsets", "context_mask", "token_type_ids")
                           if name in table.column_names}
    out["example"] = table.column("example").to_numpy()
    for name in ("starts", "ends"):
        out[name] = torch.from_numpy(table.column(name).to_numpy().astype(np.int64))
    return out


def _fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["id"], r["question"], r["context"], r["answers"], r["starts"]],
                            ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


@zooscope.hookimpl
def zooscope_register_generators(register: Any) -> None:
    register(SquadGenerator())
