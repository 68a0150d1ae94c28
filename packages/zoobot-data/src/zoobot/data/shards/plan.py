"""From a catalog to a shard plan: validated ids and labels, seeded splits, the rows of each shard."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from zoobot.data.catalog import CatalogError, file_problems, id_problems, row_label
from zoobot.data.labels import LabelRule, check_labels
from zoobot.data.shards.errors import ShardError
from zoobot.data.shards.example import FIXED_FEATURES
from zoobot.data.shards.layout import FORMAT_VERSION, shard_name
from zoobot.data.splits import Splits, assign_splits
from zoobot.shared import Schema, as_schema


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its rows (catalog positions, for errors), ids, image paths and labels."""

    out_dir: str
    split: str
    file: str
    rows: list[int]
    ids: list[str]
    paths: list[str]
    labels: np.ndarray
    label_cols: tuple[str, ...]
    plan_key: str


def resolve_label_cols(
    label_cols: Sequence[str] | None, schema: Schema | str | None
) -> tuple[list[str], str | None]:
    """The label columns to store (the schema's by default) and the schema name for the sidecar."""
    schema = as_schema(schema) if schema is not None else None
    if label_cols is None:
        cols = list(schema.label_cols) if schema is not None else []
    else:
        cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
        if schema is not None:
            known = set(schema.label_cols)
            for col in cols:
                if col not in known:
                    raise ShardError(f"label column {col!r} is not in schema {schema.name!r}")
    repeated = sorted({c for c in cols if cols.count(c) > 1})
    if repeated:
        raise ShardError(f"label columns repeated: {repeated}")
    clashes = sorted(set(cols) & set(FIXED_FEATURES))
    if clashes:
        raise ShardError(f"label columns {clashes} clash with the fixed feature names")
    return cols, schema.name if schema is not None else None


def where(row: int, id_str: object) -> str:
    """`catalog row 3 (id_str 'x')`: the row named in shard errors."""
    return f"catalog {row_label(row, id_str)}"


def _ids_and_paths(catalog: pd.DataFrame) -> tuple[list[str], list[str]]:
    """`id_str` as text and absolute image paths, checked by `zoobot.data.catalog`'s rules."""
    column = catalog["id_str"] if "id_str" in catalog.columns else None
    if column is not None and pd.api.types.is_numeric_dtype(column):
        # Stricter than validate_catalog: integer ids have already lost any leading zeros.
        raise ShardError(
            f"catalog column 'id_str' has dtype {column.dtype}; ids must be strings (read the "
            "catalog with dtype={'id_str': str} so ids like '0012' keep their leading zeros)"
        )
    problems = [*id_problems(catalog), *file_problems(catalog, check_files=True)]
    if problems:
        raise ShardError("cannot shard this catalog: " + "; ".join(problems))
    paths = [os.path.abspath(path) for path in catalog["file_loc"]]
    return column.astype(str).tolist(), paths


def label_rule(label_cols: list[str], schema_name: str | None) -> LabelRule:
    """What the stored labels must be: a schema's vote counts, else finite numbers."""
    return LabelRule.votes(label_cols) if schema_name is not None else LabelRule.targets(label_cols)


def _labels(catalog: pd.DataFrame, rule: LabelRule) -> np.ndarray:
    """float32 labels, checked by `rule` (`zoobot.data.labels`), which keeps them exact."""
    try:
        check_labels(catalog, rule)
    except CatalogError as err:
        raise ShardError(str(err)) from err
    return catalog[list(rule.columns)].to_numpy(dtype=np.float32).reshape(len(catalog), -1)


def read_catalog(catalog: pd.DataFrame, rule: LabelRule) -> tuple[list[str], list[str], np.ndarray]:
    """(id_str, absolute image path, float32 labels) per row, or an error naming the row and column."""
    ids, paths = _ids_and_paths(catalog)
    return ids, paths, _labels(catalog, rule)


def split_rows(
    catalog: pd.DataFrame, ids: list[str], splits: Splits, seed: int
) -> dict[str, np.ndarray]:
    """Catalog row positions of each split (`splits.assign_splits`), shuffled with `seed`.

    Rows are put in `id_str` order before the shuffle, so every shard is a random sample and the
    shards are the same whatever the catalog's row order.
    """
    try:
        members = assign_splits(catalog, splits, seed)
    except CatalogError as err:
        raise ShardError(str(err)) from err
    rng = np.random.default_rng(seed)
    ids_array = np.asarray(ids, dtype=str)
    return {
        name: rng.permutation(rows[np.argsort(ids_array[rows], kind="stable")])
        for name, rows in members.items()
    }


def _plan_key(ids: list[str], paths: list[str], labels: np.ndarray, cols: Sequence[str]) -> str:
    # Fingerprint of a shard's inputs: a finished shard is reused only if the plan is unchanged.
    digest = hashlib.sha256(f"v{FORMAT_VERSION}\n".encode())
    for part in ("\x1f".join(cols), "\x00".join(ids), "\x00".join(paths)):
        digest.update(part.encode())
        digest.update(b"\x1e")
    digest.update(np.ascontiguousarray(labels, dtype="<f4").tobytes())
    return digest.hexdigest()


def plan_shards(
    out_dir: str,
    assignments: Mapping[str, np.ndarray],
    ids: list[str],
    paths: list[str],
    labels: np.ndarray,
    label_cols: Sequence[str],
    shard_size: int,
) -> list[ShardTask]:
    """Cut each split into near-equal shards of at most `shard_size` records."""
    ids_array, paths_array = np.asarray(ids, dtype=object), np.asarray(paths, dtype=object)
    tasks = []
    for split, rows in assignments.items():
        count = math.ceil(len(rows) / shard_size)
        for index, chunk in enumerate(np.array_split(rows, count) if count else []):
            chunk_ids, chunk_paths = ids_array[chunk].tolist(), paths_array[chunk].tolist()
            chunk_labels = labels[chunk]
            tasks.append(
                ShardTask(
                    out_dir=out_dir,
                    split=split,
                    file=shard_name(split, index, count),
                    rows=chunk.tolist(),
                    ids=chunk_ids,
                    paths=chunk_paths,
                    labels=chunk_labels,
                    label_cols=tuple(label_cols),
                    plan_key=_plan_key(chunk_ids, chunk_paths, chunk_labels, label_cols),
                )
            )
    return tasks
