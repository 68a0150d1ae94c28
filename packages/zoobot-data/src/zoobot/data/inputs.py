"""Where galaxies come from: an image catalog or a folder of `zoobot-data` TFRecord shards, as every
framework's input pipeline reads them.

`open_source` turns what a user passes (a catalog DataFrame, a catalog file, or a shard folder with
its `shards.json` sidecar) into a `CatalogSource` or a `ShardSource`: the rows of one split (or all
of them), their `id_str` (always text) and, for catalogs, image paths and float32 labels. Label
columns are checked here, so a missing column fails before any image is read, with an error naming
the column(s) and the catalog or shard folder.

Catalog splits come from `zoobot.data.splits.assign_splits`, the rule `zoobot.torch`'s
`GalaxyDataModule` uses, so the same catalog, `splits` and seed give the same train / validation /
test membership in both frameworks. Shard splits are fixed when the shards are written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot.data.catalog import load_catalog, validate_catalog
from zoobot.data.labels import LabelRule, check_labels
from zoobot.data.shards import SIDECAR, ShardError
from zoobot.data.shards.example import decode_example
from zoobot.data.shards.layout import load_sidecar
from zoobot.data.shards.tfrecord import read_records
from zoobot.data.splits import Splits, assign_splits
from zoobot.shared import Schema, as_schema

Source = pd.DataFrame | str | os.PathLike
LabelCols = Sequence[str] | str | None


class LabelColumnError(KeyError):
    """Requested label columns that a catalog or shard folder does not hold (names them all)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class CatalogSource:
    """Rows of an image catalog: `positions` in the catalog, ids, image paths, float32 labels."""

    name: str
    positions: np.ndarray  # int64, 0-based row positions in the catalog given
    ids: np.ndarray  # str
    paths: np.ndarray  # str
    labels: np.ndarray  # float32 (rows, len(label_cols))
    label_cols: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ShardSource:
    """The shard files of one split (or all, in sidecar order) of a shard folder."""

    folder: Path
    split: str | None
    files: tuple[str, ...]  # absolute paths, in sidecar order
    counts: tuple[int, ...]  # records per file
    label_cols: tuple[str, ...]
    sidecar: dict

    def __len__(self) -> int:
        return sum(self.counts)


def is_shard_folder(source: object) -> bool:
    """True for a folder holding a `shards.json` sidecar."""
    if not isinstance(source, str | os.PathLike):
        return False
    path = Path(source).expanduser()
    return path.is_dir() and (path / SIDECAR).is_file()


def resolve_label_cols(label_cols: LabelCols, schema: Schema | str | None) -> tuple[str, ...]:
    """The label columns asked for: `label_cols`, else the schema's, else none.

    With both, every one of `label_cols` must be an answer of the schema.
    """
    schema = as_schema(schema) if schema is not None else None
    if label_cols is None:
        return tuple(schema.label_cols) if schema is not None else ()
    cols = (label_cols,) if isinstance(label_cols, str) else tuple(label_cols)
    if schema is not None:
        unknown = [c for c in cols if c not in set(schema.label_cols)]
        if unknown:
            raise LabelColumnError(f"label column(s) {unknown} are not in schema {schema.name!r}")
    repeated = sorted({c for c in cols if cols.count(c) > 1})
    if repeated:
        raise ValueError(f"label columns repeated: {repeated}")
    return cols


def _rule(label_cols: tuple[str, ...], rule: LabelRule | None) -> LabelRule:
    """The rule the labels are checked by: `rule` (for `label_cols`), else targets (finite)."""
    if rule is None:
        return LabelRule.targets(label_cols)
    if tuple(rule.columns) != tuple(label_cols):
        raise ValueError(
            f"the label rule checks columns {list(rule.columns)}, but the label columns asked for "
            f"are {list(label_cols)}"
        )
    return rule


def _catalog(
    catalog: pd.DataFrame,
    name: str,
    label_cols: tuple[str, ...],
    split: str | None,
    splits: Splits,
    split_seed: int,
    rule: LabelRule | None = None,
) -> CatalogSource:
    missing = [c for c in ("id_str", "file_loc") if c not in catalog.columns]
    if missing:
        raise ValueError(
            f"{name} needs columns id_str and file_loc; missing {missing}, "
            f"columns: {list(catalog.columns)}"
        )
    absent = [c for c in label_cols if c not in catalog.columns]
    if absent:
        raise LabelColumnError(
            f"{name} has no label column(s) {absent}; its columns are {list(catalog.columns)}"
        )
    checked = validate_catalog(catalog.loc[:, ["id_str", "file_loc"]])
    check_labels(catalog, _rule(label_cols, rule), name)
    positions = np.arange(len(catalog), dtype=np.int64)
    if split is not None:
        members = assign_splits(catalog, splits, split_seed)
        if split not in members:
            raise KeyError(f"no split {split!r} in {name}; its splits are {list(members)}")
        positions = members[split].astype(np.int64)
    labels = catalog[list(label_cols)].to_numpy(np.float32, copy=True)[positions]
    return CatalogSource(
        name=name,
        positions=positions,
        ids=checked["id_str"].to_numpy(dtype=str)[positions],
        paths=checked["file_loc"].to_numpy(dtype=str)[positions],
        labels=labels.reshape(len(positions), len(label_cols)),
        label_cols=label_cols,
    )


