"""Resumable runs of a model over a catalog, without a framework: the bookkeeping under `predict` and
`get_representations` in every framework, so they write the same files and resume the same way.

A run cuts the catalog's rows into chunks of `chunk_rows` and batches that never cross a chunk. The
catalog is read a batch at a time (`zoobot.data.streaming.CatalogRows`, `Parts.batches`), never
whole. The framework's engine (`Backend.run_predictions` / `run_features`) decodes each batch with
`zoobot.data.images.read_image` (an unreadable image is a failed row, not an error), runs the model,
and hands the results to a `ChunkWriter`, which writes each finished chunk atomically as
`<save_loc>.parts/part-000012.parquet` (`Parts`), with the ids of its rows. A run stopped at any
moment, even by SIGKILL, loses at most the chunk in flight and resumes from the parts on disk.
`manifest.json` in the parts folder fingerprints the catalog, the model weights and every setting
that changes the numbers (`start_parts`), so parts of another run are never mixed in; each part
records the identity of its images (size and modification time, or contents), checked when the run
resumes, so a part is never kept for images changed since. The
Monte Carlo randomness of each chunk is seeded from the run's seed and the chunk number
(`chunk_seed`), so a resumed run gives the numbers of an uninterrupted one. Several processes may
fill one parts folder at once, each with its own chunks (`zoobot.models.distributed`): the manifest
is created once, and each part is written by one process.

When every chunk is done, `finish_predictions` / `finish_representations` assemble the final files
from the parts alone, streaming one part at a time (the tables are documented in
`zoobot.models.inference`; the manifest's `output` says which to write), write the unreadable
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from zoobot.data.images import ImageDecodeError, read_image
from zoobot.data.streaming import CatalogRows, RowSlice
from zoobot.models.outputs import OutputSet, claim, remove_stale
from zoobot.models.preprocessing import Preprocessing
from zoobot.shared.io import atomic_path, atomic_write_text, create_text, file_digest
from zoobot.shared.schema import Schema
from zoobot.shared.tables import PCAProjection, PredictionWriter

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "zoobot-parts/3"
FAILED_COLUMNS = ["id_str", "file_loc", "error"]
TABLE_FORMAT = "zoobot-predictions-table/1"
REPRESENTATIONS_FORMAT = "zoobot-representations/1"
PRECISIONS = ("32", "bf16")
SUFFIXES = {"classifier": "probability", "regressor": "prediction"}
IMAGES_KEY = b"zoobot.images"  # a part's record of its images' identity (`images_digest`)


@dataclass(frozen=True)
class RunSettings:
    """How to run: batch and chunk sizes, decoding workers, image size, numerics, resume, progress.

    `image_size=None` shows the model images at the size it was trained at; `preprocessing` is what
    the run shows the model, set when it starts (`zoobot.models.preprocessing.for_run`).

    `num_workers=None` takes half the CPUs (1 to 8, `default_workers`). `precision` is "32" or
    "bf16"; `channels_last=None` lets the framework choose its memory layout; `device=None` runs the
    model where it already is (each framework reads `device` its own way). A resumed run must have
    the same images: their sizes and modification times, or with `hash_images` their contents.
    """

    batch_size: int = 128
    num_workers: int | None = None
    image_size: int | None = None
    precision: str = "32"
    channels_last: bool | None = None
    chunk_rows: int = 4096
    resume: bool = True
    progress: bool = True
    device: Any = None
    hash_images: bool = False
    preprocessing: Preprocessing | None = None

    def __post_init__(self):
        if str(self.precision) not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "image_size", "chunk_rows"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(
                f"num_workers must be 0 (decode in this process) or more, or None for half the "
                f"CPUs; got num_workers={self.num_workers}"
            )

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the run's images (none before it starts: (0,), (1,))."""
        seen = self.preprocessing or Preprocessing()
        return seen.mean, seen.std

    @property
    def workers(self) -> int:
        """Decoding workers: `num_workers`, or `default_workers()` when it is None."""
        return default_workers() if self.num_workers is None else self.num_workers


