"""Prediction files that carry their schema, a friendly catalog table, and PCA of representations.

The full file is parquet, one row per galaxy: `id_str` (string) and, per label column, a
`fixed_size_list<float32>[n_passes]` of that answer's concentrations in every forward pass. The
schema JSON, model name and number of passes travel in the parquet key-value metadata, so the file
alone is enough to compute any statistic later. Row groups are appended chunk by chunk, so millions of
galaxies stream through `PredictionWriter` in bounded memory; the file appears under its final name
only when complete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from zoobot.shared.io import atomic_path
from zoobot.shared.loss import check_concentrations
from zoobot.shared.schema import Schema
from zoobot.shared.stats import (
    credible_intervals,
    expected_vote_fractions,
    fractions_per_pass,
    probability_asked,
)

FORMAT = "zoobot-predictions-full/1"
_KEYS = {
    "format": b"zoobot.format",
    "schema": b"zoobot.schema",
    "model_name": b"zoobot.model_name",
    "n_passes": b"zoobot.n_passes",
}


class Predictions(NamedTuple):
    """A full prediction file: ids, concentrations (galaxy, answer, pass), schema, model name."""

    id_str: np.ndarray
    concentrations: np.ndarray
    schema: Schema
    model_name: str


def _id_strings(id_str, n_rows: int) -> pa.Array:
    """Galaxy ids as an arrow string array; integers become their decimal strings."""
    try:
        ids = id_str if isinstance(id_str, pa.Array) else pa.array(id_str)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise ValueError(f"id_str must be strings (or integers): {err}") from err
    empty = pa.types.is_null(ids.type) and len(ids) == 0
    if empty or pa.types.is_integer(ids.type) or pa.types.is_large_string(ids.type):
        ids = ids.cast(pa.string())
    if not pa.types.is_string(ids.type):
        raise ValueError(f"id_str must be strings (or integers), got values of type {ids.type}")
    if ids.null_count:
        raise ValueError(f"id_str has {ids.null_count} missing id(s); every galaxy needs an id")
    if len(ids) != n_rows:
        raise ValueError(f"id_str has {len(ids)} ids but there are {n_rows} rows of predictions")
    return ids


def _friendly_columns(schema: Schema) -> list[str]:
    columns = ["id_str"]
    for q in schema.questions:
        columns.append(f"{q.name}_proba_asked")
        for col in q.label_cols:
            columns += [f"{col}_fraction", f"{col}_fraction_lower", f"{col}_fraction_upper"]
    if len(set(columns)) != len(columns):
        raise ValueError(f"schema {schema.name!r}: friendly column names collide")
    return columns


def friendly_table(
    id_str,
    concentrations,
    schema: Schema,
    level: float = 0.9,
    min_probability_asked: float = 0.5,
) -> pd.DataFrame:
    """A catalog-ready table: per answer the expected fraction and its `level` credible interval,
    per question the probability it is asked; fractions are NaN where that is below the threshold.

    Columns: `id_str`, then per question `<question>_proba_asked` followed by `<col>_fraction`,
    `<col>_fraction_lower`, `<col>_fraction_upper` for each of its answers. The interval is of the
    underlying vote fraction (see `stats.credible_intervals`).
    """
    alpha = check_concentrations(concentrations, schema, allow_passes=True)
    ids = _id_strings(id_str, len(alpha))
    fractions = expected_vote_fractions(alpha, schema)
    lower, upper = credible_intervals(alpha, schema, level)
    asked = probability_asked(fractions_per_pass(alpha, schema), schema)
    hidden = (asked < min_probability_asked)[:, schema.answer_question_index]
    data: dict[str, object] = {"id_str": ids.to_pandas()}
    for qi, q in enumerate(schema.questions):
        data[f"{q.name}_proba_asked"] = asked[:, qi]
        for a in q.answers:
            for suffix, values in (("", fractions), ("_lower", lower), ("_upper", upper)):
                data[f"{a.column}_fraction{suffix}"] = np.where(
                    hidden[:, a.index], np.nan, values[:, a.index]
                )
    return pd.DataFrame(data, columns=_friendly_columns(schema))


def write_friendly(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a friendly table atomically: CSV if `path` ends in .csv, parquet otherwise.

    Parquet keeps `id_str` a string; read a CSV back with `dtype={'id_str': str}` to keep ids such
    as "0012" intact.
    """
    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False, engine="pyarrow")


