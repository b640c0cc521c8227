"""Loading data sets for generators: local files, hub data sets and the synthetic task.

Every failure is a ``DataError`` naming the source; text files are checked to be
UTF-8 and regular files before a parser sees them. A file or hub data set stays in
the Arrow file ``datasets`` memory-maps: a split is a column at chosen rows
(``Column``), read in slices, and is tokenised into an Arrow file cached under a
fingerprint (``encode_column``), so a corpus larger than memory trains.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.errors import ConfigError, DataError
from zooscope.zoo import hub_revision

if TYPE_CHECKING:
    import numpy as np

TEXT_COLUMNS = ("sentence", "content", "text", "review")
FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix in FORMATS


def load_table(source: str) -> Any:
    """A data source as a ``datasets.Dataset``: a local file or folder, or a hub dataset.

    A hub id may name its split after a colon (``google/boolq:validation``); the
    default is ``train``. ``@`` pins a revision (``google/boolq@<commit>:validation``).
    Every failure is a ``DataError`` naming the source.
    """
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_dataset(str(path), split="train")
        elif is_local(source):
            if not path.exists():
                raise DataError(f"no data file at {path}")
            if not path.is_file():  # a device or pipe would be read without end
                raise DataError(f"{path} is not a regular file")
            fmt = FORMATS.get(path.suffix)
            if fmt is None:
                raise DataError(f"cannot read {path.name}: use .tsv, .csv, .jsonl or .parquet")
            if fmt in ("csv", "json"):
                check_utf8(path)
            kwargs: dict[str, Any] = {}
            if path.suffix == ".tsv":
                kwargs = {"delimiter": "\t", "quoting": 3}  # csv.QUOTE_NONE: GLUE TSVs hold raw quotes
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
        else:
            name, _, split = source.partition(":")
            name, revision = hub_revision(name)  # google/boolq@<revision>:validation
            ds = datasets.load_dataset(name, split=split or "train",
                                       **({"revision": revision} if revision else {}))
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


#: Rows read from Arrow at a time when a column is iterated or tokenised.
CHUNK = 10_000


def take(column: Any, rows: np.ndarray) -> Any:
    """``column.take(rows)`` for a chunked Arrow column without joining its chunks: a
    take on a column of many chunks (``datasets`` writes 1,000 rows a chunk) copies the
    whole column first. Rows are taken chunk by chunk and put back in the order asked."""
    import numpy as np
    import pyarrow as pa

    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return pa.array([], type=column.type)
    if column.num_chunks == 1:
        return column.chunk(0).take(rows)
    ends = np.cumsum([len(c) for c in column.chunks])
    which = np.searchsorted(ends, rows, side="right")
    order = np.argsort(which, kind="stable")
    bounds = np.flatnonzero(np.diff(which[order])) + 1
    pieces = []
    for group in np.split(order, bounds):
        k = int(which[group[0]])
        start = int(ends[k - 1]) if k else 0
        pieces.append(column.chunk(k).take(rows[group] - start))
    gathered = pa.concat_arrays(pieces)
    back = np.empty(len(rows), dtype=np.int64)
    back[order] = np.arange(len(rows))
    return gathered.take(back)


class Column(Sequence):
    """One column of a memory-mapped Arrow table at chosen rows (all rows where
    ``rows`` is None), as text; read in slices of CHUNK rows, so a split of a large
    corpus is never held as Python strings. Indexing with a slice or an array of
    positions gives another Column."""

    def __init__(self, table: Any, name: str, rows: np.ndarray | None = None) -> None:
        self.table, self.name, self._rows = table, name, rows

    @property
    def rows(self) -> np.ndarray:
        import numpy as np

        return np.arange(self.table.num_rows) if self._rows is None else self._rows

    def __len__(self) -> int:
        return self.table.num_rows if self._rows is None else len(self._rows)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) or (not isinstance(key, int) and hasattr(key, "__len__")):
            import numpy as np

            return Column(self.table, self.name,
                          np.asarray(key) if self._rows is None and not isinstance(key, slice)
                          else self.rows[key])
        return self.read(self.rows[[key]])[0]

    def read(self, rows: np.ndarray) -> list[str]:
        values = take(self.table.column(self.name), rows).to_pylist()
        return ["" if v is None else str(v) for v in values]

    def __iter__(self) -> Iterator[str]:
        rows = self.rows
        for start in range(0, len(rows), CHUNK):
            yield from self.read(rows[start : start + CHUNK])


class RowIds(Sequence):
    """Example ids ``{prefix}-{row}`` of chosen rows, made when read."""

    def __init__(self, prefix: str, rows: np.ndarray) -> None:
        self.prefix, self.rows = prefix, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) or (not isinstance(key, int) and hasattr(key, "__len__")):
            return RowIds(self.prefix, self.rows[key])
        return f"{self.prefix}-{int(self.rows[key])}"

    def __iter__(self) -> Iterator[str]:
        return (f"{self.prefix}-{r}" for r in self.rows.tolist())


def load_rows(source: str, text_column: str | None, label_column: str,
              pair_column: str | None = None) -> tuple[Sequence[str], Any, Sequence[str] | None]:
    """Texts, labels and (for sentence pairs) second texts of a data source; from a file
    or the hub, texts are ``Column``s and labels an Arrow column (``label_ids`` takes
    both), so nothing is read into memory yet."""
    if source.startswith("synthetic:"):
        from zooscope.kit.synthetic import synthetic_sentiment

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
    if getattr(ds, "_indices", None) is not None:  # a view of another table: its rows
        ds = ds.flatten_indices()
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    pairs = None if pair_column is None else Column(table, pair_column)
    return Column(table, text_column), table.column(label_column), pairs


def cached_table(fingerprint: str, rows: int,
                 encode: Callable[[int, int], dict[str, Any]], what: str = "tokenising") -> Any:
    """Rows ``[start, stop)`` as ``encode`` makes them (columns of Arrow arrays or
    lists), CHUNK rows at a time, into an Arrow file cached under ``fingerprint`` (of the
    rows, the tokenizer and its settings); the table, memory-mapped from that file. A
    second call with the same fingerprint reads the file. Progress is reported in
    chunks as ``what``."""
    import pyarrow as pa

    from zooscope.progress import track

    folder = encoded_cache()
    path = folder / f"{fingerprint}.arrow"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        writer = None
        try:
            starts = range(0, rows, CHUNK)
            for start in track(starts, f"{what} {rows:,} rows") if len(starts) > 1 else starts:
                batch = pa.record_batch(encode(start, min(start + CHUNK, rows)))
                if writer is None:
                    writer = pa.ipc.new_file(str(tmp), batch.schema)
                writer.write_batch(batch)
            if writer is not None:
                writer.close()
                writer = None
                os.replace(tmp, path)
        except OSError as exc:
            raise DataError(f"cannot write the tokenised data to {folder}: {exc.strerror or exc}",
                            hint="free disk space, or point HF_DATASETS_CACHE elsewhere") from None
        finally:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def encode_column(texts: Column, pairs: Column | None, fingerprint: str,
                  encode: Callable[[list[str], list[str] | None], dict[str, list[list[int]]]],
                  ) -> dict[str, Tokens]:
    """A split of texts (and pair texts) tokenised by ``encode`` into the Arrow cache
    (``cached_table``): the encoded split of a corpus larger than memory, as ``Tokens``
    per column."""
    import pyarrow as pa

    def chunk(start: int, stop: int) -> dict[str, Any]:
        rows = texts.rows[start:stop]
        enc = encode(texts.read(rows), None if pairs is None else pairs.read(rows))
        return {k: pa.array(v, type=pa.list_(pa.int32())) for k, v in enc.items()}

    table = cached_table(fingerprint, len(texts), chunk)
    return {name: Tokens(table.column(name)) for name in table.column_names}


def encoded_cache() -> Path:
    """Where tokenised splits are cached: beside the ``datasets`` cache."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "zooscope-encoded"


