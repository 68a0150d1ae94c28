"""Catalogs read a slice at a time, so a run over 10^8 galaxies never holds the catalog in memory.

`open_catalog_rows(source)` gives the `CatalogRows` of:

- a catalog DataFrame or Arrow table (validated in full, as `validate_catalog` does);
- a Parquet, CSV or TSV file (optionally compressed), or a folder of them (every catalog file
  under it, in path order: e.g. a Hugging Face Hub-layout dataset's `data/*.parquet`), or a
  `pyarrow.dataset` of Parquet or CSV files: read by row group or CSV block, two columns only;
- a Hugging Face `datasets.Dataset` (memory-mapped Arrow), read in slices.

Each row is an `id_str` (text; integer ids are written as text) and an image: `file_loc` (a path;
relative paths are resolved against the catalog file's folder, or `root`) or, where there is no
`file_loc`, a Hugging Face `image` column (the encoded bytes, else its path). Rows are numbered
0..n-1 in that order. `CatalogRows.read` streams forward through sorted ranges of rows, skipping
whole row groups and files it does not need; `CatalogRows.check` validates ranges (ids and images
present, ids not repeated nearby) with errors naming the file and row. Parquet row counts come from file metadata; a CSV file
is scanned once to count its rows, so Parquet is the format for very large catalogs.

What identifies a catalog (`CatalogRows.identity`), for resuming runs: a content digest of the ids
and images of an in-memory table; the name, size and modification time of every file read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from zoobot.data.catalog import CatalogError, row_label, validate_catalog

ID = "id_str"
FILE = "file_loc"
IMAGE = "image"  # a Hugging Face Image feature: struct<bytes: binary, path: string>
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv")
READ_ROWS = 8192  # rows decoded at a time from a Parquet row group or a table
CatalogInput = Any  # DataFrame, pa.Table, path, pyarrow.dataset.Dataset, datasets.Dataset


@dataclass(frozen=True)
class RowSlice:
    """Rows `start:start + len(ids)` of a catalog: their ids and image sources (paths or bytes)."""

    start: int
    ids: list[str]
    sources: list[str | bytes]
    origin: str = field(default="the catalog", compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def location(self, index: int) -> str:
        """Where row `index` of the slice takes its image from: its path, or `<catalog>#<row>`."""
        source = self.sources[index]
        return source if isinstance(source, str) else f"{self.origin}#{self.start + index}"


@dataclass(frozen=True)
class _Piece:
    """Consecutive rows read together (a Parquet row group, a CSV file, a table or dataset); it
    pickles, so a spawned process reads the catalog it was given without opening it again."""

    n_rows: int
    where: str  # for error messages: the file (and row group)
    base: str | None  # folder relative file_loc paths are resolved against

    def batches(self) -> Iterator[pa.RecordBatch | pa.Table]:
        """Every row of the piece, in order, in batches of at most `READ_ROWS`."""
        raise NotImplementedError


@dataclass(frozen=True)
class _TablePiece(_Piece):
    table: pa.Table | None = None

    def batches(self) -> Iterator[pa.Table]:
        for start in range(0, self.n_rows, READ_ROWS):
            yield self.table.slice(start, READ_ROWS)


@dataclass(frozen=True)
class _DatasetPiece(_Piece):
    dataset: Any = None  # a `datasets.Dataset` formatted as Arrow: slices are tables

    def batches(self) -> Iterator[pa.Table]:
        for start in range(0, self.n_rows, READ_ROWS):
            yield self.dataset[start : start + READ_ROWS]


@dataclass(frozen=True)
class _ParquetGroup(_Piece):
    path: str = ""
    group: int = 0
    columns: tuple[str, ...] = ()
    filesystem: Any = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        with self.filesystem.open_input_file(self.path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(
                READ_ROWS, row_groups=[self.group], columns=list(self.columns)
            )


@dataclass(frozen=True)
class _CsvFile(_Piece):
    path: str = ""
    delimiter: str = ","
    columns: tuple[str, ...] = ()
    filesystem: Any = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        handle, reader = _open_csv(self.path, self.delimiter, self.columns, self.filesystem)
        with handle:
            yield from reader


class CatalogRows:
    """A catalog's rows read a slice at a time (see the module docstring); `len()` is its rows."""

    def __init__(self, name: str, pieces: Sequence[_Piece], identity: dict):
        self.name = name
        self.pieces = list(pieces)
        self.identity = {"rows": sum(p.n_rows for p in self.pieces), **identity}
        self.offsets = np.concatenate([[0], np.cumsum([p.n_rows for p in self.pieces])])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"CatalogRows({self.name!r}, {len(self)} rows)"

    def read(self, ranges: Iterable[tuple[int, int]], rows: int = READ_ROWS) -> Iterator[RowSlice]:
        """Rows of each (start, stop) range, in slices of at most `rows`, reading forward only:
        ranges must be sorted and must not overlap. Pieces before a range are never read."""
        cursor = _Cursor(self)
        previous = 0
        for start, stop in ranges:
            if not previous <= start <= stop <= len(self):
                raise ValueError(f"rows {start}:{stop} are not sorted after {previous} in {self}")
            previous = stop
            for first in range(start, stop, rows):
                yield cursor.take(first, min(stop, first + rows))

    def check(self, ranges: Iterable[tuple[int, int]]) -> None:
        """`CatalogError` naming the file and rows where an id or an image is missing in `ranges`,
        or an id repeats within a slice of 65,536 rows (a run's tables hold one row per catalog
        row, so ids repeated farther apart are repeated in them)."""
        for part in self.read(ranges, rows=65536):
            _check_slice(part, self.name)


