"""The masked-LM, SQuAD and BoolQ generators, zoo:// lineage and epoch sharing, offline.

Backbones are tiny BERT, DistilBERT and RoBERTa models built from configs here, with
tokenizers trained in the test; data are small files written by the tests.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import zooscope
from zooscope import registry
from zooscope.config import load_config
from zooscope.engine import build_zoo, member_list
from zooscope.kit.synthetic import NEGATIVE, NOUNS, POSITIVE, synthetic_sentiment
from zooscope.lineage import expand_parents
from zooscope.services.results import run_analysis

from .conftest import run_cli, write_config

MODEL_TYPES = ("bert", "distilbert", "roberta")


def corpus_texts(n: int = 600) -> list[str]:
    return [t for t, _ in synthetic_sentiment(n)]


@pytest.fixture(scope="session")
def backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny pre-trained-style model directories (config, weights with an MLM head, tokenizer)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        AutoModelForMaskedLM,
        BertConfig,
        DistilBertConfig,
        RobertaConfig,
        RobertaTokenizerFast,
    )

    from zooscope.kit.models import train_wordpiece

    texts = corpus_texts(2000) + [q for q, _ in squad_questions()]
    root = tmp_path_factory.mktemp("backbones")
    out = {}
    for kind in MODEL_TYPES:
        folder = root / kind
        folder.mkdir()
        if kind == "roberta":
            bpe = ByteLevelBPETokenizer()
            bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                                    special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
            bpe.save_model(str(folder))
            merges = (folder / "merges.txt").read_text().splitlines()[1:]
            tok = RobertaTokenizerFast(
                vocab=json.loads((folder / "vocab.json").read_text()),
                merges=[tuple(m.split()) for m in merges if m.strip()])
            assert len(tok) > 300
            config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64,
                                   max_position_embeddings=140, type_vocab_size=1,
                                   pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id)
        else:
            tok = train_wordpiece(texts, 300)
            config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=140, pad_token_id=tok.pad_token_id) \
                if kind == "bert" else DistilBertConfig(
                    vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                    max_position_embeddings=140, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
        tok.save_pretrained(folder)
        out[kind] = folder
    return out


# -- masked LM -------------------------------------------------------------------------------
MLM_CONFIG = """\
[zoo]
name = "pretext"
generator = "mlm"
backbone = "{backbone}"
seeds = [0]
epochs = 2

[grid]
learning_rate = [2e-3]
weight_decay = [0.01, 0.0]

[train]
batch_size = 16
max_seq_len = 24
num_threads = 1

[data]
source = "corpus.txt"
"""


def write_corpus(folder: Path) -> Path:
    texts = corpus_texts(1500)
    paragraphs = ["\n".join(texts[i : i + 5]) for i in range(0, len(texts), 5)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def test_mask_tokens_follows_bert_80_10_10() -> None:
    from zooscope.generators.mlm import mask_tokens

    ids = torch.randint(10, 1000, (400, 128))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    inputs, labels = mask_tokens(ids, special, mask_id=3, vocab=1000,
                                 generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[special].any()
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.sum().item() / (~special).sum().item()
    assert rate == pytest.approx(0.15, abs=0.005)
    masked = (inputs == 3) & chosen
    kept = (inputs == ids) & chosen
    assert masked.sum().item() / chosen.sum().item() == pytest.approx(0.8, abs=0.01)
    # "random" replacements can draw the original id (1 in 1000), counted as kept here
    assert kept.sum().item() / chosen.sum().item() == pytest.approx(0.1 + 0.1 / 1000, abs=0.01)
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing else changes


def test_blocks_are_the_concatenated_documents(tmp_path: Path, backbones: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from zooscope.generators.mlm import load_corpus, pack

    write_corpus(tmp_path)
    ds = load_corpus(str(tmp_path / "corpus.txt"))
    assert len(ds) == 300  # one document per paragraph
    for kind in ("bert", "roberta"):
        tok = AutoTokenizer.from_pretrained(backbones[kind])
        blocks = pack(ds, tok, 24, f"test-{kind}")
        flat = [t for text in ds["text"] for t in tok(text, add_special_tokens=False)["input_ids"]]
        first, last = (tok.cls_token_id, tok.sep_token_id)
        body = 22
        assert len(blocks) == len(flat) // body  # one group of documents: one tail dropped
        rows = blocks[:3]["input_ids"]
        assert rows.shape == (3, 24)
        assert (rows[:, 0] == first).all() and (rows[:, -1] == last).all()
        # Packing keeps the token stream: the first block is its first 22 tokens.
        assert rows[0, 1:-1].tolist() == flat[:body]


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_mlm_generator_end_to_end(tmp_path: Path, backbones: dict[str, Path], kind: str) -> None:
    from zooscope.kit.models import rebuild
    from zooscope.services.evaluation import Evaluator

    write_corpus(tmp_path)
    cfg = load_config(write_config(tmp_path, MLM_CONFIG.format(backbone=backbones[kind]), "p.toml"))
    out = tmp_path / "pretext.h5"
    build_zoo(cfg, out)
    with zooscope.open_zoo(out) as zoo:
        assert zoo.prediction_kind() is None
        cps = zoo.checkpoints()
        assert [c.epoch for c in cps] == [0, 1, 2] * 2
        for c in cps:
            for split in ("train", "validation", "test"):
                loss = c.metrics[f"{split}_loss"]
                assert c.metrics[f"{split}_perplexity"] == pytest.approx(math.exp(loss))
                assert 0 <= c.metrics[f"{split}_accuracy"] <= 1
        # Validation loss falls from the starting backbone with the higher learning rate.
        m = zoo.members()[0]
        losses = [c.metrics["validation_loss"] for c in zoo.checkpoints([m])]
        assert losses[-1] < losses[0]
        # The model rebuilt from the file alone evaluates to the stored test metrics.
        model, tok = rebuild(zoo, m, 2)
        assert type(model).__name__.endswith("ForMaskedLM")
        metrics, _ = Evaluator(zoo).evaluate(model, tok)
        stored = zoo.checkpoints([m], [2])[0].metrics
        assert metrics["test_loss"] == pytest.approx(stored["test_loss"], rel=1e-5)
        assert metrics["test_accuracy"] == pytest.approx(stored["test_accuracy"], abs=1e-9)


def test_mlm_refuses_a_missing_corpus_and_an_empty_one(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, MLM_CONFIG.format(backbone="scratch"), "p.toml")
    proc = run_cli("generate", str(cfg), "--out", str(tmp_path / "p.h5"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: [data] source: no text corpus at")
    (tmp_path / "corpus.txt").write_text("\n\n  \n")
    proc = run_cli("generate", str(cfg), "--out", str(tmp_path / "p.h5"))
    assert proc.returncode == 1 and "holds no text" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "p.h5").exists()


# -- lineage -----------------------------------------------------------------------------------
DOWNSTREAM = """\
[zoo]
name = "down"
generator = "sst2"
backbone = "{backbone}"
seeds = [0]
epochs = 1

