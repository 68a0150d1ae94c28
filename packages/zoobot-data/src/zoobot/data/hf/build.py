"""From a catalog to a `datasets.DatasetDict`: image bytes as stored, vote counts, totals and fractions.

Derived columns follow the published Galaxy Zoo catalogs: `<question>_total-votes` is the sum of the
question's answer counts and `<question>_<answer>_fraction` is count / total, stored as null (NaN in
pandas, None in Python rows) where nobody answered the question: a fraction of no votes is undefined,
and 0 would read as "volunteers said no".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Image, Value
from datasets.exceptions import DatasetGenerationError

from zoobot.data.catalog import validate_catalog
from zoobot.data.hf.errors import HubDatasetError
from zoobot.data.images import ImageDecodeError, check_image
from zoobot.data.rows import row_label
from zoobot.data.splits import STANDARD_SPLITS, Splits, assign_splits
from zoobot.shared import Schema, as_schema, question_sums, vote_fractions


def total_col(question: str) -> str:
    """`<question>_total-votes`, the published catalogs' name for a question's vote total."""
    return f"{question}_total-votes"


def fraction_col(label_col: str) -> str:
    """`<question>_<answer>_fraction`, the published catalogs' name for a vote fraction."""
    return f"{label_col}_fraction"


def vote_columns(counts: np.ndarray, schema: Schema) -> dict[str, np.ndarray]:
    """Totals (int64) and fractions (float64, NaN where the question has no votes) from `(n, k)` counts."""
    totals = question_sums(counts, schema).astype(np.int64)
    fractions = vote_fractions(counts, schema)
    columns = {total_col(q.name): totals[:, i] for i, q in enumerate(schema.questions)}
    columns.update({fraction_col(c): fractions[:, j] for j, c in enumerate(schema.label_cols)})
    return columns


def dataset_features(schema: Schema, extras: pd.DataFrame | None = None) -> Features:
    """`id_str`, `image`, int64 counts, int64 totals, float64 fractions, then any extra columns."""
    features = {"id_str": Value("string"), "image": Image()}
    features.update({c: Value("int64") for c in schema.label_cols})
    features.update({total_col(q.name): Value("int64") for q in schema.questions})
    features.update({fraction_col(c): Value("float64") for c in schema.label_cols})
    if extras is not None and len(extras.columns):
        arrow = pa.Schema.from_pandas(extras, preserve_index=False)
        features.update(Features.from_arrow_schema(arrow))
    return Features(features)


def _check_extras(catalog: pd.DataFrame, schema: Schema, extra_columns: list[str]) -> pd.DataFrame:
    """The extra catalog columns to carry over, which must exist and not shadow derived ones."""
    missing = [c for c in extra_columns if c not in catalog.columns]
    if missing:
        raise HubDatasetError(f"extra columns {missing} are not in the catalog")
    reserved = {*dataset_features(schema), "file_loc", "split"}
    clashes = sorted({c for c in extra_columns if c in reserved or extra_columns.count(c) > 1})
    if clashes:
        raise HubDatasetError(f"extra columns repeat or clash with the dataset's own: {clashes}")
    return catalog[extra_columns]


MAX_FAILURES_SHOWN = 10


def check_images(catalog: pd.DataFrame) -> None:
    """Every `file_loc` an image `zoobot.data.images.check_image` accepts, else `HubDatasetError`
    listing each unusable one (row, id, file, reason) before anything is built."""
    failures = []
    for position, (id_str, path) in enumerate(
        zip(catalog["id_str"], catalog["file_loc"], strict=True)
    ):
        where = f"{row_label(position, id_str)}, file {path}"
        try:
            check_image(Path(path).read_bytes(), where)
        except OSError as err:
            failures.append(f"{where}: cannot read: {err.strerror or err}")
        except ImageDecodeError as err:
            failures.append(str(err))
    if failures:
        shown = "\n".join(f"  - {f}" for f in failures[:MAX_FAILURES_SHOWN])
        more = len(failures) - MAX_FAILURES_SHOWN
        raise HubDatasetError(
            f"{len(failures)} image(s) of the catalog cannot be used; fix the files or drop those "
            f"rows:\n{shown}" + (f"\n  ... and {more} more" if more > 0 else "")
        )


