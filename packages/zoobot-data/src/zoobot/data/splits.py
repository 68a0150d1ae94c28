"""Reproducible splits of a catalog: the one split rule of shards, Hugging Face datasets and training.

Membership depends only on the `id_str` values, the seed and the fractions, never on row order, or
comes from a column naming each row's split (`split` by default, as `load_catalog` writes it).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

import numpy as np
import pandas as pd

from zoobot.data.catalog import SPLIT_COLUMN, CatalogError, describe_rows

DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
STANDARD_SPLITS = ("train", "validation", "test")
# Split names become file names (shards, parquet files), so they are kept to a safe alphabet.
SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")

Splits = None | str | Mapping[str, float]


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise CatalogError(
            f"fractions must be a non-empty {{split: fraction}} dict, got {fractions!r}"
        )
    bad = {k: v for k, v in fractions.items() if not isinstance(v, (int, float)) or not v > 0}
    if bad or not all(isinstance(k, str) and k for k in fractions):
        raise CatalogError(
            f"fractions must map split names to positive numbers; bad: {bad or fractions}"
        )
    total = float(sum(fractions.values()))
    if not np.isfinite(total) or abs(total - 1.0) > 1e-6:
        raise CatalogError(f"fractions must sum to 1, got {total:g} from {dict(fractions)}")
    return {k: float(v) for k, v in fractions.items()}


def _split_positions(
    catalog: pd.DataFrame, fractions: dict[str, float], seed: int, stratify: str | None
) -> dict[str, np.ndarray]:
    """Ascending row positions of each split: the seeded, id-ordered cut `split_catalog` documents."""
    if "id_str" not in catalog.columns:
        raise CatalogError("split_catalog needs an id_str column to split reproducibly")
    ids = catalog["id_str"].astype(str)
    repeated = ids.duplicated(keep=False).to_numpy()
    if repeated.any():
        raise CatalogError(
            f"split_catalog needs unique id_str; repeated in {describe_rows(catalog, repeated)}"
        )
    if stratify is not None and stratify not in catalog.columns:
        raise CatalogError(f"cannot stratify by {stratify!r}: no such column")
    order = np.argsort(ids.to_numpy(dtype=str), kind="stable")
    strata = (
        pd.Series(0, index=range(len(catalog)))
        if stratify is None
        else catalog[stratify].astype(str).reset_index(drop=True)
    )
    cuts = np.cumsum(list(fractions.values()))
    cuts[-1] = 1.0
    names = np.array(list(fractions))
    assigned = np.empty(len(catalog), dtype=object)
    rng = np.random.default_rng(seed)
    ordered = strata.iloc[order]
    for _, group in ordered.groupby(ordered, sort=True):
        positions = group.index.to_numpy()[rng.permutation(len(group))]
        # Systematic cut: the j-th shuffled row sits at quantile (j + offset) / n of its stratum.
        quantiles = np.arange(len(group)) + rng.random()
        assigned[positions] = names[
            np.searchsorted(np.round(cuts * len(group), 9), quantiles, side="right")
        ]
    return {name: np.flatnonzero(assigned == name) for name in fractions}


def split_catalog(
    catalog: pd.DataFrame,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    stratify: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Split a catalog into `{name: rows}` by `fractions`, reproducibly, optionally per stratum.

    Membership depends only on the `id_str` values, `seed` and `fractions` (not on row order):
    rows are ordered by `id_str`, shuffled with `seed`, and cut at the cumulative fractions, within
    each value of the `stratify` column if given (so each split keeps that column's proportions; a
    stratum too small to cut lands at random). Each split keeps the input's row order and index.
    """
    fractions = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    positions = _split_positions(catalog, fractions, seed, stratify)
    return {name: catalog.iloc[rows] for name, rows in positions.items()}