[grid]
learning_rate = [1e-3]

[train]
batch_size = 32
max_seq_len = 24
num_threads = 1

[data]
source = "synthetic:sentiment:200"
"""


@pytest.fixture(scope="module")
def pretext_zoo(tmp_path_factory: pytest.TempPathFactory, backbones: dict[str, Path]) -> Path:
    folder = tmp_path_factory.mktemp("pretext")
    write_corpus(folder)
    build_zoo(load_config(write_config(folder, MLM_CONFIG.format(backbone=backbones["bert"]),
                                       "p.toml")), folder / "pretext.h5")
    return folder / "pretext.h5"


def checkpoint_digests(path: Path) -> dict[tuple[str, int], str]:
    """Each checkpoint's digest as docs/format.md defines it, read with plain h5py: SHA-256
    over the canonical JSON of member id, factors, epoch and the stored tensor digests."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        ids = f["members/id"].asstr()[()]
        factors = [json.loads(s) for s in f["members/factors"].asstr()[()]]
        for row in f["checkpoints/index"][()]:
            arch = f[f"architectures/a{row['architecture']}"]
            names = json.loads(arch.attrs["tensor_names"])
            digests = arch["digests"][row["arch_row"]]
            record = {"member": ids[row["member"]], "factors": factors[row["member"]],
                      "epoch": int(row["epoch"]),
                      "tensors": {n: d.decode() for n, d in zip(names, digests, strict=True)}}
            text = json.dumps(record, sort_keys=True, separators=(",", ":"))
            out[(ids[row["member"]], int(row["epoch"]))] = hashlib.sha256(text.encode()).hexdigest()
    return out


def test_selectors_expand_and_members_record_their_lineage(pretext_zoo: Path) -> None:
    folder = pretext_zoo.parent
    digests = checkpoint_digests(pretext_zoo)
    with zooscope.open_zoo(pretext_zoo) as parent:
        ids = [m.id for m in parent.members()]
        wd0 = next(m.id for m in parent.members() if m.factors["weight_decay"] == 0.0)
    cases = {"zoo://pretext.h5#epoch=*": [(i, e) for i in ids for e in (0, 1, 2)],
             "zoo://pretext.h5#epoch=last": [(i, 2) for i in ids],
             f"zoo://pretext.h5#member={ids[1]}": [(ids[1], e) for e in (0, 1, 2)],
             "zoo://pretext.h5#weight_decay=0.0&epoch=1": [(wd0, 1)],
             f"zoo://pretext.h5#member={ids[0]}&epoch=2": [(ids[0], 2)]}
    for ref, want in cases.items():
        cfg = load_config(write_config(folder, DOWNSTREAM.format(backbone=ref), "d.toml"))
        assert {m.factors["backbone"] for m in cfg.members()} == {ref}  # nothing read yet
        expand_parents(cfg)
        members = cfg.members()
        got = [(m.lineage["member"], m.lineage["epoch"]) for m in members]
        assert got == want, ref
        assert [m.lineage["checkpoint"] for m in members] == [digests[w] for w in want]
        assert [m.factors["backbone"] for m in members] == [
            f"zoo://pretext.h5#member={i}&epoch={e}" for i, e in want]


def test_downstream_zoo_starts_from_the_pretext_checkpoints(pretext_zoo: Path, tmp_path: Path
                                                            ) -> None:
    import shutil

    shutil.copy(pretext_zoo, tmp_path / "pretext.h5")
    cfg = load_config(write_config(tmp_path, DOWNSTREAM.format(
        backbone="zoo://pretext.h5#epoch=0,2"), "d.toml"))
    out = tmp_path / "down.h5"
    build_zoo(cfg, out)
    digests = checkpoint_digests(tmp_path / "pretext.h5")
    with zooscope.open_zoo(tmp_path / "pretext.h5") as parent, zooscope.open_zoo(out) as zoo:
        members = zoo.members()
        assert len(members) == 4  # 2 pretext members x 2 epochs
        for m in members:
            lin = m.lineage
            assert lin["checkpoint"] == digests[(lin["member"], lin["epoch"])]
            start = zoo.state_dict(m, 0)
            source = parent.state_dict(lin["member"], lin["epoch"])
            for name, value in start.items():
                if name.startswith("backbone."):
                    torch.testing.assert_close(value, source["bert." + name.removeprefix(
                        "backbone.")], rtol=0, atol=0)
    listed = json.loads(run_cli("zoo", "ls", str(out), "--json").stdout)
    assert [r["factors"]["backbone"] for r in listed] == [m.factors["backbone"] for m in members]


