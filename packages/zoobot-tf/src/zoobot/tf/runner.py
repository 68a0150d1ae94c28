"""Run a Keras model over a catalog or shard folder in resumable chunks: the engine under `predict`
and `get_representations` (`KerasBackend.run_predictions` / `run_features`), the twin of
`zoobot.torch.runner`.

The framework-free bookkeeping is `zoobot.models.runner`, shared with `zoobot.torch`: chunks of
`chunk_rows` galaxies, part files `<save_loc>.parts/part-000012.parquet` written atomically as each
chunk finishes (so a run killed at any moment, even by SIGKILL, resumes from them), the manifest
that fingerprints a run, the unreadable images, the final tables and each process's share. Here:
a catalog's rows are streamed a batch at a time (`Parts.batches`) into a `tf.data` pipeline whose
parallel map decodes and resizes each batch with `zoobot.data.images.read_image` (as torch's
DataLoader workers do, catching an unreadable image per row) and applies the evaluation transform in
TF ops; shard folders are read by `zoobot.tf.data.eval_dataset`. Batches never cross a chunk; the
model runs in one compiled function (`zoobot.tf.runtime.compiled`: a `tf.function` on TensorFlow, a
`jax.jit` on JAX); at the start of every chunk each Keras `SeedGenerator` state of the model (the
dropout layers' randomness) is reset from the run's seed and the chunk number, so Monte Carlo
passes of a resumed run equal those of an uninterrupted one. On JAX, TensorFlow only reads data.

Sources: a catalog (`zoobot.data.streaming.open_catalog_rows`: a DataFrame, file, folder or
dataset) or a folder of `zoobot-data` TFRecord shards (all its splits, in sidecar order; its ids are
read whole when opened); for shards, `file_loc` in the failure report is
`<shard file>#<record number in that file>`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf
from keras import ops

from zoobot.data.images import read_image
from zoobot.data.inputs import (
    ShardSource,
    is_shard_folder,
    open_source,
    shard_table,
    source_digest,
)
from zoobot.data.streaming import CatalogRows, open_catalog_rows
from zoobot.models import fast_paths
from zoobot.models.runner import (
    ChunkWriter,
    Parts,
    RunSettings,
    arrays_digest,
    chunk_seed,
    decode_rows,
)
from zoobot.tf import runtime
from zoobot.tf.data import eval_dataset
from zoobot.tf.data.transforms import eval_transform

logger = logging.getLogger(__name__)

__all__ = [
    "Forward",
    "bfloat16_copy",
    "featurizer",
    "input_channels",
    "open_rows",
    "prepare_run",
    "reseed",
    "run_chunks",
    "run_precision",
    "sampler",
    "seed_states",
    "weights_digest",
]


def open_rows(
    source: pd.DataFrame | str | os.PathLike | ShardSource,
) -> tuple[CatalogRows | ShardSource, CatalogRows]:
    """(what the engine reads, the rows' `CatalogRows`) of a catalog or a shard folder."""
    if isinstance(source, ShardSource) or is_shard_folder(source):
        opened = open_source(source)
        table = pa.Table.from_pandas(shard_table(opened), preserve_index=False)
        rows = open_catalog_rows(table)
        identity = {**rows.identity, "shards": source_digest(opened)}
        return opened, CatalogRows(rows.name, rows.pieces, identity)
    rows = open_catalog_rows(source)
    return rows, rows


def weights_digest(model: keras.Model) -> str:
    """A digest of every weight in order (not the random seed states), so parts from other weights
    are never mixed in. Keras names variables with per-process counters (`dense_3`), so only the
    order, shapes, dtypes and values count: a model reloaded in another process matches."""
    return arrays_digest((f"{i:06d}", np.asarray(w.numpy())) for i, w in enumerate(model.weights))


def input_channels(model: keras.Model) -> int:
    """Image channels the model takes: its encoder's input (else the input channels of its first
    4-d kernel, a convolution's (height, width, in, out), else 3)."""
    encoder = getattr(model, "encoder", model)
    for candidate in (encoder, model):
        with contextlib.suppress(AttributeError, IndexError, TypeError, ValueError):
            channels = candidate.inputs[0].shape[-1]
            if channels:
                return int(channels)
    kernel = next((w for w in encoder.weights if len(w.shape) == 4), None)
    return 3 if kernel is None else int(kernel.shape[-2])


def seed_states(model: keras.Model) -> list[keras.Variable]:
    """The state variable of every `SeedGenerator` of the model (dropout and other random layers):
    Keras's public `variables` are the weights plus these."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def reseed(states: list[keras.Variable], seed: int) -> None:
    """Reset each seed state from `seed`: the same draws follow whenever it is reset."""
    values = np.random.SeedSequence(seed).generate_state(max(1, len(states)), np.uint32)
    for state, value in zip(states, values, strict=False):
        state.assign(np.array([int(value), 0], dtype=state.dtype))


def run_precision(precision: str, device: str | None = None) -> str:
    """`zoobot.models.fast_paths.run_precision` on `predict`'s `device` (None: the backend's
    choice, a GPU if one is visible); with oneDNN held to AVX2 TensorFlow also refuses bf16
    convolutions, so "bf16" runs float32 on a CPU without native bf16."""
    on_cpu = "CPU" in device.upper() if device else not runtime.gpu_count()
    return fast_paths.run_precision(precision, on_cpu)


def _cache(model: keras.Model) -> dict:
    """A dict living on `model` for what is built from it (kept out of Keras's layer tracking)."""
    cache = model.__dict__.get("_zoobot_cache")
    if cache is None:
        cache = {}
        object.__setattr__(model, "_zoobot_cache", cache)
    return cache


def bfloat16_copy(encoder: keras.Model) -> keras.Model:
    """The encoder rebuilt with the `mixed_bfloat16` policy (bf16 compute, float32 weights) holding
    the encoder's current weights: the fast path of `precision="bf16"` on CPUs with AVX-512 bf16 or
    AMX (`run_precision` says where). Built once per encoder; its weights are copied again at every
    call."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        return layer.__class__.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})

    copy = _cache(encoder).get("bfloat16")
    if copy is None:
        try:
            copy = keras.models.clone_model(encoder, clone_function=clone)
        except (TypeError, ValueError, NotImplementedError) as err:
            raise ValueError(
                f"precision='bf16' needs a functional encoder that Keras can clone; {err}"
            ) from err
        _cache(encoder)["bfloat16"] = copy
    copy.set_weights(encoder.get_weights())
    return copy


@dataclass(frozen=True)
class Forward:
    """images -> outputs, computed with the variables of `models` (weights and seed states)."""

    function: Callable
    models: tuple[keras.Model, ...]


def compiled(model: keras.Model, forward: Forward, key: Hashable | None, size: int, channels: int):
    """`forward` as one compiled function of float32 (batch, size, size, channels) images.

    Tracing a Keras model takes seconds, so with a `key` (what `forward` computes with `model`) the
    function is kept for the model's lifetime and reused by the next call with the same key.
    """
    cache = _cache(model) if key is not None else {}
    full_key = ("compiled", key, size, channels)
    if full_key not in cache:
        weights = [w for m in forward.models for w in m.weights]
        states = [s for m in forward.models for s in seed_states(m)]
        shape = (None, size, size, channels)
        cache[full_key] = runtime.compiled(forward.function, weights, states, shape)
    return cache[full_key]


def sampler(model: keras.Model, n_samples: int, mc_dropout: bool, precision: str) -> Forward:
    """images -> (batch, output, n_samples): `model.predict_samples`, or its bf16 twin."""
    if precision == "32":
        return Forward(
            lambda images: model.predict_samples(images, n_samples, mc_dropout), (model,)
        )
    encoder = bfloat16_copy(model.encoder)

    def samples(images):
        features = ops.cast(encoder(images, training=False), "float32")
        passes = [
            model.prediction(model.head(features, training=mc_dropout)) for _ in range(n_samples)
        ]
        return ops.cast(ops.stack(passes, axis=-1), "float32")

    return Forward(samples, (model, encoder))


def featurizer(encoder: keras.Model, precision: str) -> Forward:
    """images -> pooled features (float32), in bf16 with `precision="bf16"`."""
    runner = encoder if precision == "32" else bfloat16_copy(encoder)

    def forward(images):
        return ops.cast(runner(images, training=False), "float32")

    return Forward(forward, (runner,))


def prepare_run(model: keras.Model, settings: RunSettings) -> tuple[RunSettings, dict]:
    """The precision the run computes in (`run_precision`) and what identifies the model's
    numbers for the manifest."""
    precision = run_precision(settings.precision, settings.device)
    identity = {
        "framework": runtime.name(),
        "weights": weights_digest(model),
        "channels": input_channels(model),
    }
    return replace(settings, precision=precision), identity


def _runs(parts: Parts, chunks: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) rows of each shard dataset to read: contiguous chunks in one go when batches
    of `batch_size` from a chunk start stay inside chunks, else one per chunk."""
    if parts.chunk_rows % batch_size:
        return [parts.rows(chunk) for chunk in chunks]
    runs: list[list[int]] = []
    for chunk in chunks:
        if runs and runs[-1][1] == chunk:
            runs[-1][1] = chunk + 1
        else:
            runs.append([chunk, chunk + 1])
    return [(parts.rows(first)[0], parts.rows(last - 1)[1]) for first, last in runs]


def catalog_batches(
    rows: CatalogRows, parts: Parts, chunks: Sequence[int], settings: RunSettings, channels: int
) -> tf.data.Dataset:
    """The batches of `chunks` (`Parts.batches`), decoded by `read_image` in a parallel map and
    transformed: dicts of `start`, `ids`, `locations` (where each row's image is read from), `ok`
    (indices of the readable rows), `errors` (b"" where readable) and `image` (readable rows)."""
    size = settings.image_size

    def batches():
        for batch in parts.batches(rows, chunks, settings.batch_size):
            is_path = [isinstance(s, str) for s in batch.sources]
            data = [
                s.encode("utf-8", "surrogateescape") if p else s
                for s, p in zip(batch.sources, is_path, strict=True)
            ]
            locations = [batch.location(i) for i in range(len(batch))]
            yield batch.start, batch.ids, locations, data, is_path

    def decode(data: np.ndarray, is_path: np.ndarray):
        sources = [
            d.decode("utf-8", "surrogateescape") if p else d
            for d, p in zip(data, is_path, strict=True)
        ]
        # read_image is looked up at call time, so it can be replaced (tests: a slow disk).
        images, ok, errors = decode_rows(sources, size, read_image)
        messages = np.full(len(sources), b"", dtype=object)
        for index, message in errors:
            messages[index] = message.encode("utf-8", "replace")
        return images, ok, messages

    def read(start, ids, locations, data, is_path):
        images, ok, errors = tf.numpy_function(
            decode, [data, is_path], [tf.uint8, tf.int64, tf.string], stateful=False
        )
        images.set_shape([None, size, size, 3])
        image = eval_transform(images, channels, *settings.normalisation)
        return {
            "start": start,
            "ids": ids,
            "locations": locations,
            "ok": ok,
            "errors": errors,
            "image": image,
        }

    text = tf.TensorSpec((None,), tf.string)
    signature = (tf.TensorSpec((), tf.int64), text, text, text, tf.TensorSpec((None,), tf.bool))
    return (
        tf.data.Dataset.from_generator(batches, output_signature=signature)
        .map(read, num_parallel_calls=max(1, settings.workers), deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def run_chunks(
    source: CatalogRows | ShardSource,
    parts: Parts,
    chunks: Sequence[int],
    model: keras.Model,
    forward: Forward,
    settings: RunSettings,
    seed: int = 0,
    key: Hashable | None = None,
) -> None:
    """Compute `forward(images) -> (batch, *parts.shape)` for each of `chunks` and write its part.

    `source` comes from `open_rows`, `settings` from `prepare_run`; `model` holds the weights and
    random layers `forward` uses. `key` names what `forward` computes with `model`, to reuse its
    compiled graph in later calls (see `compiled`).
    """
    channels = input_channels(model)
    key = None if key is None else (key, settings.device)
    step = compiled(model, forward, key, settings.image_size, channels)
    states = seed_states(model)
    with (
        runtime.device_scope(settings.device),
        ChunkWriter(parts, chunks, settings.progress) as writer,
    ):
        if isinstance(source, ShardSource):
            for start, stop in _runs(parts, chunks, settings.batch_size):
                batches = eval_dataset(
                    source,
                    settings.image_size,
                    channels,
                    settings.batch_size,
                    *settings.normalisation,
                    start=start,
                    stop=stop,
                    num_parallel_calls=max(1, settings.workers),
                )
                _stream_shards(batches, step, writer, states, seed, start, source)
        else:
            batches = catalog_batches(source, parts, chunks, settings, channels)
            _stream(batches, step, writer, states, seed)


def _stream(batches, step, writer: ChunkWriter, states, seed: int) -> None:
    """The hot loop: one forward pass per batch, one part file per finished chunk."""
    for batch in batches:
        start = int(batch["start"])
        chunk = writer.new_chunk(start)
        if chunk is not None:
            reseed(states, chunk_seed(seed, chunk))
        ok = batch["ok"].numpy()
        ids = [i.decode("utf-8", "surrogateescape") for i in batch["ids"].numpy()]
        values = ops.convert_to_numpy(step(batch["image"])) if len(ok) else None
        failures = [
            (start + i, ids[i], location.decode("utf-8", "surrogateescape"), error.decode())
            for i, (location, error) in enumerate(
                zip(batch["locations"].numpy(), batch["errors"].numpy(), strict=True)
            )
            if error
        ]
        writer.add(start, start + len(ids), start + ok, [ids[i] for i in ok], values, failures)


def _stream_shards(batches, step, writer: ChunkWriter, states, seed, start, source) -> None:
    """The hot loop over shard records (`eval_dataset` batches)."""
    offsets = np.concatenate([[0], np.cumsum(source.counts)])
    for batch in batches:
        chunk = writer.new_chunk(start)
        if chunk is not None:
            reseed(states, chunk_seed(seed, chunk))
        ok = batch["ok"].numpy()
        index = batch["index"].numpy()
        ids = [i.decode("utf-8") for i in batch["id_str"].numpy()]
        stop = start + len(ok)
        values = ops.convert_to_numpy(step(batch["image"])) if ok.any() else None
        failures = []
        for row, (position, message, good) in enumerate(
            zip(index, batch["error"].numpy(), ok, strict=True)
        ):
            if not good:
                shard = int(np.searchsorted(offsets, position, side="right") - 1)
                location = f"{source.files[shard]}#{position - offsets[shard]}"
                failures.append(
                    (int(position), ids[row], location, message.decode("utf-8", "replace"))
                )
        good_ids = [ids[row] for row in np.flatnonzero(ok)]
        writer.add(
            start, stop, index[ok], good_ids, None if values is None else values[ok], failures
        )
        start = stop