class _Cursor:
    """A forward-only position in a `CatalogRows`: the open piece and its unread rows."""

    def __init__(self, rows: CatalogRows):
        self.rows = rows
        self.piece = -1
        self.batches: Iterator | None = None
        self.buffer_start = 0  # catalog row of buffer[0]
        self.buffer: tuple[pa.Array, ...] | None = None

    def _fill(self, position: int) -> None:
        """Load the batch holding row `position`, opening its piece if it is another one."""
        piece = int(np.searchsorted(self.rows.offsets, position, side="right") - 1)
        if piece != self.piece:
            self.piece = piece
            self.batches = iter(self.rows.pieces[piece].batches())
            self.buffer_start, self.buffer = int(self.rows.offsets[piece]), None
        while self.buffer is None or position >= self.buffer_start + len(self.buffer[0]):
            if self.buffer is not None:
                self.buffer_start += len(self.buffer[0])
            batch = next(self.batches)
            self.buffer = _standard(batch, self.rows.pieces[self.piece])

    def take(self, start: int, stop: int) -> RowSlice:
        """Rows `start:stop` (a forward move), across pieces."""
        ids, sources = [], []
        position = start
        while position < stop:
            self._fill(position)
            offset = position - self.buffer_start
            length = min(stop - position, len(self.buffer[0]) - offset)
            ids += self.buffer[0].slice(offset, length).to_pylist()
            found = self.buffer[1].slice(offset, length).to_pylist()
            if len(self.buffer) > 2:  # image bytes, else the image's path
                paths = self.buffer[2].slice(offset, length).to_pylist()
                found = [p if d is None else d for d, p in zip(found, paths, strict=True)]
            sources += found
            position += length
        return RowSlice(start, ids, sources, self.rows.name)


def _standard(batch: pa.RecordBatch | pa.Table, piece: _Piece) -> tuple[pa.Array, ...]:
    """(ids as text, image sources[, fallback paths]) of a batch: resolved `file_loc` paths, or an
    `image` column's bytes with its paths as the fallback where a row has no bytes."""
    names = batch.schema.names
    ids = _flat(_as_text(batch.column(names.index(ID)), piece.where))
    if FILE in names:
        paths = _as_text(batch.column(names.index(FILE)), piece.where)
        if piece.base is not None:
            joined = pc.binary_join_element_wise(piece.base, paths, "/")
            paths = pc.if_else(pc.starts_with(paths, "/"), paths, joined)
        return ids, _flat(paths)
    image = _flat(batch.column(names.index(IMAGE)))
    return ids, image.field("bytes"), image.field("path")


