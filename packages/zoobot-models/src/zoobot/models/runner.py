"""Resumable runs of a model over a catalog, without a framework: the bookkeeping under `predict` and
`get_representations` in every framework, so they write the same files and resume the same way.

A run cuts the catalog's rows into chunks of `chunk_rows` and batches that never cross a chunk. The
framework's engine (`Backend.run_predictions` / `run_features`) decodes each batch with
`zoobot.data.images.read_image` (an unreadable image is a failed row, not an error), runs the model,
and hands the results to a `ChunkWriter`, which writes each finished chunk atomically as
`<save_loc>.parts/part-000012.parquet` (`Parts`). A run stopped at any moment, even by SIGKILL,
loses at most the chunk in flight and resumes from the parts on disk. `manifest.json` in the parts
folder fingerprints the catalog, each image's identity (size and modification time, or contents),
the model weights and every setting that changes the numbers (`start_parts`), so parts of another
run are never mixed in; the Monte Carlo randomness of each
chunk is seeded from the run's seed and the chunk number (`chunk_seed`), so a resumed run gives the
numbers of an uninterrupted one.

When every chunk is done, `finish_predictions` / `finish_representations` assemble the final files
from the parts (the tables are documented in `zoobot.models.inference`), write the unreadable
images to `<save_loc>.failed.csv`, and delete the parts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from zoobot.data.catalog import load_catalog, validate_catalog
from zoobot.data.images import ImageDecodeError, read_image
from zoobot.shared.io import atomic_path, atomic_write_text, file_digest
from zoobot.shared.schema import Schema
from zoobot.shared.tables import PCAProjection, PredictionWriter

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "zoobot-parts/1"
FAILED_COLUMNS = ["id_str", "file_loc", "error"]
TABLE_FORMAT = "zoobot-predictions-table/1"
REPRESENTATIONS_FORMAT = "zoobot-representations/1"
PRECISIONS = ("32", "bf16")
SUFFIXES = {"classifier": "probability", "regressor": "prediction"}


@dataclass(frozen=True)
class RunSettings:
    """How to run: batch and chunk sizes, decoding workers, image size, numerics, resume, progress.

    `num_workers=None` takes half the CPUs (1 to 8, `default_workers`). `precision` is "32" or
    "bf16"; `channels_last=None` lets the framework choose its memory layout; `device=None` runs the
    model where it already is (each framework reads `device` its own way). A resumed run must have
    the same images: their sizes and modification times, or with `hash_images` their contents.
    """

    batch_size: int = 128
    num_workers: int | None = None
    image_size: int = 224
    precision: str = "32"
    channels_last: bool | None = None
    chunk_rows: int = 4096
    resume: bool = True
    progress: bool = True
    device: Any = None
    hash_images: bool = False

    def __post_init__(self):
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "image_size", "chunk_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(
                f"num_workers must be 0 (decode in this process) or more, or None for half the "
                f"CPUs; got num_workers={self.num_workers}"
            )

    @property
    def workers(self) -> int:
        """Decoding workers: `num_workers`, or `default_workers()` when it is None."""
        return default_workers() if self.num_workers is None else self.num_workers


def read_catalog(catalog: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """`id_str` and `file_loc` of a catalog (DataFrame or file), validated, positions 0..n-1."""
    if not isinstance(catalog, pd.DataFrame):
        catalog = load_catalog(catalog)
    columns = [c for c in ("id_str", "file_loc") if c in catalog.columns]
    return validate_catalog(catalog.loc[:, columns]).reset_index(drop=True)


def default_workers() -> int:
    """Half the CPUs this process may use, 1 to 8: decoding is a small share of the work on CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cpus or 2) // 2))


def catalog_digest(catalog: pd.DataFrame) -> str:
    """A digest of the `id_str` and `file_loc` columns in order."""
    hashed = pd.util.hash_pandas_object(catalog[["id_str", "file_loc"]], index=False)
    return hashlib.blake2b(hashed.to_numpy().tobytes(), digest_size=16).hexdigest()


def images_digest(file_locs: Sequence[str], content: bool = False) -> str:
    """A digest of each image's identity in order: its size and modification time, or with
    `content` its bytes, so a resumed run never mixes in parts computed from other images. A
    location that is not a file counts by its name only (a shard record: the shards' own
    checksums cover it)."""
    digest = hashlib.blake2b(digest_size=16)
    for location in file_locs:
        try:
            if content:
                identity = file_digest(location, "blake2b")
            else:
                stat = os.stat(location)
                identity = f"{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:
            identity = "-"
        digest.update(f"{location}|{identity}\n".encode())
    return digest.hexdigest()