def test_lineage_survives_changes_elsewhere_in_the_parent_but_not_a_changed_tensor(
        pretext_zoo: Path, tmp_path: Path) -> None:
    import shutil

    import h5py

    parent = tmp_path / "pretext.h5"
    shutil.copy(pretext_zoo, parent)
    with zooscope.open_zoo(parent) as zoo:
        first = zoo.members()[0].id
    ref = f"zoo://pretext.h5#member={first}&epoch=2"
    config = write_config(tmp_path, DOWNSTREAM.format(backbone=ref), "d.toml")
    before = expand_parents(load_config(config)).members()[0].lineage["checkpoint"]
    # Analyses and attributes change the parent file, not the checkpoint.
    with h5py.File(parent, "r+") as f:
        f.attrs["note"] = "analysed by someone else"
        f.create_group("analyses/other/k0").attrs["summary"] = "x"
    run = run_cli("generate", str(config), "--out", str(tmp_path / "d.h5"), "--json",
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    with zooscope.open_zoo(tmp_path / "d.h5") as down:
        assert down.members()[0].lineage["checkpoint"] == before
    # One changed byte of a tensor the downstream zoo starts from: one clear error.
    with h5py.File(parent, "r+") as f:
        ids = list(f["members/id"].asstr()[()])
        index = f["checkpoints/index"][()]
        row = index[(index["member"] == ids.index(first)) & (index["epoch"] == 2)][0]
        arch = f[f"architectures/a{row['architecture']}"]
        names = json.loads(arch.attrs["tensor_names"])
        name = next(n for n in names if n.endswith("attention.self.query.weight"))
        ds = arch["tensors"][name]
        k = int(arch["rows"][row["arch_row"], names.index(name)])
        values = ds[k]
        values.reshape(-1).view(np.uint8)[5] ^= 1
        ds[k] = values
    bad = run_cli("generate", str(config), "--out", str(tmp_path / "d2.h5"), cwd=tmp_path)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: backbone ") and name in lines[0] and \
        "does not match its stored digest" in lines[0], bad.stderr
    assert lines[1].startswith("hint: the parent zoo is damaged")
    assert "Traceback" not in bad.stderr and not (tmp_path / "d2.h5").exists()


def test_bad_zoo_references_are_one_error_line(pretext_zoo: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copy(pretext_zoo, tmp_path / "pretext.h5")
    cases = {
        "zoo://missing.h5#epoch=last": "no zoo file at",
        "zoo://pretext.h5#member=mnope&epoch=1": "has no member 'mnope'",
        "zoo://pretext.h5#epoch=soon": "epoch must be numbers",
        "zoo://pretext.h5#epoch=9": "selects no checkpoint",
        "zoo://pretext.h5#nonsense": "is not key=value",
    }
    for ref, text in cases.items():
        cfg = write_config(tmp_path, DOWNSTREAM.format(backbone=ref), "d.toml")
        proc = run_cli("generate", str(cfg), "--out", str(tmp_path / "d.h5"))
        assert proc.returncode == 1, ref
        assert proc.stderr.startswith("error: ") and text in proc.stderr, (ref, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / "d.h5").exists()


# -- SQuAD -------------------------------------------------------------------------------------
def test_squad_normalisation_and_scores_by_hand() -> None:
    from zooscope.kit.qa import best_over_truths, exact_match, f1_score, normalize_answer, squad_scores

    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("Theater") == "theater"  # articles only as whole words
    assert exact_match("the Broncos", "Broncos.") == 1.0
    # pred "denver broncos team" vs gold "broncos": overlap 1, P 1/3, R 1 -> F1 0.5
    assert f1_score("Denver Broncos team", "the Broncos") == pytest.approx(0.5)
    # pred "carolina panthers" vs "panthers carolina" -> bag of words equal -> F1 1, EM 0
    assert f1_score("Carolina Panthers", "Panthers Carolina") == 1.0
    assert exact_match("Carolina Panthers", "Panthers Carolina") == 0.0
    assert f1_score("", "x") == 0.0 and f1_score("a", "the") == 0.0
    # max over the gold answers
    assert best_over_truths("Santa Clara", ["Levi's Stadium", "Santa Clara, California"]) == \
        (0.0, pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3)))
    em, f1 = squad_scores(["Denver Broncos", "1990"], [["Denver Broncos"], ["1991", "in 1990"]])
    assert em == 0.5 and f1 == pytest.approx((1 + 2 * 1 * 0.5 / 1.5) / 2)


def squad_questions(n_contexts: int = 90, seed: int = 0) -> list[tuple[str, str]]:
    """(question, context) pairs of a learnable toy QA task, with answers in contexts."""
    rows = squad_rows(n_contexts, seed)
    return [(r["question"], r["context"]) for r in rows]


def squad_rows(n_contexts: int = 90, seed: int = 0) -> list[dict]:
    """Contexts of four sentences, one judging a noun with an adjective; the question asks
    how that noun was. Small enough a one-layer model learns it in a few epochs."""
    rng = random.Random(seed)
    rows = []
    for c in range(n_contexts):
        nouns = rng.sample(NOUNS, 8)
        sentences = [f"the {a} had a {b}." for a, b in zip(nouns[:4], nouns[4:], strict=True)]
        adj = rng.choice(POSITIVE + NEGATIVE)
        k = rng.randrange(4)
        sentences[k] = f"the {nouns[k]} was {adj}."
        context = " ".join(sentences)
        start = context.index(f" was {adj}.") + len(" was ")
        rows.append({"id": f"c{c}", "title": f"t{c % 7}", "context": context,
                     "question": f"how was the {nouns[k]}?", "answers": [adj], "starts": [start]})
        for q, other in enumerate(rng.sample(range(4), 2)):  # a second question on another noun
            if other == k:
                continue
            sentences2 = list(sentences)
            adj2 = rng.choice(POSITIVE + NEGATIVE)
            sentences2[k] = f"the {nouns[k]} had a {nouns[4 + k]}."
            sentences2[other] = f"the {nouns[other]} was {adj2}."
            context2 = " ".join(sentences2)
            start2 = context2.index(f" was {adj2}.") + len(" was ")
            rows.append({"id": f"c{c}q{q}", "title": f"t{c % 7}", "context": context2,
                         "question": f"how was the {nouns[other]}?", "answers": [adj2],
                         "starts": [start2]})
    return rows