def default_workers() -> int:
    """Half the CPUs this process may use, 1 to 8: decoding is a small share of the work on CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cpus or 2) // 2))


def images_digest(batches: Iterable[RowSlice], content: bool = False) -> str:
    """A digest of each image's identity in order: its size and modification time, or with
    `content` its bytes. An image held in the catalog itself (bytes) or a location that is not a
    file (a shard record, whose shard's checksum covers it) counts by its place only."""
    digest = hashlib.blake2b(digest_size=16)
    for batch in batches:
        for index, source in enumerate(batch.sources):
            identity = "-"
            if isinstance(source, str):
                with contextlib.suppress(OSError):
                    if content:
                        identity = file_digest(source, "blake2b")
                    else:
                        stat = os.stat(source)
                        identity = f"{stat.st_size}|{stat.st_mtime_ns}"
            digest.update(f"{batch.location(index)}|{identity}\n".encode())
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


Failure = tuple[int, str, str, str]
"""An unreadable image: (catalog position, id_str, where the image was read from, message)."""


def batch_failures(batch: RowSlice, errors: Sequence[tuple[int, str]]) -> list[Failure]:
    """The `Failure`s of a batch from (index in the batch, message) pairs of `decode_rows`."""
    return [(batch.start + i, batch.ids[i], batch.location(i), message) for i, message in errors]


@dataclass(frozen=True)
class Part:
    """The galaxies of one chunk that were predicted: catalog positions, ids and their values."""

    positions: np.ndarray
    ids: list[str]
    values: np.ndarray


@dataclass(frozen=True)
class Parts:
    """The part files of a run, one per chunk of `chunk_rows` of a catalog of `n_rows`."""

    folder: Path
    n_rows: int
    chunk_rows: int
    shape: tuple[int, ...]
    created: bool = False  # whether this run made the folder (`discard_if_unstarted`)
    images: dict[int, str] = field(default_factory=dict, compare=False)  # `check_images`

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

    def check_images(self, rows: CatalogRows, chunks: Iterable[int], content: bool) -> None:
        """Note the identity of the images of each of `chunks` not yet done, for its part to record
        (`write`), and check that of each done one: `ValueError` naming the chunks whose images
        changed since their part was made."""
        changed, chunks = [], sorted(chunks)
        slices = rows.read(map(self.rows, chunks), rows=self.chunk_rows)  # one slice per chunk
        for chunk, batch in zip(chunks, slices, strict=True):
            digest = images_digest([batch], content)
            if not self.path(chunk).is_file():
                self.images[chunk] = digest
            elif self.recorded_images(chunk) != digest:
                changed.append(chunk)
        if changed:
            spans = ", ".join("rows {}:{}".format(*self.rows(c)) for c in changed[:3])
            raise ValueError(
                f"{self.folder} holds parts of a different run (differs in: images); pass "
                f"resume=False to start again, or the same images ({len(changed)} part(s) were "
                f"made from images changed since: {spans})"
            )

    def recorded_images(self, chunk: int) -> str | None:
        """The identity of its images that the part of `chunk` recorded."""
        metadata = pq.read_schema(self.path(chunk)).metadata or {}
        value = metadata.get(IMAGES_KEY)
        return None if value is None else value.decode()

    def todo(self, chunks: Iterable[int] | None = None) -> list[int]:
        """The chunks (of `chunks`, default all) with no part file yet, in order."""
        chunks = range(self.n_chunks) if chunks is None else chunks
        return [c for c in chunks if not self.path(c).is_file()]

    def spans(self, chunks: Iterable[int], batch_size: int) -> Iterator[tuple[int, int]]:
        """(start, stop) of every batch of `chunks`: `batch_size` rows, never crossing a chunk."""
        for chunk in chunks:
            first, stop = self.rows(chunk)
            for start in range(first, stop, batch_size):
                yield start, min(start + batch_size, stop)

    def batches(self, rows: CatalogRows, chunks: Iterable[int], batch_size: int):
        """The rows (ids and image sources) of every batch of `chunks` in order, read from `rows`
        as they are needed (`Parts.spans`)."""
        if len(rows) != self.n_rows:
            raise ValueError(f"{rows} has {len(rows)} rows, these parts {self.n_rows}")
        return rows.read(self.spans(sorted(chunks), batch_size), rows=batch_size)

    def read(self) -> Iterator[Part]:
        """Each chunk's predicted galaxies in catalog order, values shaped (rows, *shape) float32."""
        for chunk in range(self.n_chunks):
            table = pq.read_table(
                self.path(chunk), columns=["position", "id_str", "error", "values"]
            )
            table = table.filter(table.column("error").is_null())
            flat = table.column("values").combine_chunks().flatten().to_numpy()
            values = flat.reshape(len(table), *self.shape)
            yield Part(
                table.column("position").to_numpy(), table.column("id_str").to_pylist(), values
            )

    def failures(self) -> Iterator[pd.DataFrame]:
        """The unreadable images of each chunk (`FAILED_COLUMNS`), in catalog order."""
        for chunk in range(self.n_chunks):
            table = pq.read_table(self.path(chunk), columns=FAILED_COLUMNS)
            table = table.filter(table.column("error").is_valid())
            if len(table):
                yield table.to_pandas()

    def n_predicted(self) -> int:
        """How many galaxies the finished parts hold values for (rows without an error)."""
        return sum(
            pq.read_table(self.path(c), columns=["error"]).column("error").null_count
            for c in range(self.n_chunks)
        )

    def write(
        self,
        chunk: int,
        positions: np.ndarray,
        ids: Sequence[str],
        values: np.ndarray,
        failures: Sequence[Failure] = (),
    ) -> None:
        """Write one chunk atomically: predicted rows, then failed rows (with zero values)."""
        width = math.prod(self.shape)
        values = np.concatenate(
            [
                np.asarray(values, np.float32).reshape(-1, width),
                np.zeros((len(failures), width), np.float32),
            ]
        )
        failed = list(zip(*failures, strict=True)) if failures else [(), (), (), ()]
        ok = [None] * len(positions)
        table = pa.table(
            {
                "position": pa.array(np.concatenate([positions, failed[0]]), pa.int64()),
                "id_str": pa.array([*ids, *failed[1]], pa.string()),
                "file_loc": pa.array([*ok, *failed[2]], pa.string()),
                "error": pa.array([*ok, *failed[3]], pa.string()),
                "values": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width),
            }
        )
        if chunk in self.images:
            table = table.replace_schema_metadata({IMAGES_KEY: self.images[chunk]})
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