def arrays_digest(arrays: Iterator[tuple[str, np.ndarray]] | Mapping[str, np.ndarray]) -> str:
    """A digest of named arrays (a model's weights) in name order: names, dtypes, shapes, bytes."""
    items = arrays.items() if isinstance(arrays, Mapping) else arrays
    digest = hashlib.blake2b(digest_size=16)
    for name, array in sorted(items, key=lambda item: item[0]):
        array = np.ascontiguousarray(array)
        digest.update(f"{name}|{array.dtype}|{array.shape}".encode())
        digest.update(array.view(np.uint8).tobytes() if array.size else b"")
    return digest.hexdigest()


def chunk_seed(seed: int, chunk: int) -> int:
    """The random seed of one chunk, so Monte Carlo passes repeat exactly when a run resumes."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def decode_rows(
    file_locs: Sequence[str], size: int, read: Callable[[str, int], np.ndarray] = read_image
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Decode images to RGB uint8 (n_ok, size, size, 3), catching unreadable ones per row.

    Returns the images of the readable rows, their indices in `file_locs`, and (index, message) of
    each unreadable one. Always three channels: a 1-channel model takes the mean of R, G and B in
    its evaluation transform, as in training. `read(path, size)` is `read_image`.
    """
    images = np.empty((len(file_locs), size, size, 3), np.uint8)
    ok, errors = [], []
    for index, path in enumerate(file_locs):
        try:
            images[len(ok)] = read(path, size)
        except ImageDecodeError as err:
            errors.append((index, str(err)))
        else:
            ok.append(index)
    return images[: len(ok)], np.array(ok, np.int64), errors