def _flat(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _as_text(column: pa.Array | pa.ChunkedArray, where: str) -> pa.Array:
    """A column as (32-bit offset) text, integers written out; anything else is an error. Slices
    are at most `READ_ROWS` rows, so 32-bit offsets always suffice."""
    kind = column.type
    if pa.types.is_string(kind):
        return column
    if pa.types.is_large_string(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind):
        return pc.cast(column, pa.string())
    raise CatalogError(
        f"{where}: a column holds {kind} values where text was expected; store id_str and "
        "file_loc as text (floating-point ids may have lost digits)"
    )


def _check_slice(part: RowSlice, name: str) -> None:
    missing_id = [i for i, v in enumerate(part.ids) if v is None or not str(v).strip()]
    padded = [i for i, v in enumerate(part.ids) if v is not None and str(v) != str(v).strip()]
    missing_image = [i for i, v in enumerate(part.sources) if v is None or len(v) == 0]
    seen: set[str] = set()
    repeated = [i for i, v in enumerate(part.ids) if v in seen or seen.add(v)]
    problems = []
    for what, found in (
        ("id_str is empty", missing_id),
        ("id_str has leading or trailing spaces", padded),
        ("no image (file_loc)", missing_image),
        ("id_str repeats an earlier row's", repeated),
    ):
        if found:
            shown = ", ".join(row_label(part.start + i, part.ids[i]) for i in found[:5])
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            problems.append(f"{what} in {len(found)} row(s): {shown}{more}")
    if problems:
        raise CatalogError(f"{name}: " + "; ".join(problems), problems)


# --- sources --------------------------------------------------------------------------------------


def open_catalog_rows(source: CatalogInput, root: str | os.PathLike | None = None) -> CatalogRows:
    """The `CatalogRows` of a catalog DataFrame or table, file, folder, pyarrow dataset or Hugging
    Face dataset (see the module docstring). `root` resolves relative `file_loc` paths instead of
    each file's folder. A catalog without rows is refused (`CatalogError`)."""
    if isinstance(source, CatalogRows):
        return source
    rows = _open(source, root)
    if not len(rows):
        raise CatalogError(f"{rows.name}: the catalog has no rows")
    return rows


def _open(source: CatalogInput, root: str | os.PathLike | None) -> CatalogRows:
    if isinstance(source, pd.DataFrame):
        return _dataframe_rows(source)
    if isinstance(source, pa.Table):
        return _table_rows(source, "the catalog table", {"catalog": _table_digest(source)})
    if _is_hf_dataset(source):
        return _hf_rows(source)
    if _is_arrow_dataset(source):
        return _arrow_dataset_rows(source, root)
    if isinstance(source, str | os.PathLike):
        return _path_rows(Path(source).expanduser(), root)
    raise TypeError(
        "a catalog is a DataFrame, an Arrow table, a catalog file or folder, a pyarrow dataset or "
        f"a Hugging Face dataset, not {type(source).__name__}"
    )


def _columns(names: Sequence[str], where: str) -> list[str]:
    """The columns a row is read from, or `CatalogError` naming what is missing."""
    image = FILE if FILE in names else IMAGE if IMAGE in names else None
    if ID not in names or image is None:
        raise CatalogError(
            f"{where} needs an id_str column and a file_loc (image path) or image column; "
            f"its columns are {list(names)}"
        )
    return [ID, image]


def _dataframe_rows(frame: pd.DataFrame) -> CatalogRows:
    columns = [c for c in (ID, FILE) if c in frame.columns]
    checked = validate_catalog(frame.loc[:, columns])
    table = pa.table(
        {
            ID: pa.array(checked[ID].to_numpy(dtype=object), pa.string()),
            FILE: pa.array(checked[FILE].to_numpy(dtype=object), pa.string()),
        }
    )
    return _table_rows(table, "the catalog", {"catalog": _table_digest(table)})


def _table_rows(table: pa.Table, name: str, identity: dict, base: str | None = None) -> CatalogRows:
    table = table.select(_columns(table.schema.names, name))

    return CatalogRows(name, [_TablePiece(len(table), name, base, table)], identity)


def _table_digest(table: pa.Table) -> str:
    """A digest of the ids and images of a table, in order, independent of its chunking."""
    digest = hashlib.blake2b(digest_size=16)
    names = _columns(table.schema.names, "the catalog")
    for start in range(0, len(table), 65536):
        part = table.slice(start, 65536)
        for name in names:
            column = part.column(name)
            if pa.types.is_struct(column.type):
                column = pc.if_else(
                    pc.is_valid(pc.struct_field(column, "bytes")),
                    pc.struct_field(column, "bytes"),
                    pc.cast(pc.struct_field(column, "path"), pa.binary()),
                )
            values = pc.cast(column, pa.large_binary()).combine_chunks()
            lengths = pc.fill_null(pc.binary_length(values), -1).to_numpy()
            digest.update(np.ascontiguousarray(lengths, np.int64).tobytes())
            digest.update(b"".join(v for v in values.to_pylist() if v is not None))
    return digest.hexdigest()


def _is_hf_dataset(source: object) -> bool:
    return type(source).__module__.startswith("datasets.") and hasattr(source, "with_format")


def _hf_rows(dataset) -> CatalogRows:
    name = f"dataset {getattr(dataset, 'info', None) and dataset.info.dataset_name or ''}".strip()
    columns = _columns(dataset.column_names, name)
    if IMAGE in columns:
        from datasets import Image

        dataset = dataset.cast_column(IMAGE, Image(decode=False))
    arrow = dataset.select_columns(columns).with_format("arrow")
    fingerprint = getattr(dataset, "_fingerprint", None)  # public datasets only keep it private
    identity = {"dataset": fingerprint} if isinstance(fingerprint, str) else None

    piece = _DatasetPiece(len(arrow), name, None, arrow)
    if identity is None:
        identity = {"catalog": _table_digest(pa.concat_tables(list(piece.batches())))}
    return CatalogRows(name, [piece], identity)


def _is_arrow_dataset(source: object) -> bool:
    import pyarrow.dataset as ds

    return isinstance(source, ds.FileSystemDataset)


def _arrow_dataset_rows(dataset, root: str | os.PathLike | None) -> CatalogRows:
    import pyarrow.dataset as ds

    kind = "parquet" if isinstance(dataset.format, ds.ParquetFileFormat) else "csv"
    if kind == "csv" and not isinstance(dataset.format, ds.CsvFileFormat):
        raise TypeError(f"pyarrow datasets of {dataset.format.default_extname} files are not read")
    files = [(path, kind) for path in dataset.files]
    return _files_rows("the pyarrow dataset", files, dataset.filesystem, None, root)


def _path_rows(path: Path, root: str | os.PathLike | None) -> CatalogRows:
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and _kind(p) is not None
        )
        if not found:
            raise CatalogError(f"catalog folder {path} holds no .parquet, .csv or .tsv file")
        files = [(str(p), _kind(p)) for p in found]
        return _files_rows(f"catalog folder {path}", files, None, path, root)
    if not path.is_file():
        raise CatalogError(f"catalog {path} does not exist")
    if _kind(path) is None:
        raise CatalogError(f"catalog file {path}: unknown format; use .csv, .tsv or .parquet")
    return _files_rows(f"catalog {path}", [(str(path), _kind(path))], None, path.parent, root)