def write_squad(folder: Path) -> tuple[Path, Path]:
    """The same questions as the official nested JSON and as the hub's flat JSON lines."""
    rows = squad_rows()
    articles: dict[str, dict] = {}
    for r in rows:
        art = articles.setdefault(r["title"], {"title": r["title"], "paragraphs": []})
        if not art["paragraphs"] or art["paragraphs"][-1]["context"] != r["context"]:
            art["paragraphs"].append({"context": r["context"], "qas": []})
        art["paragraphs"][-1]["qas"].append({"id": r["id"], "question": r["question"], "answers": [
            {"text": t, "answer_start": s} for t, s in zip(r["answers"], r["starts"], strict=True)]})
    nested = folder / "squad.json"
    nested.write_text(json.dumps({"version": "1.1", "data": list(articles.values())}))
    flat = folder / "squad.jsonl"
    with open(flat, "w") as fh:
        for r in rows:
            fh.write(json.dumps({"id": r["id"], "title": r["title"], "context": r["context"],
                                 "question": r["question"], "answers": {
                                     "text": r["answers"], "answer_start": r["starts"]}}) + "\n")
    return nested, flat


def test_nested_and_flat_squad_load_alike(tmp_path: Path) -> None:
    from zooscope.generators.squad import load_squad

    nested, flat = write_squad(tmp_path)
    a = sorted(load_squad(str(nested)), key=lambda r: r["id"])
    b = sorted(load_squad(str(flat)), key=lambda r: r["id"])
    assert a == b and len(a) == len(squad_rows())