def tokenizer_digest(tok: Any) -> str:
    """A digest of a tokenizer (its full serialisation) for cache fingerprints."""
    if getattr(tok, "is_fast", False):
        return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
    return hashlib.sha256(str(tok.get_vocab()).encode()).hexdigest()


class Tokens(Sequence):
    """A list per row of an encoded split (token ids, offsets, masks), memory-mapped from
    Arrow; ``take`` reads a batch of rows in one call."""

    def __init__(self, column: Any) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, i: Any) -> list[int]:
        return self.column[int(i)].as_py()

    def take(self, rows: Sequence[int]) -> list[list[int]]:
        return self.column.take(rows).to_pylist()

    def lengths(self) -> np.ndarray:
        import pyarrow.compute as pc

        return pc.list_value_length(self.column).to_numpy(zero_copy_only=False)


def take_rows(column: Sequence[Any], rows: Sequence[int]) -> list[Any]:
    """Rows of a token column: one Arrow read for ``Tokens``, else by index."""
    if isinstance(column, Tokens):
        return column.take(rows)
    return [column[i] for i in rows]


def row_lengths(column: Sequence[Any]) -> np.ndarray:
    import numpy as np

    if isinstance(column, Tokens):
        return column.lengths()
    return np.fromiter((len(r) for r in column), dtype=np.int64, count=len(column))


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