@dataclass(frozen=True)
class Part:
    """The galaxies of one chunk that were predicted: catalog positions and their values."""

    positions: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Parts:
    """The part files of a run, one per chunk of `chunk_rows` of a catalog of `n_rows`."""

    folder: Path
    n_rows: int
    chunk_rows: int
    shape: tuple[int, ...]
    created: bool = False  # whether this run made the folder (`discard_if_unstarted`)

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_rows / self.chunk_rows)

    def path(self, chunk: int) -> Path:
        """The part file of chunk number `chunk`."""
        return self.folder / f"part-{chunk:06d}.parquet"

    def rows(self, chunk: int) -> tuple[int, int]:
        """(start, stop) catalog positions of chunk number `chunk`."""
        start = chunk * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n_rows)

    def todo(self) -> list[int]:
        """The chunks with no part file yet, in order."""
        return [c for c in range(self.n_chunks) if not self.path(c).is_file()]

    def spans(self, chunks: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
        """(start, stop) of every batch of `chunks`: `batch_size` rows, never crossing a chunk."""
        return [
            (start, min(start + batch_size, stop))
            for chunk in chunks
            for first, stop in [self.rows(chunk)]
            for start in range(first, stop, batch_size)
        ]

    def read(self) -> Iterator[Part]:
        """Each chunk's predicted galaxies in catalog order, values shaped (rows, *shape) float32."""
        for chunk in range(self.n_chunks):
            table = pq.read_table(self.path(chunk))
            ok = table.column("error").is_null().to_numpy(zero_copy_only=False)
            flat = table.column("values").combine_chunks().flatten().to_numpy()
            values = flat.reshape(len(table), *self.shape)[ok]
            yield Part(table.column("position").to_numpy()[ok], values)

    def n_predicted(self) -> int:
        """How many galaxies the finished parts hold values for (rows without an error)."""
        return sum(
            pq.read_table(self.path(c), columns=["error"]).column("error").null_count
            for c in range(self.n_chunks)
        )

    def write(self, chunk: int, positions, values, failed, errors) -> None:
        """Write one chunk atomically: predicted rows, then failed rows (with zero values)."""
        width = math.prod(self.shape)
        values = np.concatenate(
            [
                np.asarray(values, np.float32).reshape(-1, width),
                np.zeros((len(failed), width), np.float32),
            ]
        )
        table = pa.table(
            {
                "position": pa.array(np.concatenate([positions, failed]), pa.int64()),
                "error": pa.array([None] * len(positions) + list(errors), pa.string()),
                "values": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width),
            }
        )
        with atomic_path(self.path(chunk)) as tmp:
            pq.write_table(table, tmp, compression="none")

    def remove(self) -> None:
        """Delete the parts folder (after the final files are in place)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def discard_if_unstarted(self) -> None:
        """Remove the folder if this run made it and no part was written: its manifest and our own
        temporary files go, and the folder only if that leaves it empty."""
        if not self.created or len(self.todo()) < self.n_chunks:
            return
        for path in [self.folder / MANIFEST, *self.folder.glob(".*.part")]:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


@contextlib.contextmanager
def cleaned_up_on_failure(parts: Parts) -> Iterator[Parts]:
    """The block that computes a run's parts; if it fails before the first part is written, the
    parts folder this run made is removed (`Parts.discard_if_unstarted`), leaving no orphan."""
    try:
        yield parts
    except BaseException:
        parts.discard_if_unstarted()
        raise


def open_parts(folder: Path, fingerprint: Mapping, resume: bool) -> bool:
    """Start or continue a parts folder: check its manifest matches, or clear it if not resuming.
    Returns whether this call made the folder."""
    manifest = folder / MANIFEST
    if folder.exists() and not manifest.is_file() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists but holds no {MANIFEST}; move it out of the way")
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
    if manifest.is_file():
        stored = json.loads(manifest.read_text(encoding="utf-8"))
        if stored.get("format") != FORMAT or stored.get("run") != dict(fingerprint):
            old = stored.get("run") or {}
            changed = sorted(k for k in {*old, *fingerprint} if old.get(k) != fingerprint.get(k))
            raise ValueError(
                f"{folder} holds parts of a different run (differs in: {', '.join(changed)}); "
                "pass resume=False to start again, or the same model, catalog, images and settings"
            )
        for stale in folder.glob(".*.part"):
            stale.unlink()
        return False
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, "run": dict(fingerprint)}, indent=2)
    atomic_write_text(manifest, text)
    return created


def start_parts(
    catalog: pd.DataFrame,
    save_loc: str | os.PathLike,
    shape: tuple[int, ...],
    settings: RunSettings,
    run: Mapping,
    seed: int = 0,
) -> Parts:
    """The `Parts` of a run at `<save_loc>.parts`, opened for this run (or resumed).

    `run` names what else changes the numbers (framework, task, weights digest, input channels,
    passes...); with the catalog, the shape of each output and the settings it is the fingerprint
    the parts folder must match to be resumed.
    """
    fingerprint = {
        **run,
        "catalog": catalog_digest(catalog),
        "images": images_digest(catalog["file_loc"], settings.hash_images),
        "rows": len(catalog),
        "shape": [int(s) for s in shape],
        "chunk_rows": settings.chunk_rows,
        "image_size": settings.image_size,
        "precision": str(settings.precision),
        "seed": seed,
    }
    folder = Path(f"{os.fspath(save_loc)}.parts")
    created = open_parts(folder, fingerprint, settings.resume)
    parts = Parts(folder, len(catalog), settings.chunk_rows, tuple(int(s) for s in shape), created)
    done = parts.n_chunks - len(parts.todo())
    if done:
        logger.info("resuming: %d of %d chunks already done", done, parts.n_chunks)
    return parts


class ChunkWriter:
    """Collect batch results in order and write each chunk's part file as soon as it is complete.

    Batches must come in order and never cross a chunk (`Parts.spans`). `new_chunk(start)` tells
    whether a batch opens a chunk (and which), for the engine to reseed its randomness there. Use as
    a context manager: it shows the progress bar (rows done out of the catalog).
    """

    def __init__(self, parts: Parts, spans: Sequence[tuple[int, int]], progress: bool = True):
        self.parts = parts
        done_rows = parts.n_rows - sum(stop - start for start, stop in spans)
        self.bar = tqdm(total=parts.n_rows, initial=done_rows, unit="galaxy", disable=not progress)
        self._clear()

    def _clear(self) -> None:
        self.outputs, self.positions, self.failed, self.errors = [], [], [], []

    def new_chunk(self, start: int) -> int | None:
        """The chunk a batch starting at catalog position `start` opens, or None if it opens none."""
        return start // self.parts.chunk_rows if start % self.parts.chunk_rows == 0 else None

    def add(
        self,
        start: int,
        stop: int,
        positions: np.ndarray,
        values: np.ndarray | None,
        errors: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Results of the batch of rows `start:stop`: values of the rows at catalog `positions`
        (`values` shaped (len(positions), *parts.shape)) and (position, message) of failed rows."""
        if len(positions):
            values = np.asarray(values)
            if values.shape[1:] != self.parts.shape:
                raise ValueError(
                    f"the model returned {values.shape[1:]} per image, not {self.parts.shape}"
                )
            self.outputs.append(values.astype(np.float32, copy=False))
            self.positions.append(np.asarray(positions, np.int64))
        self.failed += [position for position, _ in errors]
        self.errors += [message for _, message in errors]
        chunk = start // self.parts.chunk_rows
        if stop == self.parts.rows(chunk)[1]:
            shape = (0, *self.parts.shape)
            values = np.concatenate(self.outputs) if self.outputs else np.zeros(shape, np.float32)
            ok = np.concatenate(self.positions) if self.positions else np.zeros(0, np.int64)
            self.parts.write(chunk, ok, values, np.array(self.failed, np.int64), self.errors)
            self._clear()
        if self.bar.n + stop - start < self.parts.n_rows:
            self.bar.update(stop - start)
        else:  # the finished bar is drawn by close(); update() would draw it once before
            self.bar.n = self.parts.n_rows

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


