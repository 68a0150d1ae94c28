"""Run a Keras model over a catalog or shard folder in resumable chunks: the engine under `predict`
and `get_representations` (`KerasBackend.run_predictions` / `run_features`), the twin of
`zoobot.torch.runner`.

The framework-free bookkeeping is `zoobot.models.runner`, shared with `zoobot.torch`: chunks of
`chunk_rows` galaxies, part files `<save_loc>.parts/part-000012.parquet` written atomically as each
chunk finishes (so a run killed at any moment, even by SIGKILL, resumes from them), the manifest
that fingerprints a run, the unreadable images, and the final tables. Here: images come from
`zoobot.tf.data.eval_dataset` (decode + resize by `zoobot.data.images.read_image` in parallel
`tf.data` threads, then the evaluation transform in TF ops; unreadable images are flagged per row by
its `ok` / `error` fields, never stopping the run), in batches that never cross a chunk; the model
runs in one compiled function (`zoobot.tf.runtime.compiled`: a `tf.function` on TensorFlow, a
`jax.jit` on JAX); at the start of every chunk each Keras `SeedGenerator` state of the model (the
dropout layers' randomness) is reset from the run's seed and the chunk number, so Monte Carlo
passes of a resumed run equal those of an uninterrupted one.

Sources: an image catalog (DataFrame or file with `id_str`, `file_loc`) or a folder of
`zoobot-data` TFRecord shards (all its splits, in sidecar order); for shards, `file_loc` in the
failure report is `<shard file>#<record number in that file>`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from keras import ops

from zoobot.data.inputs import (
    CatalogSource,
    ShardSource,
    is_shard_folder,
    open_source,
    shard_table,
    source_digest,
)
from zoobot.models import fast_paths
from zoobot.models.runner import (
    ChunkWriter,
    Parts,
    RunSettings,
    arrays_digest,
    chunk_seed,
    cleaned_up_on_failure,
    read_catalog,
    start_parts,
)
from zoobot.tf import runtime
from zoobot.tf.data import eval_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "Forward",
    "bfloat16_copy",
    "featurizer",
    "input_channels",
    "open_rows",
    "reseed",
    "run_chunks",
    "run_precision",
    "sampler",
    "seed_states",
    "weights_digest",
]


def open_rows(
    source: pd.DataFrame | str | os.PathLike | ShardSource,
) -> tuple[CatalogSource | ShardSource, pd.DataFrame]:
    """(pipeline source, `id_str` + `file_loc` table in row order) of a catalog or shard folder."""
    if isinstance(source, ShardSource) or is_shard_folder(source):
        opened = open_source(source)
        return opened, shard_table(opened)
    table = read_catalog(source)
    return open_source(table), table


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
    """The precision to run at: "bf16" on a CPU only where it computes bf16 natively
    (`zoobot.models.fast_paths.cpu_runs`), else "32": emulated bf16 is several times slower than
    float32 there, and with oneDNN held to AVX2 TensorFlow refuses bf16 convolutions
    (benchmarks/bf16_cpu.py). `device` is `predict`'s; None is the backend's choice (a GPU if
    one is visible). GPUs run what was asked."""
    precision = str(precision)
    if precision == "32":
        return precision
    on_cpu = "CPU" in device.upper() if device else not runtime.gpu_count()
    return "32" if on_cpu and not fast_paths.cpu_runs("bf16") else precision


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


def _runs(parts: Parts, todo: list[int], batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) rows of each dataset to read: contiguous todo chunks in one go when batches
    of `batch_size` from a chunk start stay inside chunks, else one per chunk."""
    if parts.chunk_rows % batch_size:
        return [parts.rows(chunk) for chunk in todo]
    runs: list[list[int]] = []
    for chunk in todo:
        if runs and runs[-1][1] == chunk:
            runs[-1][1] = chunk + 1
        else:
            runs.append([chunk, chunk + 1])
    return [(parts.rows(first)[0], parts.rows(last - 1)[1]) for first, last in runs]


def run_chunks(
    source: CatalogSource | ShardSource,
    table: pd.DataFrame,
    model: keras.Model,
    forward: Forward,
    shape: tuple[int, ...],
    save_loc: str | os.PathLike,
    settings: RunSettings,
    run: Mapping,
    seed: int = 0,
    key: Hashable | None = None,
) -> Parts:
    """Compute `forward(images) -> (batch, *shape)` for every chunk of the source not yet on disk.

    `source` and `table` come from `open_rows`; `model` holds the weights and random layers
    `forward` uses. `run` describes what `forward` computes beyond the weights (task, passes...)
    for the manifest. `key` names what `forward` computes with `model`, to reuse its compiled
    graph in later calls (see `compiled`). Returns the finished `Parts`.
    """
    channels = input_channels(model)
    fingerprint = {
        **run,
        "framework": runtime.name(),
        "weights": weights_digest(model),
        "channels": channels,
    }
    shards = source_digest(source)
    if shards is not None:
        fingerprint["shards"] = shards
    parts = start_parts(table, save_loc, shape, settings, fingerprint, seed)
    todo = parts.todo()
    spans = parts.spans(todo, settings.batch_size)
    key = None if key is None else (key, settings.device)
    step = compiled(model, forward, key, settings.image_size, channels)
    states = seed_states(model)
    with (
        cleaned_up_on_failure(parts),
        runtime.device_scope(settings.device),
        ChunkWriter(parts, spans, settings.progress) as writer,
    ):
        for start, stop in _runs(parts, todo, settings.batch_size):
            batches = eval_dataset(
                source,
                settings.image_size,
                channels,
                settings.batch_size,
                start=start,
                stop=stop,
                num_parallel_calls=max(1, settings.workers),
            )
            _stream(batches, step, writer, states, seed, start)
    return parts


def _stream(batches, step, writer: ChunkWriter, states, seed: int, start: int) -> None:
    """The hot loop: one forward pass per batch, one part file per finished chunk."""
    for batch in batches:
        chunk = writer.new_chunk(start)
        if chunk is not None:
            reseed(states, chunk_seed(seed, chunk))
        ok = batch["ok"].numpy()
        index = batch["index"].numpy()
        stop = start + len(ok)
        values = ops.convert_to_numpy(step(batch["image"])) if ok.any() else None
        errors = [
            (int(position), message.decode("utf-8", "replace"))
            for position, message, good in zip(index, batch["error"].numpy(), ok, strict=True)
            if not good
        ]
        writer.add(start, stop, index[ok], None if values is None else values[ok], errors)
        start = stop