def _kind(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in PARQUET_SUFFIXES:
        return "parquet"
    if any(s in CSV_SUFFIXES for s in suffixes):
        return "tsv" if ".tsv" in suffixes else "csv"
    return None


def _files_rows(
    name: str,
    files: Sequence[tuple[str, str]],
    filesystem,
    top: Path | None,
    root: str | os.PathLike | None,
) -> CatalogRows:
    """Pieces of each file in order, and the files' names, sizes and modification times."""
    from pyarrow import fs

    filesystem = filesystem or fs.LocalFileSystem()
    pieces, stamps = [], []
    for path, kind in files:
        info = filesystem.get_file_info(path)
        relative = os.path.relpath(path, top) if top is not None else path
        stamps.append([relative, info.size, info.mtime_ns])
        base = str(Path(root).expanduser().resolve()) if root else str(Path(path).parent.resolve())
        opener = _parquet_pieces if kind == "parquet" else _csv_pieces
        pieces += opener(path, kind, filesystem, base)
    text = repr((stamps, None if root is None else str(root))).encode()
    return CatalogRows(name, pieces, {"files": hashlib.blake2b(text, digest_size=16).hexdigest()})


def _parquet_pieces(path: str, kind: str, filesystem, base: str) -> list[_Piece]:
    with filesystem.open_input_file(path) as handle:
        metadata = pq.ParquetFile(handle).metadata
        names = metadata.schema.to_arrow_schema().names
    columns = tuple(_columns(names, f"catalog file {path}"))
    return [
        _ParquetGroup(
            metadata.row_group(g).num_rows,
            f"{path} (row group {g})",
            base,
            path,
            g,
            columns,
            filesystem,
        )
        for g in range(metadata.num_row_groups)
    ]


def _open_csv(path: str, delimiter: str, columns: Sequence[str] | None, filesystem):
    """(the open file, a streaming CSV reader of `columns` (all if None), ids and paths as text)."""
    handle = filesystem.open_input_stream(path, compression="detect")
    convert = pa_csv.ConvertOptions(
        column_types={c: pa.string() for c in (ID, FILE)},
        include_columns=None if columns is None else list(columns),
    )
    reader = pa_csv.open_csv(
        handle, parse_options=pa_csv.ParseOptions(delimiter=delimiter), convert_options=convert
    )
    return handle, reader


def _csv_pieces(path: str, kind: str, filesystem, base: str) -> list[_Piece]:
    delimiter = "\t" if kind == "tsv" else ","
    handle, reader = _open_csv(path, delimiter, None, filesystem)
    with handle:
        columns = tuple(_columns(reader.schema.names, f"catalog file {path}"))
    handle, reader = _open_csv(path, delimiter, columns[:1], filesystem)
    with handle:
        n_rows = sum(batch.num_rows for batch in reader)
    return [_CsvFile(n_rows, path, base, path, delimiter, columns, filesystem)]
