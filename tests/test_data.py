"""Data read from files stays in Arrow: lazy columns, labels from Arrow, the tokenised
cache, and a zoo trained from a file equal to one trained from the same rows in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import zooscope
from zooscope.config import load_config
from zooscope.engine import build_zoo
from zooscope.errors import DataError
from zooscope.kit.data import Column, RowIds, encode_column, label_ids, load_rows, row_lengths, take_rows
from zooscope.kit.synthetic import synthetic_sentiment

from .conftest import TINY_CONFIG, write_config


def test_a_column_reads_the_rows_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "rows.tsv"
    rows = [(f"text {i}" if i % 7 else "", i % 3) for i in range(25_000)]
    path.write_text("label\tsentence\n" + "".join(f"{y}\t{t}\n" for t, y in rows))
    texts, labels, pairs = load_rows(str(path), None, "label")
    assert isinstance(texts, Column) and pairs is None
    expect = [t for t, _ in rows]
    assert len(texts) == 25_000 and list(texts) == expect  # read across several chunks
    picked = np.array([24_999, 3, 3, 10_000, 0])
    assert list(texts[picked]) == [expect[i] for i in picked]
    assert list(texts[picked][1:3]) == [expect[3], expect[3]]
    assert texts[7] == "" and texts[-1] == expect[-1]
    ids = RowIds("row", picked)
    assert list(ids) == [f"row-{i}" for i in picked] and ids[1:2][0] == "row-3"
    np.testing.assert_array_equal(label_ids(labels, "f")[0], [y for _, y in rows])


@pytest.mark.parametrize("values", [
    [3, 0, 2, 2], [True, False, True], ["neg", "pos", "neg", "mixed"], [0.5, 1.0, 0.5]])
def test_labels_from_arrow_equal_labels_from_a_list(values: list[object]) -> None:
    ids, names = label_ids(pa.chunked_array([values[:2], values[2:]]), "src")
    want_ids, want_names = label_ids(list(values), "src")
    np.testing.assert_array_equal(ids, want_ids)
    assert names == want_names


@pytest.mark.parametrize(("values", "message"), [
    ([0, None, 1], "has rows without a label"), ([0, -1], "negative labels"),
    ([0, 10**6], "the label 1000000; integer labels are class ids")])
def test_bad_labels_from_arrow_are_refused(values: list[object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        label_ids(pa.chunked_array([values]), "src")


def test_the_tokenised_cache_equals_encoding_in_memory(tmp_path: Path) -> None:
    texts = [f"{'word ' * (i % 11)}{i}" for i in range(23_456)]
    table = pa.table({"t": texts, "p": texts[::-1]})
    every = np.arange(len(texts))
    calls = []

    def encode(a: list[str], b: list[str] | None) -> dict[str, list[list[int]]]:
        calls.append(len(a))
        assert b is not None
        return {"input_ids": [[len(x), len(y)] + [7] * (len(x) % 5) for x, y in zip(a, b, strict=True)],
                "token_type_ids": [[0] * (2 + len(x) % 5) for x in a]}

    out = encode_column(Column(table, "t", every), Column(table, "p", every), "f" * 64, encode)
    whole = encode(texts, texts[::-1])
    assert calls[:3] == [10_000, 10_000, 3_456]
    assert len(out["input_ids"]) == len(texts)
    rows = [0, 23_455, 12_000, 12_000]
    assert take_rows(out["input_ids"], rows) == [whole["input_ids"][i] for i in rows]
    assert out["token_type_ids"][5] == whole["token_type_ids"][5]
    np.testing.assert_array_equal(row_lengths(out["input_ids"]),
                                  [len(r) for r in whole["input_ids"]])
    calls.clear()
    again = encode_column(Column(table, "t", every), Column(table, "p", every), "f" * 64, encode)
    assert not calls  # read from the cache
    assert again["input_ids"][9] == whole["input_ids"][9]


def test_a_zoo_from_a_file_equals_the_same_rows_in_memory(tmp_path: Path) -> None:
    """The synthetic task is held in memory and encoded there; the same rows in a TSV
    go through Arrow and the tokenised cache. Splits, fingerprints, weights,
    metrics and predictions agree exactly."""
    rows = synthetic_sentiment(400)
    path = tmp_path / "same.tsv"
    path.write_text("label\tsentence\n" + "".join(f"{y}\t{t}\n" for t, y in rows))
    single = TINY_CONFIG.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "learning_rate = [3e-4, 1e-3]", "learning_rate = [1e-3]")
    zoos = {}
    for name, source in (("memory", "synthetic:sentiment:400"), ("file", str(path))):
        text = single.replace('source = "synthetic:sentiment:400"', f'source = "{source}"')
        zoos[name] = tmp_path / f"{name}.h5"
        build_zoo(load_config(write_config(tmp_path, text, f"{name}.toml")), zoos[name])
    with zooscope.open_zoo(zoos["memory"]) as a, zooscope.open_zoo(zoos["file"]) as b:
        assert a.info["data"]["fingerprints"] == b.info["data"]["fingerprints"]
        assert [c.metrics for c in a.checkpoints()] == [c.metrics for c in b.checkpoints()]
        np.testing.assert_array_equal(a.predictions(), b.predictions())
        last_a, last_b = a.checkpoints()[-1], b.checkpoints()[-1]
        sa, sb = a.state_dict(last_a.member, last_a.epoch), b.state_dict(last_b.member, last_b.epoch)
        for key, value in sa.items():
            np.testing.assert_array_equal(value.numpy(), sb[key].numpy())
        assert a.record().test.texts == b.record().test.texts