def _full_schema(
    schema: Schema, model_name: str, n_passes: int, extra: Mapping[str, str] | None = None
) -> pa.Schema:
    fields = [pa.field("id_str", pa.string(), nullable=False)]
    fields += [
        pa.field(col, pa.list_(pa.float32(), n_passes), nullable=False) for col in schema.label_cols
    ]
    metadata = {
        **{key.encode(): value.encode() for key, value in (extra or {}).items()},
        _KEYS["format"]: FORMAT.encode(),
        _KEYS["schema"]: schema.to_json().encode(),
        _KEYS["model_name"]: model_name.encode(),
        _KEYS["n_passes"]: str(n_passes).encode(),
    }
    return pa.schema(fields, metadata=metadata)


def _friendly_arrow_schema(schema: Schema) -> pa.Schema:
    columns = _friendly_columns(schema)
    return pa.schema([pa.field("id_str", pa.string())] + [(c, pa.float64()) for c in columns[1:]])


class PredictionWriter:
    """Stream predictions into a full prediction file (and optionally a friendly table) in chunks.

    Use as a context manager, or call `close()` to finish (the files appear under their final
    names) or `abort()` to discard them. An exception inside the `with` block discards both files.
    `friendly_path` ending in .csv writes CSV, otherwise parquet; `level` and
    `min_probability_asked` are passed to `friendly_table`. `metadata` adds key-value pairs to the
    full file's parquet metadata. The friendly table is moved into place first, the full file
    last.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: Schema,
        model_name: str,
        n_passes: int,
        friendly_path: str | os.PathLike | None = None,
        level: float = 0.9,
        min_probability_asked: float = 0.5,
        metadata: Mapping[str, str] | None = None,
    ):
        if (
            isinstance(n_passes, bool)
            or not isinstance(n_passes, (int, np.integer))
            or n_passes < 1
        ):
            raise ValueError(f"n_passes must be a positive integer; got {n_passes!r}")
        if not isinstance(model_name, str):
            raise ValueError(f"model_name must be a string; got {model_name!r}")
        self.schema = schema
        self.n_passes = int(n_passes)
        self._friendly_options = {"level": level, "min_probability_asked": min_probability_asked}
        self._arrow_schema = _full_schema(schema, model_name, self.n_passes, metadata)
        self._stack = contextlib.ExitStack()
        self._friendly = None
        try:
            tmp = self._stack.enter_context(atomic_path(path))
            self._writer = pq.ParquetWriter(str(tmp), self._arrow_schema, compression="zstd")
            self._stack.callback(self._writer.close)
            if friendly_path is not None:
                friendly_tmp = self._stack.enter_context(atomic_path(friendly_path))
                self._friendly_schema = _friendly_arrow_schema(schema)
                if Path(friendly_path).suffix.lower() == ".csv":
                    self._friendly = pa_csv.CSVWriter(str(friendly_tmp), self._friendly_schema)
                else:
                    self._friendly = pq.ParquetWriter(str(friendly_tmp), self._friendly_schema)
                self._stack.callback(self._friendly.close)
        except BaseException as err:
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        self._open = True

    def write(self, id_str, concentrations) -> None:
        """Append one chunk: ids and concentrations (galaxy, answer[, pass]) in schema order."""
        if not self._open:
            raise ValueError("this PredictionWriter is closed")
        alpha = check_concentrations(concentrations, self.schema, allow_passes=True)
        if alpha.ndim == 2:
            alpha = alpha[:, :, None]
        if alpha.shape[2] != self.n_passes:
            raise ValueError(
                f"concentrations has {alpha.shape[2]} forward passes; this writer expects "
                f"{self.n_passes}"
            )
        ids = _id_strings(id_str, len(alpha))
        values = alpha.astype(np.float32)
        columns = [ids] + [
            pa.FixedSizeListArray.from_arrays(pa.array(values[:, i, :].ravel()), self.n_passes)
            for i in range(values.shape[1])
        ]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self._arrow_schema))
        if self._friendly is not None:
            df = friendly_table(ids, alpha, self.schema, **self._friendly_options)
            self._friendly.write_table(
                pa.Table.from_pandas(df, schema=self._friendly_schema, preserve_index=False)
            )

    def close(self) -> None:
        """Finish the files and move them to their final names."""
        if self._open:
            self._open = False
            self._stack.close()

    def abort(self) -> None:
        """Discard everything written; no file appears under the final names."""
        if self._open:
            self._open = False
            err = RuntimeError("prediction writing aborted")
            self._stack.__exit__(RuntimeError, err, None)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._open:
            self._open = False
            self._stack.__exit__(exc_type, exc, tb)


def write_predictions_full(
    path: str | os.PathLike, id_str, concentrations, schema: Schema, model_name: str
) -> None:
    """Write a full prediction file in one go; concentrations (galaxy, answer[, pass]).

    Concentrations are stored as float32 (what models emit), so float64 input is rounded once.
    """
    alpha = check_concentrations(concentrations, schema, allow_passes=True)
    n_passes = alpha.shape[2] if alpha.ndim == 3 else 1
    with PredictionWriter(path, schema, model_name, n_passes) as writer:
        writer.write(id_str, alpha)


def read_predictions_full(path: str | os.PathLike) -> Predictions:
    """Read a full prediction file: (id_str, concentrations (galaxy, answer, pass) float32, schema,
    model_name)."""
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    if metadata.get(_KEYS["format"]) != FORMAT.encode():
        raise ValueError(f"{path} is not a Zoobot full prediction file ({FORMAT})")
    schema = Schema.from_json(metadata[_KEYS["schema"]].decode())
    n_passes = int(metadata[_KEYS["n_passes"]])
    if table.column_names != ["id_str", *schema.label_cols]:
        raise ValueError(f"{path}: columns do not match the schema stored in the file")
    concentrations = np.empty((table.num_rows, len(schema.label_cols), n_passes), np.float32)
    for i, col in enumerate(schema.label_cols):
        flat = table.column(col).combine_chunks().flatten().to_numpy()
        concentrations[:, i, :] = flat.reshape(table.num_rows, n_passes)
    ids = table.column("id_str").to_numpy().astype(object)
    return Predictions(ids, concentrations, schema, metadata[_KEYS["model_name"]].decode())


@dataclass(frozen=True)
class PCAProjection:
    """The mean and principal axes of a set of representations, to project new data the same way."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray

    @classmethod
    def fit(cls, representations, n_components: int | float) -> PCAProjection:
        """Principal axes by SVD; `n_components` an integer, or a float in (0, 1) meaning enough
        components to explain that fraction of the variance.

        The SVD runs on the R of a QR of the centred data when there are more galaxies than features,
        so memory stays at one copy of the data. Each axis's sign makes its largest loading positive.
        """
        x = _representations(representations)
        if len(x) < 2:
            raise ValueError("PCA needs at least two rows of representations")
        mean = x.mean(axis=0)
        centred = x - mean
        reduced = np.linalg.qr(centred, mode="r") if len(x) > x.shape[1] else centred
        _, singular, axes = np.linalg.svd(reduced, full_matrices=False)
        variance = singular**2
        if variance.sum() == 0:
            raise ValueError("PCA: the representations are all identical (no variance)")
        ratio = variance / variance.sum()
        k = _n_kept(n_components, ratio)
        axes = axes[:k]
        signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
        return cls(mean, axes * signs[:, None], ratio[:k])

    def transform(self, representations) -> np.ndarray:
        """Project representations (n, features) onto the kept axes -> (n, n_components)."""
        x = _representations(representations)
        if x.shape[1] != len(self.mean):
            raise ValueError(
                f"representations have {x.shape[1]} features; this projection was fit on "
                f"{len(self.mean)}"
            )
        return (x - self.mean) @ self.components.T