def check_utf8(path: Path) -> None:
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


def label_ids(labels: Any, source: str, rows: np.ndarray | None = None
              ) -> tuple[np.ndarray, list[str]]:
    """Class ids (of ``rows`` only, where given) and class names (from every row) of a
    label list or Arrow column: integer labels are the ids themselves, any other labels
    are named by their text, sorted. From Arrow, only the chosen rows are read into
    memory."""
    import numpy as np

    if hasattr(labels, "null_count"):  # an Arrow column: no Python objects per row
        import pyarrow as pa
        import pyarrow.compute as pc

        if labels.null_count:
            raise DataError(f"{source} has rows without a label")
        kind = labels.type
        chosen = labels if rows is None else take(labels, rows)
        if pa.types.is_integer(kind):
            extremes = pc.min_max(labels).as_py()
            if extremes["min"] < 0 or extremes["max"] >= MAX_CLASSES:
                _class_ids(labels.to_numpy(), source)  # names the first bad label
            return (chosen.to_numpy().astype(np.int64),
                    [str(i) for i in range(int(extremes["max"]) + 1)])
        if pa.types.is_boolean(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
            def text(values: Any) -> Any:
                return (pc.if_else(values, "True", "False") if pa.types.is_boolean(kind)
                        else values.cast(pa.string()))

            names = sorted(pc.unique(text(labels)).to_pylist())
            ids = pc.index_in(text(chosen), value_set=pa.array(names)).to_numpy()
            return ids.astype(np.int64), names
        labels = labels.to_pylist()
    if any(v is None for v in labels):
        raise DataError(f"{source} has rows without a label")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        ids, names = _class_ids(np.asarray(labels, dtype=np.int64), source)
    else:
        names = sorted({str(v) for v in labels})
        lookup = {n: i for i, n in enumerate(names)}
        ids = np.asarray([lookup[str(v)] for v in labels], dtype=np.int64)
    return (ids if rows is None else ids[rows]), names


def _class_ids(arr: np.ndarray, source: str) -> tuple[np.ndarray, list[str]]:
    if len(arr) and (arr.min() < 0 or arr.max() >= MAX_CLASSES):
        bad = int(arr[(arr < 0) | (arr >= MAX_CLASSES)][0])
        if bad < 0:
            raise DataError(f"{source} has negative labels (unlabelled rows?)")
        # Integer labels are class ids: one this large would ask for a head that size.
        raise DataError(f"{source} has the label {bad}; integer labels are class ids "
                        f"from 0 to {MAX_CLASSES - 1:,}",
                        hint="use class ids 0..K-1, or text labels")
    return arr, [str(i) for i in range(int(arr.max()) + 1)]