def _shards(
    folder: Path,
    label_cols: tuple[str, ...],
    schema: Schema | None,
    split: str | None,
    rule: LabelRule | None = None,
) -> ShardSource:
    sidecar = load_sidecar(folder)
    stored = list(sidecar.get("label_cols", []))
    features = sidecar.get("features", {})
    for fixed, kind in (("image", "bytes"), ("id_str", "bytes")):
        if features.get(fixed) != kind:
            raise ShardError(f"{folder / SIDECAR}: feature {fixed!r} is not {kind}")
    missing = [c for c in label_cols if c not in stored]
    if missing:
        against = f" (schema {schema.name!r})" if schema is not None else ""
        raise LabelColumnError(
            f"shard folder {folder} has no label column(s) {missing}{against}; its sidecar "
            f"(schema {sidecar.get('schema')!r}) lists {len(stored)} label column(s): {stored}"
        )
    not_float = [c for c in label_cols if features.get(c) != "float"]
    if not_float:
        raise ShardError(f"{folder / SIDECAR}: label column(s) {not_float} are not float features")
    split_entries: Mapping[str, dict] = sidecar["splits"]
    if split is not None and split not in split_entries:
        raise KeyError(f"no split {split!r} in shard folder {folder}; it has {list(split_entries)}")
    files, counts = [], []
    for name, entry in split_entries.items():
        if split is None or name == split:
            for shard in entry["shards"]:
                path = folder / shard["file"]
                if not path.is_file():
                    raise ShardError(f"{path} is listed in {SIDECAR} but missing")
                files.append(str(path.resolve()))
                counts.append(int(shard["count"]))
    source = ShardSource(folder, split, tuple(files), tuple(counts), label_cols, sidecar)
    if rule is not None:
        check_shard_labels(source, _rule(label_cols, rule))
    return source


def check_shard_labels(source: ShardSource, rule: LabelRule) -> None:
    """Check the labels of every record of `source` by `rule` (`zoobot.data.labels`), naming
    records by position in the shard order and `id_str`.

    Vote counts the writer checked (its sidecar says `label_rule: votes` with the same bound) are
    not read again; otherwise every record is parsed, in Python.
    """
    written = source.sidecar.get("label_rule") or {}
    if rule.kind == "votes" and written == {"kind": "votes", "max_votes": rule.max_votes}:
        return
    ids, labels = [], []
    for path in source.files:
        for record in read_records(path):
            example = decode_example(record)
            ids.append(example["id_str"][1][0].decode("utf-8"))
            labels.append([example[c][1][0] for c in rule.columns])
    table = pd.DataFrame(
        np.array(labels, np.float64).reshape(-1, len(rule.columns)), columns=list(rule.columns)
    )
    table.insert(0, "id_str", ids)
    check_labels(table, rule, f"shard folder {source.folder}")


def open_source(
    source: Source | CatalogSource | ShardSource,
    label_cols: LabelCols = None,
    *,
    schema: Schema | str | None = None,
    split: str | None = None,
    splits: Splits = None,
    split_seed: int = 0,
    rule: LabelRule | None = None,
) -> CatalogSource | ShardSource:
    """The rows of `source` (one `split`, or all with `split=None`) with `label_cols` checked.

    `source` is a catalog DataFrame (`id_str`, `file_loc`, label columns), a catalog file (read by
    `zoobot.data.catalog.load_catalog`), or a shard folder written by `zoobot.data.shards`.
    `label_cols` default to the `schema`'s (none without one); each must be in the catalog or in
    the sidecar's label columns, else `LabelColumnError` names them and the catalog / folder.
    A catalog's `split` is taken by `assign_splits(catalog, splits, split_seed)`; shards hold
    their split as written, so `splits` must be None for them.
    The labels of a catalog (every row, not only the split's) are checked by `rule` (a
    `zoobot.data.labels.LabelRule` for `label_cols`: vote counts, class indices or targets), or
    else must be finite numbers; those of shards by `rule` when given (`check_shard_labels`).
    `CatalogError` names the column and rows.
    """
    if isinstance(source, CatalogSource | ShardSource):
        return source
    schema = as_schema(schema) if schema is not None else None
    cols = resolve_label_cols(label_cols, schema)
    if is_shard_folder(source):
        if splits is not None:
            raise ValueError(
                f"{source} holds shards whose splits were fixed when written; "
                "choose one with split=, not splits="
            )
        return _shards(Path(source).expanduser(), cols, schema, split, rule)
    if isinstance(source, pd.DataFrame):
        return _catalog(source, "the catalog", cols, split, splits, split_seed, rule)
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            raise ShardError(f"{path} is a folder without {SIDECAR}: not a finished shard folder")
        catalog = load_catalog(path)
        return _catalog(catalog, f"catalog {path}", cols, split, splits, split_seed, rule)
    raise TypeError(
        "source must be a catalog DataFrame, a catalog file or a shard folder, "
        f"not {type(source).__name__}"
    )


def shard_table(source: ShardSource) -> pd.DataFrame:
    """`id_str` of every record of the shards in order, `file_loc` `<shard file>#<record number>`."""
    ids, locations = [], []
    for path, count in zip(source.files, source.counts, strict=True):
        found = [decode_example(record)["id_str"][1][0] for record in read_records(path)]
        if len(found) != count:
            raise ShardError(f"{path} holds {len(found)} records, its sidecar says {count}")
        ids += [value.decode("utf-8") for value in found]
        locations += [f"{path}#{i}" for i in range(count)]
    return pd.DataFrame({"id_str": ids, "file_loc": locations})


def source_digest(source: CatalogSource | ShardSource) -> str | None:
    """For shards, a digest of the sidecar's checksums of the files read (images included)."""
    if not isinstance(source, ShardSource):
        return None
    entries = [
        shard
        for split in source.sidecar.get("splits", {}).values()
        for shard in split.get("shards", [])
    ]
    text = json.dumps(entries, sort_keys=True).encode()
    return hashlib.blake2b(text, digest_size=16).hexdigest()