@contextlib.contextmanager
def parquet_stream(path: str | os.PathLike, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A zstd ParquetWriter whose file appears under `path` only if the block succeeds."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        yield writer


def write_failures(path: str | os.PathLike, catalog: pd.DataFrame, parts: Parts) -> int:
    """Write the unreadable images (id_str, file_loc, error) as CSV atomically; return how many."""
    frames = []
    for chunk in range(parts.n_chunks):
        table = pq.read_table(parts.path(chunk), columns=["position", "error"])
        table = table.filter(table.column("error").is_valid())
        if len(table):
            rows = catalog.iloc[table.column("position").to_numpy()]
            frames.append(rows.assign(error=table.column("error").to_pylist())[FAILED_COLUMNS])
    failed = pd.concat(frames) if frames else pd.DataFrame(columns=FAILED_COLUMNS)
    with atomic_path(path) as tmp:
        failed.to_csv(tmp, index=False)
    if len(failed):
        logger.warning("%d image(s) could not be read; listed in %s", len(failed), path)
    return len(failed)


# --- prediction tables -------------------------------------------------------------------------


def friendly_path(save_loc: str | os.PathLike) -> Path:
    """Where a tree's friendly table goes by default: `<save_loc stem>_friendly.parquet`."""
    save_loc = Path(save_loc)
    return save_loc.with_name(f"{save_loc.stem}_friendly.parquet")


def failures_path(save_loc: str | os.PathLike) -> Path:
    """Where a run lists its unreadable images: `<save_loc>.failed.csv`."""
    return Path(f"{os.fspath(save_loc)}.failed.csv")


def pca_path(save_loc: str | os.PathLike) -> Path:
    """Where `get_representations` writes its PCA projection: `<save_loc>.pca.npz`."""
    return Path(f"{os.fspath(save_loc)}.pca.npz")


@dataclass(frozen=True)
class PredictionFiles:
    """What `predict` wrote: its files, and how many galaxies were predicted or could not be read."""

    predictions: Path
    friendly: Path | None
    failed: Path
    n_predicted: int
    n_failed: int


def table_schema(
    names: Sequence[str],
    suffix: str,
    n_samples: int,
    model_name: str,
    metadata: Mapping[str, str] | None = None,
) -> pa.Schema:
    """Arrow schema of a classifier/regressor table: id_str, means, then passes if several;
    `metadata` joins the table's own key-value metadata."""
    fields = [pa.field("id_str", pa.string(), nullable=False)]
    fields += [pa.field(f"{name}_{suffix}", pa.float32()) for name in names]
    if n_samples > 1:
        passes = pa.list_(pa.float32(), n_samples)
        fields += [pa.field(f"{name}_{suffix}_passes", passes) for name in names]
    own = {"zoobot.format": TABLE_FORMAT, "zoobot.model_name": model_name}
    own["zoobot.n_passes"] = str(n_samples)
    return pa.schema(fields, metadata={**(metadata or {}), **own})


def write_table(path, parts: Parts, ids: np.ndarray, schema: pa.Schema, n_samples: int) -> None:
    """Stream every part into a classifier/regressor table at `path`."""
    with parquet_stream(path, schema) as writer:
        for part in parts.read():
            values = part.values
            columns = [pa.array(ids[part.positions], pa.string())]
            columns += [pa.array(v) for v in values.mean(axis=2, dtype=np.float32).T]
            if n_samples > 1:
                columns += [
                    pa.FixedSizeListArray.from_arrays(pa.array(values[:, i].ravel()), n_samples)
                    for i in range(values.shape[1])
                ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def write_tree(
    path,
    friendly: Path,
    parts: Parts,
    ids: np.ndarray,
    schema: Schema,
    n_samples,
    name,
    metadata: Mapping[str, str] | None = None,
):
    """Stream every part into the full and friendly tables of `zoobot.shared.tables`."""
    options = {"friendly_path": friendly, "metadata": metadata}
    with PredictionWriter(path, schema, name, n_samples, **options) as writer:
        for part in parts.read():
            writer.write(ids[part.positions], part.values)


def finish_predictions(
    catalog: pd.DataFrame,
    parts: Parts,
    save_loc: str | os.PathLike,
    table: str,
    names: Sequence[str],
    n_samples: int,
    model_name: str,
    schema: Schema | None = None,
    friendly_loc: str | os.PathLike | None = None,
    metadata: Mapping[str, str] | None = None,
) -> PredictionFiles:
    """Write the final prediction files of a finished run from its parts, then delete the parts.

    Parts hold (output, pass) values per galaxy. A tree (`schema` given) writes the full table at
    `save_loc` and the friendly one at `friendly_loc` (default `friendly_path(save_loc)`); a
    classifier or regressor the `<name>_probability` / `<name>_prediction` table. The failures
    go first and the table at `save_loc` last, with `metadata` in its parquet metadata.
    """
    ids = catalog["id_str"].to_numpy()
    save_loc = Path(save_loc)
    failed = failures_path(save_loc)
    n_failed = write_failures(failed, catalog, parts)
    friendly = None
    if table == "tree":
        friendly = Path(friendly_loc or friendly_path(save_loc))
        write_tree(save_loc, friendly, parts, ids, schema, n_samples, model_name, metadata)
    else:
        arrow = table_schema(names, SUFFIXES[table], n_samples, model_name, metadata)
        write_table(save_loc, parts, ids, arrow, n_samples)
    parts.remove()
    return PredictionFiles(save_loc, friendly, failed, len(catalog) - n_failed, n_failed)


# --- representations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RepresentationFiles:
    """What `get_representations` wrote, and how many galaxies were embedded or unreadable."""

    representations: Path
    pca: Path | None
    failed: Path
    n_represented: int
    n_failed: int


def pca_sample(parts: Parts, max_rows: int) -> np.ndarray:
    """Up to `max_rows` representations spread evenly over the run, float64, to fit the PCA on."""
    step = max(1, -(-parts.n_predicted() // max_rows))
    sample, seen = [], 0
    for part in parts.read():
        first = -seen % step
        sample.append(part.values[first::step].astype(np.float64))
        seen += len(part.values)
    return np.concatenate(sample) if sample else np.zeros((0, *parts.shape))


def write_representations(
    path,
    parts: Parts,
    ids: np.ndarray,
    prefix: str,
    projection: PCAProjection | None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Stream every part, projected if asked, into `id_str` + `<prefix><i>` float32 columns."""
    width = parts.shape[0] if projection is None else len(projection.components)
    names = ["id_str", *(f"{prefix}{i}" for i in range(width))]
    schema = pa.schema(
        [pa.field("id_str", pa.string(), nullable=False)]
        + [pa.field(name, pa.float32()) for name in names[1:]],
        metadata={**(metadata or {}), "zoobot.format": REPRESENTATIONS_FORMAT},
    )
    with parquet_stream(path, schema) as writer:
        for part in parts.read():
            values = part.values
            if projection is not None:
                values = projection.transform(values).astype(np.float32)
            columns = [pa.array(ids[part.positions], pa.string())]
            columns += [pa.array(column) for column in np.ascontiguousarray(values.T)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def finish_representations(
    catalog: pd.DataFrame,
    parts: Parts,
    save_loc: str | os.PathLike,
    n_components: int | float | None = None,
    pca_fit_rows: int = 50_000,
    metadata: Mapping[str, str] | None = None,
) -> RepresentationFiles:
    """Write the representations table (PCA-compressed if `n_components`) from a finished run's
    parts, the projection as `<save_loc>.pca.npz`, the failures; then delete the parts. The table
    goes last, with `metadata` in its parquet metadata."""
    ids = catalog["id_str"].to_numpy()
    save_loc, pca_loc, projection = Path(save_loc), None, None
    failed = failures_path(save_loc)
    n_failed = write_failures(failed, catalog, parts)
    if n_components is not None:
        projection = PCAProjection.fit(pca_sample(parts, pca_fit_rows), n_components)
        pca_loc = pca_path(save_loc)
        with atomic_path(pca_loc) as tmp, open(tmp, "wb") as f:
            np.savez(f, **vars(projection))
    prefix = "feat_" if projection is None else "feat_pca_"
    write_representations(save_loc, parts, ids, prefix, projection, metadata)
    parts.remove()
    return RepresentationFiles(save_loc, pca_loc, failed, len(catalog) - n_failed, n_failed)