def _image(path: str) -> dict:
    """The `Image` value of a file (checked by `check_images`): its bytes unchanged."""
    return {"bytes": Path(path).read_bytes(), "path": Path(path).name}


def _rows(records: list[dict], paths: list[str]) -> Iterator[dict]:
    # datasets splits list-valued gen_kwargs into shards, so rows and paths travel as equal lists.
    for record, path in zip(records, paths, strict=True):
        yield {**record, "image": _image(path)}


def _records(columns: dict[str, list]) -> list[dict]:
    """Column lists to row dicts."""
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


def _fingerprint(columns: dict[str, list], paths: list[str], features: Features) -> str:
    # Keys the Arrow cache: the same rows, files (size and modification time) and features reuse it;
    # an image rewritten in place invalidates it, as datasets does for its own data files.
    digest = hashlib.sha256(repr(features.to_dict()).encode())
    for name, values in columns.items():
        digest.update(f"\x1e{name}\x1f{values!r}".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(
            f"\x1e{os.path.abspath(path)}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}".encode()
        )
    return digest.hexdigest()


def to_hf_dataset(
    catalog: pd.DataFrame,
    schema: Schema | str,
    splits: Splits = None,
    seed: int = 42,
    extra_columns: Sequence[str] = (),
    cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """A `DatasetDict` of the catalog's galaxies: image bytes as stored, counts, totals and fractions.

    The catalog is checked with `validate_catalog` (`CatalogError` lists every problem) and its
    images by `zoobot.data.images`' rules (`HubDatasetError` lists every unusable one). `splits`
    follows `zoobot.data.splits.assign_splits` (the same galaxies per split as `write_shards` with
    the same catalog, splits and seed), restricted to `train`/`validation`/`test`: None uses the
    catalog's `split` column if it has one, else 80/10/10; a string names the split column; a dict
    gives fractions (membership depends on the ids and the seed, not on row order). Empty splits
    are left out.
    `extra_columns` (e.g. `ra`, `dec`) are carried over unchanged. Rows are written to the datasets
    Arrow cache (`cache_dir`), so catalogs larger than memory work.
    """
    schema = as_schema(schema)
    catalog = validate_catalog(catalog, schema, check_files=True)
    extras = _check_extras(catalog, schema, list(extra_columns))
    check_images(catalog)
    features = dataset_features(schema, extras)
    splits_out = {}
    for name, positions in assign_splits(catalog, splits, seed, allowed=STANDARD_SPLITS).items():
        if not len(positions):
            continue
        rows = catalog.iloc[positions]
        counts = rows[schema.label_cols].to_numpy(dtype=np.int64)
        columns = {"id_str": rows["id_str"].tolist()}
        columns.update({c: counts[:, j].tolist() for j, c in enumerate(schema.label_cols)})
        # NaN fractions become nulls: Arrow keeps a Python NaN as a number.
        columns.update(
            {
                c: [None if v != v else v for v in values.tolist()]
                for c, values in vote_columns(counts, schema).items()
            }
        )
        columns.update({c: rows[c].tolist() for c in extras.columns})
        paths = rows["file_loc"].tolist()
        try:
            splits_out[name] = Dataset.from_generator(
                _rows,
                features=features,
                gen_kwargs={"records": _records(columns), "paths": paths},
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                fingerprint=_fingerprint(columns, paths, features),
                split=name,
            )
        except DatasetGenerationError as err:
            # datasets hides our error behind "An error occurred while generating the dataset".
            if isinstance(err.__cause__, HubDatasetError):
                raise HubDatasetError(str(err.__cause__)) from err.__cause__
            raise
    return DatasetDict(splits_out)