def test_windows_locate_the_answer(backbones: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from zooscope.generators.squad import encode_windows
    from zooscope.kit.qa import normalize_answer

    rows = squad_rows(10)
    for kind in MODEL_TYPES:
        tok = AutoTokenizer.from_pretrained(backbones[kind])
        enc = encode_windows(tok, rows, 24, 6, token_types=False)
        covered = set()
        for w in range(len(enc["input_ids"])):
            s, e = int(enc["starts"][w]), int(enc["ends"][w])
            if s == 0:
                continue
            r = rows[enc["example"][w]]
            offsets = enc["offsets"][w]
            text = r["context"][offsets[s][0] : offsets[e][1]]
            assert normalize_answer(text) == normalize_answer(r["answers"][0]), kind
            covered.add(enc["example"][w])
        assert len(enc["input_ids"]) > len(rows)  # long contexts were split into windows
        assert covered == set(range(len(rows)))  # every answer lies in some window


def test_cached_windows_equal_windows_made_in_memory(tmp_path: Path,
                                                    backbones: dict[str, Path]) -> None:
    """Questions read from a table go through the tokenised cache (in chunks, with each
    chunk's question numbers offset); the same questions as a list are encoded in
    memory. Every window's ids, types, offsets, mask, question and answer agree."""
    from transformers import AutoTokenizer

    from zooscope.generators.squad import cached_windows, encode_windows, load_squad
    from zooscope.kit import data
    from zooscope.kit.data import take_rows

    nested, _ = write_squad(tmp_path)
    rows = load_squad(str(nested))
    tok = AutoTokenizer.from_pretrained(backbones["bert"])
    chunk = data.CHUNK
    data.CHUNK = 7  # several chunks from a small file
    try:
        cached = cached_windows(tok, rows, 24, 6, True, "w" * 64)
    finally:
        data.CHUNK = chunk
    whole = encode_windows(tok, list(rows), 24, 6, token_types=True)
    n = len(whole["input_ids"])
    assert len(cached["input_ids"]) == n > len(rows)
    every = list(range(n))
    assert set(cached) == set(whole)
    for name in {"input_ids", "token_type_ids", "context_mask"} & set(whole):
        assert take_rows(cached[name], every) == [list(r) for r in whole[name]], name
    assert [[tuple(o) for o in cached["offsets"][i]] for i in every] == whole["offsets"]
    assert cached["example"].tolist() == whole["example"]
    for name in ("starts", "ends"):
        assert torch.equal(cached[name], whole[name]), name


SQUAD_CONFIG = """\
[zoo]
name = "squad"
generator = "squad"
backbone = "{backbone}"
seeds = [0, 1]
epochs = 2

[grid]
learning_rate = [3e-3]

[train]
batch_size = 16
max_seq_len = 48
num_threads = 1

[data]
source = "{source}"
stride = 8
"""


@pytest.mark.parametrize("kind", MODEL_TYPES)
def test_squad_generator_end_to_end(tmp_path: Path, backbones: dict[str, Path], kind: str) -> None:
    from zooscope.kit.models import rebuild
    from zooscope.kit.qa import squad_scores
    from zooscope.services.evaluation import Evaluator

    nested, _ = write_squad(tmp_path)
    cfg = load_config(write_config(tmp_path, SQUAD_CONFIG.format(
        backbone=backbones[kind], source=nested.name), "s.toml"))
    out = tmp_path / "squad.h5"
    build_zoo(cfg, out)
    with zooscope.open_zoo(out) as zoo:
        assert zoo.prediction_kind() == "span"
        gold = zoo.test_answers()
        contexts = zoo.test_contexts()
        assert len(gold) == len(contexts) == zoo.record().test.predictions["shape"][0]
        cps = zoo.checkpoints()
        spans = zoo.predictions(cps)
        for c, row, answers in zip(cps, spans, zoo.predicted_answers(cps), strict=True):
            # the stored spans reproduce the stored test scores
            assert answers == [ctx[s:e] for ctx, (s, e) in zip(contexts, row, strict=True)]
            em, f1 = squad_scores(answers, gold)
            assert em == pytest.approx(c.metrics["test_exact_match"])
            assert f1 == pytest.approx(c.metrics["test_f1"])
        first, last = zoo.checkpoints(epochs=[0]), zoo.checkpoints(epochs=[2])
        assert max(c.metrics["test_f1"] for c in first) < 0.5
        assert min(c.metrics["test_f1"] for c in last) > 0.6  # the toy task is learnt
        m = zoo.members()[0]
        model, tok = rebuild(zoo, m, 2)
        metrics, preds = Evaluator(zoo).evaluate(model, tok)
        np.testing.assert_array_equal(preds, zoo.predictions(zoo.checkpoints([m], [2]))[0])


def test_squad_example_caps_cut_each_split(tmp_path: Path) -> None:
    nested, _ = write_squad(tmp_path)
    text = SQUAD_CONFIG.format(backbone="scratch", source=nested.name)
    full = registry.get_generator("squad").prepare(load_config(write_config(tmp_path, text, "a.toml")))
    capped = text.replace("num_threads = 1", "num_threads = 1\nmax_train_examples = 3\n"
                          "max_eval_examples = 2")
    cut = registry.get_generator("squad").prepare(load_config(write_config(tmp_path, capped, "b.toml")))
    assert cut.info["sizes"] == {"train": 3, "validation": 2, "test": 2}
    assert min(full.info["sizes"].values()) > 3
    for split in ("train", "validation", "test"):  # the first questions of each split are kept
        n = cut.info["sizes"][split]
        assert [r["id"] for r in cut.splits[split]] == [r["id"] for r in full.splits[split][:n]]
    assert cut.test.ids == [r["id"] for r in full.splits["test"][:2]]


def test_agreement_on_answers_matches_pairwise_scores(tmp_path: Path,
                                                      backbones: dict[str, Path]) -> None:
    from zooscope.kit.qa import exact_match, f1_score

    _, flat = write_squad(tmp_path)
    cfg = load_config(write_config(tmp_path, SQUAD_CONFIG.format(
        backbone=backbones["bert"], source=flat.name).replace("epochs = 2", "epochs = 1")
        .replace("learning_rate = [3e-3]", "learning_rate = [1e-3]"), "s.toml"))
    out = tmp_path / "squad.h5"
    build_zoo(cfg, out)
    result = run_analysis(out, registry.get_analyzer("agreement"), [], None, None,
                          tmp_path / "agreement", force=False)
    pairs = result.tables["pairs"]
    assert pairs["epoch"] == [0, 1]
    with zooscope.open_zoo(out) as zoo:
        for k, epoch in enumerate(pairs["epoch"]):
            cps = zoo.checkpoints(epochs=[epoch])
            answers = dict(zip([c.member for c in cps], zoo.predicted_answers(cps), strict=True))
            a, b = answers[pairs["member_a"][k]], answers[pairs["member_b"][k]]
            em = np.mean([exact_match(x, y) for x, y in zip(a, b, strict=True)])
            f1 = np.mean([f1_score(x, y) if (x.strip() or y.strip()) else 1.0
                          for x, y in zip(a, b, strict=True)])
            assert pairs["agreement"][k] == pytest.approx(em)
            assert pairs["f1"][k] == pytest.approx(f1)
    assert 0 < pairs["f1"][0] < 1 or 0 < pairs["f1"][1] < 1  # partial overlap was compared


# -- BoolQ, shared epochs, backbones -----------------------------------------------------------
BOOLQ_CONFIG = """\
[zoo]
name = "boolq"
generator = "boolq"
seeds = [0]

[grid]
backbone = [{backbones}]
learning_rate = [1e-3, 3e-3]
epochs = [1, 2]

[train]
batch_size = 16
max_seq_len = 40
num_threads = 1

[data]
source = "boolq.jsonl"
"""


def write_boolq(folder: Path, n: int = 240, seed: int = 0) -> Path:
    """Yes/no questions whose answer is in the passage: "was the plot good?"."""
    rng = random.Random(seed)
    path = folder / "boolq.jsonl"
    with open(path, "w") as fh:
        for _ in range(n):
            noun, adj = rng.choice(NOUNS), rng.choice(POSITIVE + NEGATIVE)
            other = rng.choice(NOUNS)
            passage = f"the {noun} was {adj}. the {other} was {rng.choice(POSITIVE + NEGATIVE)}."
            fh.write(json.dumps({"question": f"was the {noun} good", "title": "t",
                                 "passage": passage, "answer": adj in POSITIVE}) + "\n")
    return path


def test_boolq_on_three_architectures_shares_epochs_and_compares_backbones(
        tmp_path: Path, backbones: dict[str, Path]) -> None:
    write_boolq(tmp_path)
    names = ", ".join(f'"{backbones[k]}"' for k in MODEL_TYPES)
    cfg = load_config(write_config(tmp_path, BOOLQ_CONFIG.format(backbones=names), "b.toml"))
    members = member_list(cfg)
    assert len(members) == 12
    short = [m for m in members if m.factors["epochs"] == 1]
    assert all(m.lineage["checkpoints_from"] for m in short)
    out = tmp_path / "boolq.h5"
    result = build_zoo(cfg, out)
    assert (result.trained, result.shared) == (6, 6)
    with zooscope.open_zoo(out) as zoo:
        by_id = {m.id: m for m in zoo.members()}
        for m in short:
            source = by_id[m.lineage["checkpoints_from"]]
            for e in (0, 1):
                a, b = zoo.state_dict(m, e), zoo.state_dict(source, e)
                assert all(torch.equal(a[k], b[k]) for k in a)
                assert zoo.checkpoints([m], [e])[0].metrics == zoo.checkpoints([source], [e])[0].metrics
        rows = zoo.metrics_table([zoo.checkpoints([m])[-1] for m in zoo.members()])
    # The analyzer's choice, recomputed by hand: per backbone the best dev accuracy.
    analysis = run_analysis(out, registry.get_analyzer("backbones"), [], None, None,
                            tmp_path / "backbones", force=False)
    best = analysis.tables["best"]
    assert sorted(best["backbone"]) == sorted(str(backbones[k]) for k in MODEL_TYPES)
    for i, backbone in enumerate(best["backbone"]):
        mine = [r for r in rows if r["backbone"] == backbone]
        assert best["dev_accuracy"][i] == pytest.approx(max(r["validation_accuracy"] for r in mine))
        chosen = next(r for r in mine if r["learning_rate"] == best["learning_rate"][i]
                      and r["epochs"] == best["epochs"][i])
        assert best["dev_accuracy"][i] == pytest.approx(chosen["validation_accuracy"])
        assert best["test_accuracy"][i] == pytest.approx(chosen["test_accuracy"])
    assert (tmp_path / "backbones" / "backbones.png").stat().st_size > 1000
    # Every two backbones compared, higher-ranked first; with one seed the bootstrap
    # resamples test examples only: the paired difference, recomputed with numpy.
    comparisons = analysis.tables["comparisons"]
    rank = list(best["backbone"])
    assert [(rank.index(a), rank.index(b)) for a, b in zip(
        comparisons["backbone"], comparisons["versus"], strict=True)] == [(0, 1), (0, 2), (1, 2)]
    with zooscope.open_zoo(out) as zoo:
        labels = zoo.test_labels()
        correct = {}
        for i, backbone in enumerate(best["backbone"]):
            m = zoo.members(backbone=backbone, learning_rate=best["learning_rate"][i],
                            epochs=best["epochs"][i])
            correct[backbone] = zoo.predictions(zoo.checkpoints(m)[-1:])[0] == labels
    rng = np.random.default_rng(0)  # the default bootstrap_seed, 1000 replicates
    draws = rng.integers(0, len(labels), size=(1000, len(labels)))
    for k, (a, b) in enumerate(zip(comparisons["backbone"], comparisons["versus"], strict=True)):
        delta = correct[a][draws].mean(axis=1) - correct[b][draws].mean(axis=1)
        assert comparisons["difference_accuracy"][k] == pytest.approx(
            correct[a].mean() - correct[b].mean())
        assert comparisons["p_better"][k] == pytest.approx(np.mean(delta > 0))
        assert (comparisons["difference_low"][k], comparisons["difference_high"][k]) == \
            pytest.approx(tuple(np.percentile(delta, [2.5, 97.5])))


def test_shared_epochs_equal_training_them_again(tmp_path: Path) -> None:
    write_boolq(tmp_path)
    text = BOOLQ_CONFIG.format(backbones='"scratch"').replace(
        "learning_rate = [1e-3, 3e-3]", "learning_rate = [1e-3]") + (
        "\n[scratch]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n"
        "intermediate_size = 64\nvocab_size = 200\n")
    shared = tmp_path / "shared.h5"
    alone = tmp_path / "alone.h5"
    build_zoo(load_config(write_config(tmp_path, text, "a.toml")), shared)
    build_zoo(load_config(write_config(tmp_path, text.replace(
        "num_threads = 1", "num_threads = 1\nshare_epochs = false"), "b.toml")), alone)
    with zooscope.open_zoo(shared) as a, zooscope.open_zoo(alone) as b:
        assert [m.id for m in a.members()] == [m.id for m in b.members()]
        for m in a.members():
            for c in a.checkpoints([m]):
                x, y = a.state_dict(m, c.epoch), b.state_dict(m, c.epoch)
                assert all(torch.equal(x[k], y[k]) for k in x), (m.factors, c.epoch)
                assert c.metrics == b.checkpoints([m], [c.epoch])[0].metrics
    # Trained alone, the identical tensors are deduplicated too, but each checkpoint has
    # its own row of tensor pointers; shared ones point at the longer run's.
    import h5py

    with h5py.File(shared, "r") as a, h5py.File(alone, "r") as b:
        assert len(a["checkpoints/index"]) == len(b["checkpoints/index"]) == 5
        assert len(a["architectures/a0/rows"]) == 3 and len(b["architectures/a0/rows"]) == 5


@pytest.mark.slow
def test_overfit_passes_a_demo_like_config_and_fails_broken_ones(tmp_path: Path) -> None:
    from .conftest import TINY_CONFIG

    # The demo's set-up in small: scratch BERT, batch size 32, its smallest learning rate.
    base = TINY_CONFIG.replace("learning_rate = [3e-4, 1e-3]", "learning_rate = [2e-4, 5e-4]")
    ok = run_cli("generate", str(write_config(tmp_path, base, "ok.toml")), "--overfit", "--json",
                 cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert (report["examples"], report["epochs"], report["batch_size"]) == (10, 20, 1)
    assert report["backbones"][0]["learning_rate"] == 2e-4
    assert report["backbones"][0]["train_accuracy"] == 1.0
    assert ok.stderr.strip().splitlines()[-1] == "ok: every backbone fits 10 examples " \
        "(train_accuracy = 1)"
    broken = {"lr": base.replace("learning_rate = [2e-4, 5e-4]", "learning_rate = [1e-9]"),
              # Only [CLS] [SEP] survive truncation: every example looks alike.
              "blind": base.replace("max_seq_len = 32", "max_seq_len = 2")}
    for what, text in broken.items():
        proc = run_cli("generate", str(write_config(tmp_path, text, f"{what}.toml")), "--overfit",
                       "--json", cwd=tmp_path)
        assert proc.returncode == 1, (what, proc.stderr)
        accuracy = json.loads(proc.stdout)["backbones"][0]["train_accuracy"]
        assert accuracy < 1.0, what
        lines = proc.stderr.strip().splitlines()
        assert lines[-2].startswith("error: 1 of 1 backbones did not fit 10 training examples "
                                    "in 20 epochs (train_accuracy "), (what, proc.stderr)
        assert lines[-1].startswith("hint: a model that cannot memorise 10 examples")
    assert not list(tmp_path.glob("*.h5"))


def test_plugins_lists_the_generators_and_the_backbones_analyzer() -> None:
    proc = run_cli("plugins", "--all", "--json")
    assert proc.returncode == 0
    names = {(kind, name) for p in json.loads(proc.stdout)
             for kind, provided in p["provides"].items() for name in provided}
    for item in [("generator", "mlm"), ("generator", "squad"), ("generator", "boolq"),
                 ("analyzer", "backbones")]:
        assert item in names


# -- member ids --------------------------------------------------------------------------------
def test_member_ids_cover_data_backbone_and_training_settings(tmp_path: Path) -> None:
    from .conftest import TINY_CONFIG

    def ids(text: str, name: str) -> dict[str, str]:
        members = member_list(load_config(write_config(tmp_path, text, name)))
        return {json.dumps(m.factors, sort_keys=True): m.id for m in members}

    base = ids(TINY_CONFIG, "base.toml")
    assert base == ids(TINY_CONFIG, "again.toml")  # same config, same ids
    variants = {
        "data": TINY_CONFIG.replace("synthetic:sentiment:400", "synthetic:sentiment:500"),
        "backbone": TINY_CONFIG.replace("hidden_size = 32", "hidden_size = 16"),
        "max_seq_len": TINY_CONFIG.replace("max_seq_len = 32", "max_seq_len = 24"),
        "epochs": TINY_CONFIG.replace("epochs = 2", "epochs = 3"),
    }
    for what, text in variants.items():
        other = ids(text, f"{what}.toml")
        assert set(other) == set(base), what  # the same factors ...
        assert not set(other.values()) & set(base.values()), what  # ... other ids
    # What changes no weight keeps the ids: evaluation settings, thread count.
    same = TINY_CONFIG.replace("num_threads = 1", "num_threads = 2\neval_batch_size = 7")
    assert ids(same, "eval.toml") == base


def test_resume_keeps_stored_ids_and_refuses_another_config(zoo_copy: Path, tmp_path: Path
                                                           ) -> None:
    import h5py

    from zooscope.zoo import member_id

    from .conftest import TINY_CONFIG

    config = write_config(tmp_path)
    with zooscope.open_zoo(zoo_copy) as zoo:
        stored = [m.id for m in zoo.members()]
    assert stored == [m.id for m in member_list(load_config(config))]
    changed = write_config(tmp_path, TINY_CONFIG.replace("max_seq_len = 32", "max_seq_len = 24"),
                           "changed.toml")
    proc = run_cli("generate", str(changed), "--out", str(zoo_copy), "--resume")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # The stored config tells first, naming the change, before the file is touched.
    assert lines[-2] == (f"error: {zoo_copy} was made from another config: [train] max_seq_len "
                         "32 → 24")
    # The same config over other data or another backbone gives other ids: refused too.
    from zooscope.engine.resume import stored_ids
    from zooscope.errors import ZooFileError
    from zooscope.zoo import Member

    other = [Member(id="m" + "0" * 11, factors=m.factors) for m in member_list(load_config(config))]
    with pytest.raises(ZooFileError, match="was started with another config, data or backbone"):
        stored_ids(zoo_copy, other)
    # A zoo written when ids covered the factors alone resumes under its stored ids.
    with h5py.File(zoo_copy, "r+") as f:
        factors = [json.loads(s) for s in f["members/factors"].asstr()[()]]
        old = [member_id(fs) for fs in factors]
        f["members/id"][...] = np.array(old, dtype=object)
    proc = run_cli("generate", str(config), "--out", str(zoo_copy), "--resume", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["skipped"] == 4  # every member found complete
    with zooscope.open_zoo(zoo_copy) as zoo:
        assert [m.id for m in zoo.members()] == old


def test_a_sentence_pair_zoo_stores_both_texts_and_reevaluates_from_the_file(
        tmp_path: Path) -> None:
    from .test_zoofile import reevaluate_from_docs

    source = write_boolq(tmp_path)
    text = BOOLQ_CONFIG.format(backbones='"scratch"').replace(
        "learning_rate = [1e-3, 3e-3]\nepochs = [1, 2]", "learning_rate = [3e-3]\nepochs = [1]")
    text += ("\n[scratch]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n"
             "intermediate_size = 64\nvocab_size = 200\n")
    out = tmp_path / "pairs.h5"
    build_zoo(load_config(write_config(tmp_path, text, "pairs.toml")), out)
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    with zooscope.open_zoo(out) as zoo:
        header = zoo.record().test
        stored = zoo.predictions([zoo.checkpoints()[-1]])[0]
    picked = [rows[int(i.removeprefix("row-"))] for i in header.ids]
    assert header.texts == [r["question"] for r in picked]
    assert header.text_pairs == [r["passage"] for r in picked]
    recomputed, _ = reevaluate_from_docs(out)
    assert recomputed == stored.tolist()


def test_data_paths_are_recorded_resolved(tmp_path: Path) -> None:
    """A relative test_source is recorded as the absolute path it named, so a zoo's
    record means the same from any working directory."""
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"{i % 2}\tsentence number {i}\n" for i in range(40))
    (data / "train.tsv").write_text("label\tsentence\n" + rows)
    (data / "dev.tsv").write_text("label\tsentence\n" + rows[:200])
    configs = tmp_path / "configs"
    configs.mkdir()
    text = TINY_DATA_CONFIG.replace("SOURCE", "../data/train.tsv").replace("TEST", "../data/dev.tsv")
    cfg = load_config(write_config(configs, text))
    info = registry.get_generator("sst2").prepare(cfg).info
    assert info["source"] == str((data / "train.tsv").resolve())
    assert info["test_source"] == str((data / "dev.tsv").resolve())
    assert info["validation_source"] is None


TINY_DATA_CONFIG = """\
[zoo]
name = "paths"
generator = "sst2"
backbone = "scratch"
seeds = [0]
epochs = 1

[grid]
learning_rate = [1e-3]

[data]
source = "SOURCE"
test_source = "TEST"
split = { train = 0.8, validation = 0.2, test = 0.0, seed = 0 }
"""


# -- T5 backbones: the encoder under the head, and text-to-text --------------------------------
@pytest.fixture(scope="session")
def t5_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny T5 (encoder and decoder) saved as a model directory, with a word-level
    tokenizer trained here on the BoolQ-style texts and the label words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("t5")
    write_boolq(folder)
    words = sorted({w for line in (folder / "boolq.jsonl").read_text().splitlines()
                    for field in ("question", "passage")
                    for w in json.loads(line)[field].lower().replace(".", " . ").split()})
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *words, "yes", "no"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=16, num_layers=1,
                      num_decoder_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder / "model")
    fast.save_pretrained(folder / "model")
    return folder / "model"


T5_CONFIG = BOOLQ_CONFIG.replace("epochs = [1, 2]\n", "").replace(
    "[zoo]\n", "[zoo]\nepochs = 2\n").replace("num_threads = 1\n", "num_threads = 1\n{form}\n")


@pytest.mark.parametrize("form", ["encoder", "text-to-text"])
def test_t5_backbone_trains_and_its_predictions_rebuild_from_the_file(
        tmp_path: Path, t5_backbone: Path, form: str) -> None:
    """Both forms of T5 on BoolQ. Encoder: only the encoder is stored, its head reads the
    mean over the non-padding tokens. Text-to-text: plain transformers, given the zoo's
    stored files and weights, generates the words whose labels the zoo stored."""
    from transformers import AutoConfig, AutoTokenizer, T5EncoderModel, T5ForConditionalGeneration

    from zooscope.plugins.weightstats import tensor_kind

    write_boolq(tmp_path)
    setting = 't5 = "text-to-text"' if form == "text-to-text" else ""
    cfg = load_config(write_config(tmp_path, T5_CONFIG.format(
        backbones=f'"{t5_backbone}"', form=setting), "t5.toml"))
    out = tmp_path / "t5.h5"
    build_zoo(cfg, out)
    with zooscope.open_zoo(out) as zoo:
        member = zoo.members()[0]
        names = zoo.tensor_names(member)
        files = zoo.model_files(member)
        state = zoo.state_dict(member, 2)
        cp = zoo.checkpoints([member], [2])[0]
        stored = zoo.predictions([cp])[0]
        labels = zoo.test_labels()
    assert stored.shape == labels.shape
    assert cp.metrics["test_accuracy"] == pytest.approx(np.mean(stored == labels))
    kinds = {tensor_kind(n) for n in names}
    assert "other" not in kinds and {"attention.q", "attention.output", "ffn", "embeddings",
                                     "layernorm"} <= kinds
    head = json.loads(files["zooscope_head.json"])
    folder = tmp_path / "files"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    config = AutoConfig.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    rows = [json.loads(line) for line in (tmp_path / "boolq.jsonl").read_text().splitlines()]
    test = _test_rows(zoo_path=out, rows=rows)
    enc = tok([r["question"] for r in test], [r["passage"] for r in test], padding=True,
              return_tensors="pt")
    weights = {k.removeprefix("backbone."): v.float() for k, v in state.items()}
    if form == "encoder":
        assert not any(".decoder." in n or n.startswith("backbone.decoder") for n in names)
        assert head["kind"] == "sequence-classification" and head["pooling"] == "mean"
        encoder = T5EncoderModel(config).eval()
        encoder.load_state_dict({k: v for k, v in weights.items() if not k.startswith("head.")},
                                strict=False)
        with torch.no_grad():
            states = encoder(input_ids=enc["input_ids"],
                             attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1)
            w = {k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")}
            hidden = torch.relu(pooled @ w["0.weight"].T + w["0.bias"])
            logits = hidden @ w["3.weight"].T + w["3.bias"]
        assert np.array_equal(logits.argmax(-1).numpy(), stored)
    else:
        assert any(n.startswith("backbone.decoder.") for n in names)
        assert head["kind"] == "text-to-text" and head["words"] == ["no", "yes"]
        model = T5ForConditionalGeneration(config).eval()
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected
        with torch.no_grad():
            generated = model.generate(input_ids=enc["input_ids"],
                                       attention_mask=enc["attention_mask"], max_new_tokens=4,
                                       do_sample=False, num_beams=1)
        text = [t.strip() for t in tok.batch_decode(generated, skip_special_tokens=True)]
        classes = np.array([{"no": 0, "yes": 1}.get(t, 2) for t in text])
        assert np.array_equal(classes, stored)
        assert {"yes", "no"} & set(text)  # it writes label words; any other text is class 2
    # zooscope rebuilds it from the file alone and scores it as stored.
    from zooscope.services.evaluation import Evaluator

    with zooscope.open_zoo(out) as zoo:
        evaluator = Evaluator(zoo)
        metrics, again = evaluator.evaluate(*evaluator.model(cp))
    assert np.array_equal(again, stored)
    assert metrics["test_accuracy"] == pytest.approx(cp.metrics["test_accuracy"])
    assert metrics["test_loss"] == pytest.approx(cp.metrics["test_loss"], rel=1e-4)
    # Exported like the others: the directory loads back and predicts the same; a
    # text-to-text export is a plain transformers seq2seq checkpoint.
    exported = tmp_path / "export"
    result = run_cli("zoo", "export", str(out), "--member", member.id, "--epoch", "2",
                     "--out", str(exported))
    assert result.returncode == 0, result.stderr
    loaded, loaded_tok = zooscope.load_model(exported)
    metrics, again = evaluator.evaluate(loaded, loaded_tok)
    assert np.array_equal(again, stored)
    if form == "text-to-text":
        plain = T5ForConditionalGeneration.from_pretrained(exported).eval()
        with torch.no_grad():
            generated = plain.generate(input_ids=enc["input_ids"],
                                       attention_mask=enc["attention_mask"], max_new_tokens=4,
                                       do_sample=False, num_beams=1)
        assert tok.batch_decode(generated, skip_special_tokens=True) == \
            tok.batch_decode(model.generate(input_ids=enc["input_ids"],
                                            attention_mask=enc["attention_mask"],
                                            max_new_tokens=4, do_sample=False, num_beams=1),
                             skip_special_tokens=True)
    # Analysed like the others: weightstats and backbones run on it.
    for name in ("weightstats", "backbones"):
        run_analysis(out, registry.get_analyzer(name), [], None, None, tmp_path / name,
                     force=False)


def _test_rows(zoo_path: Path, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The test split's rows of boolq.jsonl, in the order the zoo stores them."""
    import h5py

    with h5py.File(zoo_path, "r") as f:
        ids = [i.decode() if isinstance(i, bytes) else i for i in f["data/test_ids"][()]]
    return [rows[int(i.removeprefix("row-"))] for i in ids]
