"""Records of `zoobot-data` TFRecord shards with `tf.data`: reading, parsing, label features.

Every record is one `tf.train.Example` (DESIGN.md contract 4): `image` (the encoded bytes as
stored), `format`, `height`, `width`, `channels`, `id_str` and one float per label column; the
sidecar's `features` names each feature's kind, and the parser is built from it. Only the
features a pipeline needs are parsed (`image`, `id_str` and the requested labels); `id_str` is
always a tf.string.
"""

from __future__ import annotations

import tensorflow as tf

from zoobot.data.inputs import ShardSource
from zoobot.data.shards import ShardError

KINDS = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
# The TFRecord read buffer per file: large sequential reads, few syscalls.
READ_BUFFER = 4 << 20


def feature_spec(source: ShardSource, names: list[str] | None = None) -> dict:
    """`tf.io.parse_single_example` features for `names` (default image, id_str and the labels)."""
    kinds = source.sidecar["features"]
    names = ["image", "id_str", *source.label_cols] if names is None else names
    spec = {}
    for name in names:
        kind = kinds.get(name)
        if kind not in KINDS:
            raise ShardError(
                f"{source.folder}: the sidecar gives feature {name!r} kind {kind!r}, "
                f"not one of {list(KINDS)}"
            )
        spec[name] = tf.io.FixedLenFeature([], KINDS[kind])
    return spec


def parser(source: ShardSource):
    """A function: serialized record -> {"image": bytes, "id_str": string, "labels": (L,) float32}."""
    spec = feature_spec(source)
    label_cols = list(source.label_cols)

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_single_example(serialized, spec)
        if label_cols:
            labels = tf.stack([features[c] for c in label_cols])
        else:
            labels = tf.zeros([0], tf.float32)
        return {"image": features["image"], "id_str": features["id_str"], "labels": labels}

    return parse


def ordered_records(source: ShardSource) -> tf.data.Dataset:
    """Serialized records one file after another, in sidecar order: what `read_shards` yields."""
    if not source.files:
        return tf.data.Dataset.from_tensor_slices(tf.constant([], tf.string))
    return tf.data.TFRecordDataset(list(source.files), buffer_size=READ_BUFFER)


def shuffled_records(
    source: ShardSource,
    seed: int | None,
    cycle_length: int | None = None,
    deterministic: bool = True,
) -> tf.data.Dataset:
    """Records for training: file order reshuffled each epoch, `cycle_length` files read at once."""
    files = tf.data.Dataset.from_tensor_slices(tf.constant(list(source.files), tf.string))
    if len(source.files) > 1:
        files = files.shuffle(len(source.files), seed=seed, reshuffle_each_iteration=True)
    cycle = max(1, min(cycle_length or 8, len(source.files)))
    parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": deterministic}
    return files.interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER),
        cycle_length=cycle,
        block_length=1,
        **(parallel if cycle > 1 else {}),
    )
