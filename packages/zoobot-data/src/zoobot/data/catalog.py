"""Galaxy catalogs: load one from the registry or a file and validate it against a schema.

A catalog is a DataFrame with `id_str` (text), `file_loc` (an image path) and label columns, the
same in every Zoobot package. Validation errors name the rows (position and `id_str`) and the
columns (`zoobot.data.rows`), label columns are checked by `zoobot.data.labels`. Splitting a
catalog is in `zoobot.data.splits`.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot.data.labels import LabelRule, label_problems
from zoobot.data.rows import CatalogError, describe_rows, problems_error, row_label
from zoobot.data.sources import DataSource, get_source, list_sources
from zoobot.shared import Schema, as_schema

__all__ = [
    "SPLIT_COLUMN",
    "CatalogError",
    "build_file_locs",
    "describe_rows",
    "file_problems",
    "id_problems",
    "load_catalog",
    "read_catalog_file",
    "row_label",
    "validate_catalog",
]

SPLIT_COLUMN = "split"  # the column holding each row's split, as load_catalog writes it
TEXT_COLUMNS = {"id_str": str, "file_loc": str}
# pandas' default missing-value markers (its read_csv documentation), kept for the other columns:
# in `id_str` and `file_loc` only an empty field is missing, so a galaxy named "NA" keeps its id.
CSV_NA_VALUES = (
    *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"),
    *("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
)


def read_catalog_file(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or Parquet catalog, keeping `id_str` as text."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if not path.is_file():
        raise CatalogError(f"catalog file {path} does not exist")
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if ".csv" in suffixes or ".tsv" in suffixes:
            sep = "\t" if ".tsv" in suffixes else ","
            columns = pd.read_csv(path, sep=sep, nrows=0).columns
            missing = {c: [""] if c in TEXT_COLUMNS else list(CSV_NA_VALUES) for c in columns}
            # Read ids as text: numeric ids such as "007" would otherwise lose their leading zeros.
            return pd.read_csv(
                path, sep=sep, dtype=TEXT_COLUMNS, keep_default_na=False, na_values=missing
            )
    except (ValueError, OSError) as err:  # pandas' parser and pyarrow errors are ValueErrors
        raise CatalogError(f"catalog file {path} cannot be read: {err}") from err
    raise CatalogError(f"catalog file {path}: unknown format; use .csv, .tsv or .parquet")


def _resolve(file_locs: pd.Series, base: Path) -> pd.Series:
    """Make relative image paths absolute under `base`; absolute paths are kept."""
    return file_locs.map(
        lambda loc: loc if not isinstance(loc, str) or os.path.isabs(loc) else str(base / loc)
    )


def build_file_locs(catalog: pd.DataFrame, template: str, root: str | os.PathLike) -> pd.Series:
    """Image paths under `root` from a template of columns, e.g. `images/{subfolder}/{filename}`."""
    pieces = list(string.Formatter().parse(template))
    missing = [field for _, field, _, _ in pieces if field and field not in catalog.columns]
    if missing:
        raise CatalogError(
            f"cannot build file_loc from {template!r}: the catalog has no column(s) {missing}"
        )
    built = pd.Series("", index=catalog.index, dtype=object)
    for literal, field, _, _ in pieces:
        built = built + literal
        if field:
            built = built + catalog[field].astype(str)
    return _resolve(built, Path(root).expanduser().resolve())


def _load_registered(
    source: DataSource, root: str | os.PathLike | None, split: str | None
) -> pd.DataFrame:
    if root is None:
        raise CatalogError(
            f"data set {source.name!r} needs the folder it was downloaded into: "
            f"load_catalog({source.name!r}, root=...)"
        )
    root = Path(root).expanduser()
    catalogs = source.catalogs
    if split is not None and split not in catalogs:
        raise CatalogError(
            f"data set {source.name!r} has no split {split!r}; splits: {', '.join(catalogs)}"
        )
    frames = []
    for name, file in catalogs.items():
        if split is not None and name != split:
            continue
        path = root / file.filename
        if not path.is_file():
            raise CatalogError(
                f"catalog {path} of data set {source.name!r} is missing; fetch it with "
                f"zoobot.data.download.download({source.name!r}, {str(root)!r})"
            )
        frame = read_catalog_file(path)
        if split is None:
            frame[SPLIT_COLUMN] = name
        frames.append(frame)
    catalog = pd.concat(frames, ignore_index=True)
    catalog["file_loc"] = build_file_locs(catalog, source.file_loc, root)
    if "id_str" not in catalog.columns:
        # Galaxy Zoo images are named after their galaxy, so the file name is an id.
        catalog["id_str"] = catalog["file_loc"].map(lambda loc: Path(loc).stem)
    return catalog


def _as_source(name_or_path: str | os.PathLike | DataSource) -> DataSource | None:
    """The registered data set meant by `name_or_path`, or None when it names a file."""
    if isinstance(name_or_path, DataSource):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in list_sources():
        return get_source(name_or_path)
    return None


def load_catalog(
    name_or_path: str | os.PathLike | DataSource,
    root: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    schema: Schema | str | None = None,
    label_cols: Iterable[str] | None = None,
    check_files: bool = False,
) -> pd.DataFrame:
    """A validated catalog: a registered data set downloaded into `root`, or a CSV/Parquet file.

    For a registered name (or a `DataSource`), `file_loc` is built from its image layout under
    `root`; `split` picks one catalog (default: all, with a `split` column); the data set's schema
    or label columns are checked.
    For a file, relative `file_loc` values are resolved against `root` if given, else the file's
    folder; `schema` and `label_cols` say which label columns to check.
    """
    source = _as_source(name_or_path)
    if source is not None:
        catalog = _load_registered(source, root, split)
        schema = schema if schema is not None else source.schema
        label_cols = label_cols if label_cols is not None else source.label_cols
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise CatalogError(
                f"{str(name_or_path)!r} is neither a registered data set "
                f"({', '.join(list_sources())}) nor an existing catalog file"
            )
        catalog = read_catalog_file(path)
        if "file_loc" not in catalog.columns:
            raise CatalogError(
                f"catalog {path} has no file_loc column (the path of each galaxy's image); "
                f"columns: {list(catalog.columns)}"
            )
        base = Path(root).expanduser() if root is not None else path.parent
        catalog["file_loc"] = _resolve(catalog["file_loc"], base.resolve())
    return validate_catalog(catalog, schema, label_cols=label_cols, check_files=check_files)


def _missing_text(values: pd.Series) -> np.ndarray:
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


def id_problems(catalog: pd.DataFrame) -> list[str]:
    """What is wrong with `id_str` (absent, float, empty or repeated, naming rows); [] if nothing."""
    problems: list[str] = []
    if "id_str" not in catalog.columns:
        return ["no id_str column (a unique text id per galaxy)"]
    ids = catalog["id_str"]
    if pd.api.types.is_float_dtype(ids) and len(ids):
        problems.append(
            "id_str is floating point, so long numeric ids may have lost digits; "
            "store id_str as text (e.g. read the CSV with dtype={'id_str': str})"
        )
    empty = _missing_text(ids)
    if empty.any():
        problems.append(f"id_str is empty in {describe_rows(catalog, empty)}")
    text = ids.astype(str)
    padded = ~empty & (text != text.str.strip()).to_numpy()
    if padded.any():
        problems.append(
            f"id_str has leading or trailing spaces in {describe_rows(catalog, padded)} "
            "(an id must match exactly; strip them in the catalog if they are not part of it)"
        )
    duplicated = ids.duplicated(keep=False).to_numpy() & ~empty
    if duplicated.any():
        problems.append(f"id_str repeats in {describe_rows(catalog, duplicated)}")
    return problems


def file_problems(catalog: pd.DataFrame, check_files: bool) -> list[str]:
    """What is wrong with `file_loc` (absent, empty, or with `check_files` no such file); [] if nothing."""
    problems: list[str] = []
    if "file_loc" not in catalog.columns:
        return ["no file_loc column (the path of each galaxy's image)"]
    empty = _missing_text(catalog["file_loc"])
    if empty.any():
        problems.append(f"file_loc is empty in {describe_rows(catalog, empty)}")
    if check_files:
        absent = ~empty & ~catalog["file_loc"].map(
            lambda loc: isinstance(loc, (str, os.PathLike)) and os.path.isfile(loc)
        ).to_numpy(dtype=bool)
        if absent.any():
            first = catalog["file_loc"].iloc[int(np.flatnonzero(absent)[0])]
            problems.append(
                f"file_loc points to no file in {describe_rows(catalog, absent)} (first: {first})"
            )
    return problems


def validate_catalog(
    catalog: pd.DataFrame,
    schema: Schema | str | None = None,
    *,
    label_cols: Iterable[str] | None = None,
    check_files: bool = False,
) -> pd.DataFrame:
    """A checked copy of `catalog` with `id_str` and `file_loc` as text; `CatalogError` otherwise.

    Checks: at least one row; `id_str` present, non-empty, unique, without surrounding spaces and
    not a float; `file_loc` present (and pointing to files if `check_files`); every label column
    of `schema` (a `Schema` or a registry name) and of `label_cols` (which must be answers of the
    schema, if one is given) present and holding vote counts (`zoobot.data.labels`: finite,
    non-negative whole numbers of at most `zoobot.shared.MAX_VOTES`).
    """
    schema = as_schema(schema) if schema is not None else None
    columns = list(schema.label_cols) if schema is not None else []
    extra = [c for c in (label_cols or ()) if c not in columns]
    problems = [] if len(catalog) else ["the catalog has no rows"]
    if schema is not None and extra:
        problems.append(f"label column(s) {extra} are not answers of schema {schema.name!r}")
    problems += [*id_problems(catalog), *file_problems(catalog, check_files)]
    problems += label_problems(catalog, LabelRule.votes(columns + extra))
    if problems:
        against = f" against schema {schema.name!r}" if schema is not None else ""
        raise problems_error(problems, f"catalog failed validation{against}")
    checked = catalog.copy()
    for column in TEXT_COLUMNS:
        checked[column] = checked[column].astype(str)
    return checked