def resolve_splits(catalog: pd.DataFrame, splits: Splits) -> str | Mapping[str, float]:
    """What `splits=None` means: the catalog's `split` column if it has one, else 80/10/10.

    Shards, Hugging Face datasets and the training data modules share this default, so a data set
    published with its own split (as `load_catalog` returns registered ones) keeps it everywhere.
    """
    if splits is not None:
        return splits
    return SPLIT_COLUMN if SPLIT_COLUMN in catalog.columns else dict(DEFAULT_FRACTIONS)


def _split_order(name: str) -> tuple[int, str]:
    """Sort key: train, validation, test first, then any other split alphabetically."""
    known = STANDARD_SPLITS.index(name) if name in STANDARD_SPLITS else len(STANDARD_SPLITS)
    return known, name


def _check_split_names(names: Iterable[object], allowed: Collection[str] | None) -> None:
    """Each split name safe as a file name and, if `allowed` is given, among it."""
    for name in names:
        if not isinstance(name, str) or not SPLIT_NAME.fullmatch(name):
            raise CatalogError(
                f"split name {name!r} must be letters, digits or '_' (it names files)"
            )
        if allowed is not None and name not in allowed:
            raise CatalogError(f"split name {name!r} is not among {list(allowed)}")


def _column_positions(
    catalog: pd.DataFrame, column: str, allowed: Collection[str] | None
) -> dict[str, np.ndarray]:
    """Ascending row positions of each value of the split column, every value checked."""
    if column not in catalog.columns:
        raise CatalogError(
            f"split column {column!r} is not in the catalog; columns: {list(catalog.columns)}"
        )
    values = catalog[column].to_numpy(dtype=object)
    valid = np.array(
        [
            isinstance(v, str)
            and SPLIT_NAME.fullmatch(v) is not None
            and (allowed is None or v in allowed)
            for v in values
        ],
        dtype=bool,
    )
    if not valid.all():
        bad = sorted({repr(v) for v in values[~valid]})
        rule = f"one of {list(allowed)}" if allowed is not None else "letters, digits or '_'"
        raise CatalogError(
            f"split column {column!r} holds {', '.join(bad)} in {describe_rows(catalog, ~valid)}; "
            f"each row's split must be {rule}"
        )
    names = sorted(set(values.tolist()), key=_split_order)
    return {name: np.flatnonzero(values == name) for name in names}


def assign_splits(
    catalog: pd.DataFrame,
    splits: Splits,
    seed: int,
    *,
    allowed: Collection[str] | None = None,
) -> dict[str, np.ndarray]:
    """Ascending row positions of each split: the one split rule of shards, datasets and training.

    `splits` is None (see `resolve_splits`: the `split` column, else 80/10/10), the name of a column
    holding each row's split, or `{name: fraction}` cut by `split_catalog` with `seed` (membership
    depends on the ids and the seed, not on row order). Split names must be letters, digits or '_'
    and, if `allowed` is given, among it. Column splits come train, validation, test first; empty
    fraction splits are kept. `CatalogError` names the column, the bad values and their rows.
    """
    splits = resolve_splits(catalog, splits)
    if isinstance(splits, str):
        return _column_positions(catalog, splits, allowed)
    fractions = _check_fractions(splits)
    _check_split_names(fractions, allowed)
    return _split_positions(catalog, fractions, seed, stratify=None)


def split_tables(data, splits: Splits = None, seed: int = 0) -> dict:
    """Rows of each split of a catalog (DataFrame) or a Hugging Face `datasets.Dataset`, by
    `assign_splits`: what every framework's training data is cut by."""
    if isinstance(data, pd.DataFrame):
        return {name: data.iloc[rows] for name, rows in assign_splits(data, splits, seed).items()}
    columns = [c for c in ("id_str", SPLIT_COLUMN) if c in data.column_names]
    positions = assign_splits(data.select_columns(columns).to_pandas(), splits, seed)
    return {name: data.select(rows) for name, rows in positions.items()}
