"""The deterministic evaluation transform: `zoobot.data`'s decode + resize, then torch's arithmetic.

Decode and resize are `zoobot.data.images.read_image`, the canonical step both frameworks share,
run inside the `tf.data` graph through `tf.numpy_function`. This is the one deliberate use of
Python in zoobot.tf's pipelines: `read_image` decodes a JPEG with libjpeg-turbo directly at a
DCT-domain scale M/8 (5/8 for 424 px -> 224) and then resizes with OpenCV's bit-exact bilinear;
`tf.io.decode_jpeg` only offers the scales 1, 1/2, 1/4 and 1/8 and TF's resizers round
differently, so no TF op sequence reproduces those pixels. `read_image` releases the GIL while
decoding and resizing, so a parallel `map` over it scales across cores.

The arithmetic after it is the torch package's (`zoobot.torch.data.transforms`), in TF ops, bit for bit:

1. `x = float32(pixel) / 255` (a true division);
2. if `channels == 1`: `x = (x_r + x_g + x_b) / 3` (the RGB image is read, then averaged, exactly
   as torch does; `read_image(..., channels=1)`'s stored luma would differ);
3. `x = (x - mean[c]) / std[c]` (one value broadcasts over all channels);
4. channels-last `(..., size, size, channels)` float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from zoobot.data.augmentation import DIHEDRAL
from zoobot.data.images import ImageDecodeError, read_image

logger = logging.getLogger(__name__)

DEFAULT_MEAN = (0.0,)
DEFAULT_STD = (1.0,)


def check_normalisation(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """float32 mean and std, one per channel or one for all (the torch package's messages)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    for label, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ValueError(
                f"normalisation {label} has {len(values)} values for {channels}-channel "
                "images: give one per channel, or one for all"
            )
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def to_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 pixels to float32 in [0, 1], dividing by 255 exactly (not multiplying by 1/255)."""
    return tf.math.truediv(tf.cast(images, tf.float32), tf.constant(255.0, tf.float32))


def mean_greyscale(x: tf.Tensor) -> tf.Tensor:
    """((r + g) + b) / 3 over the last axis, keeping it (size 1): Zoobot's one-channel images."""
    total = x[..., 0:1] + x[..., 1:2] + x[..., 2:3]
    return tf.math.truediv(total, tf.constant(3.0, tf.float32))


def normalise(x: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """(x - mean) / std per channel (last axis), in float32; skipped when it is the identity.

    With mean 0 and std 1 (Zoobot's default) `(x - 0) / 1` is `x` exactly, so no work is done.
    """
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if not mean.any() and (std == 1).all():
        return x
    return tf.math.truediv(x - tf.constant(mean), tf.constant(std))


def eval_transform(
    images: tf.Tensor,
    channels: int = 3,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> tf.Tensor:
    """uint8 RGB (..., H, W, 3) as `read_image` returns them -> float32 (..., H, W, channels)."""
    mean, std = check_normalisation(mean, std, channels)
    x = to_float(images)
    if channels == 1:
        x = mean_greyscale(x)
    return normalise(x, mean, std)


def dihedral_transform(
    images: tf.Tensor,
    seed: tf.Tensor,
    channels: int = 3,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> tf.Tensor:
    """Each square RGB image of a batch (B, H, H, 3), uint8 or float32 in [0, 1], through a random
    one of the square's 8 symmetries (`zoobot.data.augmentation.DIHEDRAL`: quarter turns, then
    maybe a left-right mirror) drawn from the shape-(2,) `seed`, then `eval_transform`'s steps.

    For training on votes: only these exact symmetries keep what volunteers would answer (see
    `zoobot.data.augmentation`). All four turns of the batch are made and each image's gathered,
    as `tf.image.rot90` turns a whole batch by one `k`.
    """
    mean, std = check_normalisation(mean, std, channels)
    images = tf.convert_to_tensor(images)
    x = to_float(images) if images.dtype == tf.uint8 else tf.cast(images, tf.float32)
    batch = tf.shape(x)[0]
    stream = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 70)
    draws = tf.random.stateless_uniform([batch], stream, 0, len(DIHEDRAL), tf.int32)
    turns = tf.stack([tf.image.rot90(x, k) for k in range(4)])  # (4, B, H, W, 3)
    turned = tf.gather_nd(turns, tf.stack([draws % 4, tf.range(batch)], axis=1))
    mirrored = tf.where((draws >= 4)[:, None, None, None], tf.reverse(turned, axis=[2]), turned)
    if channels == 1:
        mirrored = mean_greyscale(mirrored)
    return normalise(mirrored, mean, std)


def _reader(image_size: int, strict: bool):
    """The Python side of `read_image_op`: uint8 image and error text ('' when it was read)."""

    def read(source: np.ndarray, is_path: np.ndarray) -> tuple[np.ndarray, bytes]:
        data = source.item() if isinstance(source, np.ndarray) else source
        target = data.decode("utf-8", "surrogateescape") if bool(is_path) else data
        try:
            return read_image(target, image_size), b""
        except ImageDecodeError as err:
            if strict:
                raise
            logger.debug("unreadable image: %s", err)
            return np.zeros((image_size, image_size, 3), np.uint8), str(err).encode()

    return read


def read_image_op(
    source: tf.Tensor, image_size: int, is_path: bool, strict: bool = False
) -> tuple[tf.Tensor, tf.Tensor]:
    """`read_image(source, image_size)` in the graph: (uint8 (size, size, 3), error tf.string).

    `source` is a scalar tf.string: a file path (`is_path=True`) or the encoded bytes. An image that
    cannot be read gives an all-zero image and its error message (empty when it was read); with
    `strict=True` the error is raised instead and stops the pipeline, naming the file.
    """
    image, error = tf.numpy_function(
        _reader(image_size, strict),
        [source, tf.constant(is_path)],
        [tf.uint8, tf.string],
        stateful=False,
        name="zoobot_read_image",
    )
    image.set_shape((image_size, image_size, 3))
    error.set_shape(())
    return image, error