def read_manifest(folder: Path) -> dict:
    """The manifest of a parts folder, or `FileNotFoundError` naming it."""
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: not the parts of a zoobot run")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_ours(folder: Path) -> None:
    """Refuse a folder without our manifest, unless it is empty or holds only the manifest another
    process is writing this moment (`create_text`'s temporary file). One listing decides."""
    if not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir()]
    writing = f".{MANIFEST}."
    if MANIFEST not in names and any(
        not (name.startswith(writing) and name.endswith(".part")) for name in names
    ):
        raise FileExistsError(f"{folder} exists but holds no {MANIFEST}; move it out of the way")


def clear_parts(folder: Path) -> None:
    """Delete a parts folder of an earlier run (`FileExistsError` if it is not one)."""
    _check_ours(folder)
    shutil.rmtree(folder, ignore_errors=True)


def open_parts(
    folder: Path,
    fingerprint: Mapping,
    resume: bool,
    output: Mapping | None = None,
    exclusive: bool = True,
) -> bool:
    """Start or continue a parts folder: check its manifest matches, or clear it if not resuming.
    Returns whether this call made the folder.

    `output` (what the finished run writes, `finish_run`) is stored beside the fingerprint, and
    replaced when resuming. With `exclusive=False` other processes may be filling the folder at the
    same time: their temporary files are left alone, the manifest is created by whichever process
    comes first (the others check theirs against it), and the output stored is the first one.
    """
    manifest = folder / MANIFEST
    _check_ours(folder)
    if not resume:
        if not exclusive:
            raise ValueError("resume=False would delete the parts other processes are writing")
        clear_parts(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": FORMAT, "run": dict(fingerprint), "output": output}, indent=2)
    if create_text(manifest, text):
        return created
    stored = read_manifest(folder)
    if stored.get("format") != FORMAT or stored.get("run") != json.loads(text)["run"]:
        old = stored.get("run") or {}
        changed = sorted(k for k in {*old, *fingerprint} if old.get(k) != fingerprint.get(k))
        raise ValueError(
            f"{folder} holds parts of a different run (differs in: {', '.join(changed)}); "
            "pass resume=False to start again, or the same model, catalog, images and settings"
        )
    if exclusive:
        for stale in folder.glob(".*.part"):
            stale.unlink()
        if output is not None and stored.get("output") != json.loads(text)["output"]:
            atomic_write_text(manifest, text)
    return False


def start_parts(
    rows: CatalogRows,
    save_loc: str | os.PathLike,
    shape: tuple[int, ...],
    settings: RunSettings,
    run: Mapping,
    seed: int = 0,
    output: Mapping | None = None,
    exclusive: bool = True,
    chunks: Iterable[int] | None = None,
) -> Parts:
    """The `Parts` of a run at `<save_loc>.parts`, opened for this run (or resumed).

    `run` names what else changes the numbers (framework, task, weights digest, input channels,
    passes...); with the catalog's identity, the shape of each output and the settings it is the
    fingerprint the parts folder must match to be resumed. The images of `chunks` (this process's
    share; default all) are recorded or checked (`Parts.check_images`). `output` and `exclusive`:
    `open_parts`.
    """
    fingerprint = {
        **run,
        "catalog": rows.identity,
        "rows": len(rows),
        "shape": [int(s) for s in shape],
        "chunk_rows": settings.chunk_rows,
        "image_size": settings.image_size,
        "normalisation": [list(settings.normalisation[0]), list(settings.normalisation[1])],
        "precision": str(settings.precision),
        "seed": seed,
        "images": "contents" if settings.hash_images else "size+mtime",
    }
    folder = Path(f"{os.fspath(save_loc)}.parts")
    created = open_parts(folder, fingerprint, settings.resume, output, exclusive)
    parts = Parts(folder, len(rows), settings.chunk_rows, tuple(int(s) for s in shape), created)
    share = range(parts.n_chunks) if chunks is None else chunks
    parts.check_images(rows, share, settings.hash_images)
    done = parts.n_chunks - len(parts.todo())
    if done:
        logger.info("resuming: %d of %d chunks already done", done, parts.n_chunks)
    return parts


class ChunkWriter:
    """Collect batch results in order and write each chunk's part file as soon as it is complete.

    Batches must come in order and never cross a chunk (`Parts.spans`). `new_chunk(start)` tells
    whether a batch opens a chunk (and which), for the engine to reseed its randomness there. Use as
    a context manager: it shows the progress bar (rows done out of those of `chunks`).
    """

    def __init__(self, parts: Parts, chunks: Sequence[int], progress: bool = True):
        self.parts = parts
        total = sum(stop - start for start, stop in map(parts.rows, chunks))
        self.bar = tqdm(total=total, unit="galaxy", disable=not progress)
        self._clear()

    def _clear(self) -> None:
        self.outputs, self.positions, self.ids, self.failures = [], [], [], []

    def new_chunk(self, start: int) -> int | None:
        """The chunk a batch starting at catalog position `start` opens, or None if it opens none."""
        return start // self.parts.chunk_rows if start % self.parts.chunk_rows == 0 else None

    def add(
        self,
        start: int,
        stop: int,
        positions: np.ndarray,
        ids: Sequence[str],
        values: np.ndarray | None,
        failures: Sequence[Failure] = (),
    ) -> None:
        """Results of the batch of rows `start:stop`: values of the rows at catalog `positions`
        with ids `ids` (`values` shaped (len(positions), *parts.shape)) and the failed rows."""
        if len(positions):
            values = np.asarray(values)
            if values.shape[1:] != self.parts.shape:
                raise ValueError(
                    f"the model returned {values.shape[1:]} per image, not {self.parts.shape}"
                )
            self.outputs.append(values.astype(np.float32, copy=False))
            self.positions.append(np.asarray(positions, np.int64))
            self.ids += list(ids)
        self.failures += list(failures)
        chunk = start // self.parts.chunk_rows
        if stop == self.parts.rows(chunk)[1]:
            shape = (0, *self.parts.shape)
            values = np.concatenate(self.outputs) if self.outputs else np.zeros(shape, np.float32)
            ok = np.concatenate(self.positions) if self.positions else np.zeros(0, np.int64)
            self.parts.write(chunk, ok, self.ids, values, self.failures)
            self._clear()
        if self.bar.n + stop - start < self.bar.total:
            self.bar.update(stop - start)
        else:  # the finished bar is drawn by close(); update() would draw it once before
            self.bar.n = self.bar.total

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


@contextlib.contextmanager
def parquet_stream(path: str | os.PathLike, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A zstd ParquetWriter whose file appears under `path` only if the block succeeds."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        yield writer


def write_failures(path: str | os.PathLike, parts: Parts) -> int:
    """Write the unreadable images (id_str, file_loc, error) as CSV atomically, a part at a time;
    return how many."""
    n_failed = 0
    with atomic_path(path) as tmp:
        pd.DataFrame(columns=FAILED_COLUMNS).to_csv(tmp, index=False)
        for failed in parts.failures():
            failed.to_csv(tmp, mode="a", header=False, index=False)
            n_failed += len(failed)
    if n_failed:
        logger.warning("%d image(s) could not be read; listed in %s", n_failed, path)
    return n_failed


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


def write_table(path, parts: Parts, schema: pa.Schema, n_samples: int) -> None:
    """Stream every part into a classifier/regressor table at `path`."""
    with parquet_stream(path, schema) as writer:
        for part in parts.read():
            values = part.values
            columns = [pa.array(part.ids, pa.string())]
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
    schema: Schema,
    n_samples: int,
    name: str,
    metadata: Mapping[str, str] | None = None,
):
    """Stream every part into the full and friendly tables of `zoobot.shared.tables`."""
    options = {"friendly_path": friendly, "metadata": metadata}
    with PredictionWriter(path, schema, name, n_samples, **options) as writer:
        for part in parts.read():
            writer.write(np.array(part.ids, dtype=object), part.values)


def finish_predictions(
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
    save_loc = Path(save_loc)
    failed = failures_path(save_loc)
    n_failed = write_failures(failed, parts)
    friendly = None
    if table == "tree":
        friendly = Path(friendly_loc or friendly_path(save_loc))
        write_tree(save_loc, friendly, parts, schema, n_samples, model_name, metadata)
    else:
        arrow = table_schema(names, SUFFIXES[table], n_samples, model_name, metadata)
        write_table(save_loc, parts, arrow, n_samples)
    parts.remove()
    return PredictionFiles(save_loc, friendly, failed, parts.n_rows - n_failed, n_failed)


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
            columns = [pa.array(part.ids, pa.string())]
            columns += [pa.array(column) for column in np.ascontiguousarray(values.T)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def finish_representations(
    parts: Parts,
    save_loc: str | os.PathLike,
    n_components: int | float | None = None,
    pca_fit_rows: int = 50_000,
    metadata: Mapping[str, str] | None = None,
) -> RepresentationFiles:
    """Write the representations table (PCA-compressed if `n_components`) from a finished run's
    parts, the projection as `<save_loc>.pca.npz`, the failures; then delete the parts. The table
    goes last, with `metadata` in its parquet metadata."""
    save_loc, pca_loc, projection = Path(save_loc), None, None
    failed = failures_path(save_loc)
    n_failed = write_failures(failed, parts)
    if n_components is not None:
        projection = PCAProjection.fit(pca_sample(parts, pca_fit_rows), n_components)
        pca_loc = pca_path(save_loc)
        with atomic_path(pca_loc) as tmp, open(tmp, "wb") as f:
            np.savez(f, **vars(projection))
    prefix = "feat_" if projection is None else "feat_pca_"
    write_representations(save_loc, parts, prefix, projection, metadata)
    parts.remove()
    return RepresentationFiles(save_loc, pca_loc, failed, parts.n_rows - n_failed, n_failed)


# --- finishing a run from its parts folder alone ---------------------------------------------


def prediction_output(
    table: str,
    names: Sequence[str],
    n_samples: int,
    model_name: str,
    schema: Schema | None,
    outputs: OutputSet,
) -> dict:
    """The manifest's `output` of a `predict` run: the arguments of `finish_predictions` and the
    members of its `outputs` (`files`)."""
    return {
        "kind": "predictions",
        "table": table,
        "names": list(names),
        "n_samples": int(n_samples),
        "model_name": model_name,
        "schema": None if schema is None else schema.to_dict(),
        "files": outputs.run_record(),
    }


def representation_output(
    n_components: int | float | None, pca_fit_rows: int, outputs: OutputSet
) -> dict:
    """The manifest's `output` of a `get_representations` run."""
    return {
        "kind": "representations",
        "n_components": n_components,
        "pca_fit_rows": pca_fit_rows,
        "files": outputs.run_record(),
    }


def stored_parts(save_loc: str | os.PathLike) -> tuple[Parts, dict]:
    """The `Parts` of the run at `<save_loc>.parts` and the `output` its manifest holds."""
    folder = Path(f"{os.fspath(save_loc)}.parts")
    manifest = read_manifest(folder)
    if manifest.get("format") != FORMAT or not manifest.get("output"):
        raise ValueError(f"{folder} was written by another version of zoobot; run it again")
    run = manifest["run"]
    parts = Parts(folder, int(run["rows"]), int(run["chunk_rows"]), tuple(run["shape"]))
    return parts, manifest["output"]


def finish_run(
    parts: Parts, save_loc: str | os.PathLike, output: Mapping
) -> PredictionFiles | RepresentationFiles:
    """The final files of a finished run, as its `output` (`prediction_output`,
    `representation_output`) says; then the files of the earlier run at `save_loc` that this one
    did not rewrite are removed (`zoobot.models.outputs`), so the set on disk is one run's."""
    outputs = OutputSet.of(save_loc, **output["files"])
    stale = claim(outputs, overwrite=True)  # the run's start refused a save_loc not ours to replace
    metadata = outputs.metadata()
    if output["kind"] == "representations":
        files = finish_representations(
            parts, save_loc, output["n_components"], output["pca_fit_rows"], metadata
        )
    else:
        schema = None if output["schema"] is None else Schema.from_dict(output["schema"])
        files = finish_predictions(
            parts,
            save_loc,
            output["table"],
            output["names"],
            output["n_samples"],
            output["model_name"],
            schema,
            output["files"].get("friendly"),
            metadata,
        )
    remove_stale(stale)
    return files
