"""`eval_dataset` and `train_dataset`: batched `tf.data` pipelines from catalogs or shard folders.

See the package docstring (`zoobot.tf.data`) for what each dataset yields.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from zoobot.data.images.headers import MAX_PIXELS, OTHER_FORMATS
from zoobot.data.inputs import (
    CatalogSource,
    LabelCols,
    ShardSource,
    Source,
    open_source,
)
from zoobot.data.labels import LabelRule
from zoobot.data.splits import Splits
from zoobot.shared import Schema
from zoobot.tf.data.augment import AugmentConfig, augment_batch
from zoobot.tf.data.shards import ordered_records, parser, shuffled_records
from zoobot.tf.data.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    check_normalisation,
    eval_transform,
    mean_greyscale,
    normalise,
    read_image_op,
)

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 4096  # records (encoded images) held for shuffling shards
UNUSABLE_IMAGE = "zoobot: unusable image"  # marks the in-graph image checks' errors
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BATCHES_KEPT = 1024  # batches whose ids `BatchIds` keeps


class BatchIds:
    """The `id_str` of each batch a training dataset produced in its current iteration, by batch
    number: how a failing training step names its galaxies (`zoobot.tf.training`)."""

    def __init__(self):
        self.batches: dict[int, list[str]] = {}

    def record(self, index: np.ndarray, ids: np.ndarray) -> np.int64:
        index = int(index)
        if index == 0:  # a new iteration (epoch) began
            self.batches = {}
        self.batches[index] = [i.decode("utf-8", "replace") for i in ids.tolist()]
        self.batches.pop(index - BATCHES_KEPT, None)
        return np.int64(index)

    def get(self, batch: int) -> list[str] | None:
        return self.batches.get(batch)


def _check_sizes(image_size: int, batch_size: int) -> None:
    for name, value in (("image_size", image_size), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def _catalog_rows(source: CatalogSource, start: int, stop: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        {
            "source": tf.constant(source.paths[start:stop].tolist(), tf.string, [stop - start]),
            "id_str": tf.constant(source.ids[start:stop].tolist(), tf.string, [stop - start]),
            "index": tf.constant(source.positions[start:stop], tf.int64),
            "labels": tf.constant(source.labels[start:stop], tf.float32),
        }
    )


def _shard_rows(source: ShardSource, start: int, stop: int) -> tf.data.Dataset:
    """Records start:stop of the ordered shards as (index, serialized record)."""
    offsets = np.concatenate([[0], np.cumsum(source.counts, dtype=np.int64)])
    first = int(np.searchsorted(offsets, start, side="right") - 1) if start < stop else 0
    last = int(np.searchsorted(offsets, stop, side="left")) if start < stop else 0
    subset = dataclasses.replace(
        source, files=source.files[first:last], counts=source.counts[first:last]
    )
    records = ordered_records(subset).skip(start - int(offsets[first])).take(stop - start)
    return records.enumerate(start=start)


def eval_dataset(
    source: Source | CatalogSource | ShardSource,
    image_size: int = 224,
    channels: int = 3,
    batch_size: int = 128,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    *,
    label_cols: LabelCols = None,
    schema: Schema | str | None = None,
    split: str | None = None,
    splits: Splits = None,
    split_seed: int = 0,
    start: int = 0,
    stop: int | None = None,
    transform: bool = True,
    as_tuples: bool = False,
    num_parallel_calls: int = AUTOTUNE,
    label_rule: LabelRule | None = None,
) -> tf.data.Dataset:
    """Batches of galaxies with the deterministic evaluation transform, in source order.

    `source`: a catalog DataFrame / file (`id_str`, `file_loc`), or a shard folder (see
    `open_source` for `label_cols`, `schema`, `split`, `splits`, `split_seed`); `split=None` takes
    every row (a shard folder's splits in sidecar order). Rows `start:stop` of that order only.
    Decode + resize is `zoobot.data.images.read_image`, then `eval_transform` (skipped with
    `transform=False`: uint8 RGB images). Yields dicts (see `zoobot.tf.data`); `as_tuples=True`
    yields `(images, labels)` (or `images` without label columns) and an unreadable image stops
    the iteration with an error naming it, for Keras `fit(validation_data=...)` / `evaluate`.
    Labels are checked by `label_rule` (`zoobot.data.labels`; see `open_source`).
    """
    _check_sizes(image_size, batch_size)
    check_normalisation(mean, std, channels)
    source = open_source(
        source,
        label_cols,
        schema=schema,
        split=split,
        splits=splits,
        split_seed=split_seed,
        rule=label_rule,
    )
    stop = len(source) if stop is None else min(int(stop), len(source))
    start = min(max(0, int(start)), stop)
    is_path = isinstance(source, CatalogSource)
    if is_path:
        rows = _catalog_rows(source, start, stop)
    else:
        rows, parse = _shard_rows(source, start, stop), parser(source)

    def read(*row) -> dict[str, tf.Tensor]:
        # Parsing happens here, in the parallel map, for shards: (index, record) -> a row dict.
        if is_path:
            row = dict(row[0])
        else:
            record = parse(row[1])
            row = {"source": record.pop("image"), "index": row[0], **record}
        image, error = read_image_op(row.pop("source"), image_size, is_path, strict=as_tuples)
        return {**row, "image": image, "ok": tf.equal(error, ""), "error": error}

    def finish(batch: dict[str, tf.Tensor]):
        if transform:
            batch["image"] = eval_transform(batch["image"], channels, mean, std)
        if not as_tuples:
            if not source.label_cols:
                batch.pop("labels")
            return batch
        return (batch["image"], batch["labels"]) if source.label_cols else batch["image"]

    dataset = (
        rows.map(read, num_parallel_calls=num_parallel_calls, deterministic=True)
        .batch(batch_size)
        .map(finish)
        .apply(tf.data.experimental.assert_cardinality(math.ceil((stop - start) / batch_size)))
        .prefetch(AUTOTUNE)
    )
    return dataset.with_options(_options(deterministic=True))


def _require(ok: tf.Tensor, name: tf.Tensor, problem: str) -> tf.Operation:
    """An assertion that stops the pipeline with `UNUSABLE_IMAGE`, the image's name and why."""
    return tf.debugging.Assert(ok, [UNUSABLE_IMAGE, name, problem])


def _pixels(data: tf.Tensor, is_png: tf.Tensor) -> tf.Tensor:
    """The number of pixels the JPEG or PNG header states."""

    def png() -> tf.Tensor:
        size = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
        width = size[0] * 2**24 + size[1] * 2**16 + size[2] * 2**8 + size[3]
        height = size[4] * 2**24 + size[5] * 2**16 + size[6] * 2**8 + size[7]
        return width * height

    def jpeg() -> tf.Tensor:
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    return tf.cond(is_png, png, jpeg)


def decode_train_image(
    data: tf.Tensor, image_size: int, name: tf.Tensor | str = "<image bytes>"
) -> tf.Tensor:
    """Encoded bytes -> float32 RGB in [0, 1], (image_size, image_size, 3), all in TF ops.

    The bytes must pass `zoobot.data.images`' rules, checked in the graph: a JPEG or PNG by
    content, at most `MAX_PIXELS` pixels, not all pixels equal (16-bit PNGs are scaled to 8 bits
    by `decode_image`, as `read_image` does); otherwise the pipeline stops with `UNUSABLE_IMAGE`,
    `name` and the reason (a corrupt file stops it with TensorFlow's decoding error). JPEGs are decoded by
    `tf.io.decode_jpeg` (accurate integer IDCT) at the smallest DCT scale 1, 1/2, 1/4 or 1/8 that
    keeps both sides >= `image_size`; PNGs by `tf.io.decode_image`. The image is then resized with
    antialiased bilinear interpolation, as the torch package's training images are resized by
    `read_image` before augmentation.
    """
    is_png = tf.equal(tf.strings.substr(data, 0, len(PNG_MAGIC)), PNG_MAGIC)
    known = tf.logical_or(tf.io.is_jpeg(data), is_png)
    checks = [
        _require(
            tf.not_equal(tf.strings.substr(data, 0, len(magic)), magic),
            name,
            f"not a JPEG or PNG file: {what}",
        )
        for magic, what in OTHER_FORMATS.items()
    ]
    with tf.control_dependencies(checks):
        checks = [_require(known, name, "not a JPEG or PNG file")]
    with tf.control_dependencies(checks):
        large = _require(_pixels(data, is_png) <= MAX_PIXELS, name, "too large")
    with tf.control_dependencies([large]):
        data = tf.identity(data)

    def jpeg() -> tf.Tensor:
        shape = tf.io.extract_jpeg_shape(data)
        short = tf.minimum(shape[0], shape[1])
        fits = [(short + r - 1) // r >= image_size for r in (2, 4, 8)]
        branch = tf.reduce_sum(tf.cast(tf.stack(fits), tf.int32))
        branches = [
            (lambda r=r: tf.io.decode_jpeg(data, 3, ratio=r, dct_method="INTEGER_ACCURATE"))
            for r in (1, 2, 4, 8)
        ]
        return tf.switch_case(branch, branches)

    def other() -> tf.Tensor:
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    signal = tf.logical_not(tf.reduce_all(tf.equal(image, image[:1, :1])))
    problem = "the image carries no signal (every pixel is the same)"
    with tf.control_dependencies([_require(signal, name, problem)]):
        image = tf.identity(image)
    resized = tf.image.resize(image, [image_size, image_size], "bilinear", antialias=True)
    return tf.clip_by_value(resized / 255.0, 0.0, 1.0)


def _seeds(seed: int | None) -> tuple[int | None, int | None, int | None]:
    """Seeds of the file shuffle, the record shuffle and the augmentation stream."""
    if seed is None:
        return None, None, None
    a, b, c = np.random.SeedSequence(seed).generate_state(3, np.uint32)
    return int(a), int(b), int(c)


def train_dataset(
    source: Source | CatalogSource | ShardSource,
    label_cols: LabelCols = None,
    image_size: int = 224,
    channels: int = 3,
    batch_size: int = 128,
    augment: bool | Mapping | AugmentConfig | None = True,
    seed: int | None = None,
    shuffle_buffer: int | None = None,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    *,
    schema: Schema | str | None = None,
    split: str | None = "train",
    splits: Splits = None,
    split_seed: int = 0,
    drop_remainder: bool | None = None,
    deterministic: bool | None = None,
    cycle_length: int | None = None,
    num_parallel_calls: int = AUTOTUNE,
    label_rule: LabelRule | None = None,
    batch_ids: BatchIds | None = None,
) -> tf.data.Dataset:
    """Shuffled, augmented batches `(images, labels)` for Keras `fit`, all in TF ops.

    `split` (default "train") picks the rows as `open_source` does: for a catalog, the split
    `zoobot.data.splits.assign_splits(catalog, splits, split_seed)` gives (the membership
    `zoobot.torch`'s `GalaxyDataModule(seed=split_seed)` uses); `split=None` takes every row.
    `label_cols` default to the schema's, or for a shard folder to all its label columns.
    `augment`: True (torch's `train_transform` defaults), False (decode + resize only), a mapping
    of `AugmentConfig` fields, or an `AugmentConfig`. `seed` fixes the shuffles and every
    augmentation: with it (and `deterministic`, its default then) the batches of each epoch are
    the same from run to run, and differ from epoch to epoch. Catalogs are shuffled whole (paths
    only); shards by file, then through `shuffle_buffer` records (default 4096). The last partial
    batch is dropped when there is more than one batch (`drop_remainder=None`), as torch does.
    Labels are checked by `label_rule` (see `open_source`), images by `decode_train_image`'s
    rules; `batch_ids` records the `id_str` of every batch produced (one Python call per batch,
    after the TF-only work), so `zoobot.tf.training` can name the galaxies of a failing step.
    """
    _check_sizes(image_size, batch_size)
    check_normalisation(mean, std, channels)
    config = AugmentConfig.from_value(augment)
    opened = open_source(
        source,
        label_cols,
        schema=schema,
        split=split,
        splits=splits,
        split_seed=split_seed,
        rule=label_rule,
    )
    if isinstance(opened, ShardSource) and label_cols is None and schema is None:
        stored = tuple(opened.sidecar["label_cols"])
        opened = ShardSource(
            opened.folder, opened.split, opened.files, opened.counts, stored, opened.sidecar
        )
    source = opened
    deterministic = seed is not None if deterministic is None else deterministic
    file_seed, record_seed, augment_seed = _seeds(seed)
    n = len(source)
    if n == 0:
        raise ValueError(f"no rows to train on in split {split!r} of the source")

    if isinstance(source, CatalogSource):
        rows = tf.data.Dataset.from_tensor_slices(
            {
                "data": tf.constant(source.paths.tolist(), tf.string, [n]),
                "labels": tf.constant(source.labels, tf.float32),
                "id_str": tf.constant(source.ids.tolist(), tf.string, [n]),
            }
        ).shuffle(shuffle_buffer or n, seed=record_seed, reshuffle_each_iteration=True)

        def load(row: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            image = decode_train_image(tf.io.read_file(row["data"]), image_size, row["data"])
            return image, row["labels"], row["id_str"]

    else:
        parse = parser(source)
        rows = shuffled_records(source, file_seed, cycle_length, deterministic).shuffle(
            shuffle_buffer or DEFAULT_SHUFFLE_BUFFER,
            seed=record_seed,
            reshuffle_each_iteration=True,
        )

        def load(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            record = parse(serialized)
            name = tf.strings.join(["shard record id_str ", record["id_str"]])
            image = decode_train_image(record["image"], image_size, name)
            return image, record["labels"], record["id_str"]

    drop = n > batch_size if drop_remainder is None else drop_remainder
    batches = rows.map(load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    batches = batches.batch(batch_size, drop_remainder=drop)
    seeds = tf.data.Dataset.random(seed=augment_seed, rerandomize_each_iteration=True).batch(2)
    mean, std = check_normalisation(mean, std, channels)

    def augmented(batch: tuple[tf.Tensor, tf.Tensor, tf.Tensor], pair: tf.Tensor):
        images, labels, ids = batch
        if config is not None:
            x = augment_batch(images, pair, config, channels, image_size)
        else:
            x = mean_greyscale(images) if channels == 1 else images
        return normalise(x, mean, std), labels, ids

    def recorded(index: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor, tf.Tensor]):
        images, labels, ids = batch
        if batch_ids is None:
            return images, labels
        done = tf.numpy_function(batch_ids.record, [index, ids], tf.int64, stateful=True)
        with tf.control_dependencies([done]):
            return tf.identity(images), labels

    n_batches = n // batch_size if drop else math.ceil(n / batch_size)
    dataset = (
        tf.data.Dataset.zip((batches, seeds))
        .map(augmented, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
        .enumerate()
        .map(recorded)  # in order, one batch at a time: batch numbers match what fit consumes
        .apply(tf.data.experimental.assert_cardinality(n_batches))
        .prefetch(AUTOTUNE)
    )
    return dataset.with_options(_options(deterministic))
