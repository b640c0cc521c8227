"""Loading data sets for generators: local files, hub data sets and the synthetic task.

Every failure is a ``DataError`` naming the source; text files are checked to be
UTF-8 and regular files before a parser sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from zooscope.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

TEXT_COLUMNS = ("sentence", "content", "text", "review")
FORMATS = {".tsv": "csv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix in FORMATS


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
        from zooscope.synthetic import synthetic_sentiment

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


def label_ids(labels: list[Any], source: str) -> tuple[np.ndarray, list[str]]:
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