def _representations(representations) -> np.ndarray:
    x = np.asarray(representations, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"representations must be 2-D (galaxy, feature); got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("representations contain NaN or inf")
    return x


def _n_kept(n_components: int | float, ratio: np.ndarray) -> int:
    """Number of components to keep, from an integer count or a variance fraction in (0, 1)."""
    available = len(ratio)
    if isinstance(n_components, (bool, np.bool_)):
        raise ValueError(
            f"n_components must be an integer or a float in (0, 1); got {n_components}"
        )
    if isinstance(n_components, (int, np.integer)):
        if not 1 <= n_components <= available:
            raise ValueError(
                f"n_components={n_components} but the data allow 1 to {available} components"
            )
        return int(n_components)
    if isinstance(n_components, (float, np.floating)) and 0 < n_components < 1:
        needed = int(np.searchsorted(np.cumsum(ratio), n_components, side="left")) + 1
        return min(needed, available)
    raise ValueError(
        f"n_components must be an integer or a float in (0, 1) (a fraction of variance); "
        f"got {n_components!r}"
    )


def pca_compress(representations, n_components: int | float) -> tuple[np.ndarray, np.ndarray]:
    """Compress representations to their leading principal components: (compressed, explained
    variance ratio of each kept component). Use `PCAProjection.fit` to reuse the projection."""
    projection = PCAProjection.fit(representations, n_components)
    return projection.transform(representations), projection.explained_variance_ratio
