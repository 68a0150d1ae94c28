"""Training augmentations as TF ops on whole batches: the torch package's, with stateless randomness.

`augment_batch(images, seed, config)` takes float32 RGB images in [0, 1], shape (B, H, W, 3), and
returns (B, size, size, channels) in [0, 1] (normalisation comes after, in the pipeline). Every
random draw is a `tf.random.stateless_*` op keyed by `seed` (a shape-(2,) integer tensor) folded
with a fixed stream number, so the same seed and batch give the same output, in eager mode, in a
`tf.function` and inside `tf.data`. There is no `tf.numpy_function` / `tf.py_function` here.

The steps and their parameters (`zoobot.data.augmentation.AugmentConfig`, shared with
`zoobot.torch.data.transforms.train_transform`) are:

1. geometry, one bilinear resampling (`ImageProjectiveTransformV3`, constant 0 fill like
   torchvision's `RandomRotation`): any-angle rotation about the centre, horizontal and vertical
   flips (p = 0.5 each), then a random resized crop (area fraction `crop_scale`, aspect ratio
   `crop_ratio` log-uniform, integer box as torchvision draws it; a box larger than the image is
   clipped to it rather than redrawn) resized to `size`. Composing the four affine maps and
   sampling once is torch's rotate-then-crop with one interpolation instead of two;
2. `channels == 1`: the mean of R, G and B (as evaluation); else greyscale with probability
   `greyscale_p` (ITU-R 601 luma kept in three channels, torchvision's `RandomGrayscale`);
3. astronomy augmentations, each with probability `astro_p` per image, in torch's order and with
   its parameters: `PSFBlur` (Moffat kernel, FWHM `psf_fwhm` pixels, beta `psf_beta`, truncated at
   radius max(1, min(ceil(2 FWHM), size // 2 - 1)), reflect padding), `SkyNoise` (Gaussian, sigma
   `sky_sigma` of full scale, clipped to [0, 1]), `StretchJitter` (asinh for a > 0, sinh for a < 0,
   a uniform in +-`stretch_strength`, then a log-uniform gain in `stretch_gain`, clipped) and
   `MaskedRegions` (1 to `mask_max_regions` rectangles of area fraction `mask_area` and aspect
   `mask_aspect` log-uniform, zeroed).
"""

from __future__ import annotations

import math

import tensorflow as tf

from zoobot.data.augmentation import AugmentConfig
from zoobot.tf.data.transforms import mean_greyscale

__all__ = ["AugmentConfig", "augment_batch", "geometry", "psf_kernels"]

# ITU-R 601-2 luma, the weights of torchvision's rgb_to_grayscale.
LUMA = (0.2989, 0.587, 0.114)


def _stream(seed: tf.Tensor, number: int) -> tf.Tensor:
    """An independent stateless seed for draw `number`."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), number)


def _uniform(seed, number, shape, low=0.0, high=1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, _stream(seed, number), low, high, tf.float32)


def _log_uniform(seed, number, shape, bounds) -> tf.Tensor:
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return tf.exp(_uniform(seed, number, shape, low, high))


def _chosen(seed, number, batch, p: float) -> tf.Tensor:
    """(B,) bool: which images an augmentation of probability `p` applies to."""
    return _uniform(seed, number, [batch]) < p


def _randint(seed, number, shape, high: tf.Tensor) -> tf.Tensor:
    """Uniform integers in [0, high) (float32 result), `high` broadcast to `shape`."""
    return tf.minimum(tf.floor(_uniform(seed, number, shape) * high), high - 1)


def _affine(rows: list[list[tf.Tensor]]) -> tf.Tensor:
    """(B, 3, 3) matrices from a 2 x 3 nested list of (B,) tensors (last row 0 0 1)."""
    zero = tf.zeros_like(rows[0][0])
    top = tf.stack(rows[0], axis=-1)
    middle = tf.stack(rows[1], axis=-1)
    bottom = tf.stack([zero, zero, zero + 1], axis=-1)
    return tf.stack([top, middle, bottom], axis=1)


def geometry(images: tf.Tensor, seed: tf.Tensor, config: AugmentConfig, size: int) -> tf.Tensor:
    """Rotation, flips and random resized crop to `size`, sampled once (bilinear, 0 outside)."""
    batch = tf.shape(images)[0]
    height = tf.cast(tf.shape(images)[1], tf.float32)
    width = tf.cast(tf.shape(images)[2], tf.float32)
    one, zero = tf.ones([batch]), tf.zeros([batch])
    # The crop box, as torchvision's RandomResizedCrop.get_params draws it.
    area = height * width * _uniform(seed, 10, [batch], *config.crop_scale)
    aspect = _log_uniform(seed, 11, [batch], config.crop_ratio)
    w = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, width)
    h = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, height)
    top = _randint(seed, 12, [batch], height - h + 1)
    left = _randint(seed, 13, [batch], width - w + 1)
    scale_x, scale_y = w / size, h / size
    crop = _affine(
        [[scale_x, zero, left + 0.5 * scale_x - 0.5], [zero, scale_y, top + 0.5 * scale_y - 0.5]]
    )
    matrix = crop
    if config.flips:
        v = tf.where(_chosen(seed, 14, batch, 0.5), -one, one)
        h_sign = tf.where(_chosen(seed, 15, batch, 0.5), -one, one)
        vflip = _affine([[one, zero, zero], [zero, v, (1 - v) / 2 * (height - 1)]])
        hflip = _affine([[h_sign, zero, (1 - h_sign) / 2 * (width - 1)], [zero, one, zero]])
        matrix = hflip @ vflip @ matrix
    if config.rotation:
        angle = _uniform(seed, 16, [batch], -math.pi, math.pi)
        cos, sin = tf.cos(angle), tf.sin(angle)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        rotate = _affine(
            [[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy]]
        )
        matrix = rotate @ matrix
    transforms = tf.concat([tf.reshape(matrix, [-1, 9])[:, :6], tf.zeros([batch, 2])], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.constant([size, size], tf.int32),
        fill_value=tf.constant(0.0),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def random_greyscale(x: tf.Tensor, seed: tf.Tensor, p: float) -> tf.Tensor:
    """With probability p per image, ITU-R 601 luma copied to all three channels."""
    grey = tf.reduce_sum(x * tf.constant(LUMA, tf.float32), axis=-1, keepdims=True)
    chosen = _chosen(seed, 20, tf.shape(x)[0], p)
    return tf.where(chosen[:, None, None, None], tf.broadcast_to(grey, tf.shape(x)), x)


def psf_kernels(fwhm: tf.Tensor, beta: tf.Tensor, size: int, max_fwhm: float) -> tf.Tensor:
    """(B, K, K) normalised Moffat kernels, each truncated at its own radius (zero beyond)."""
    limit = max(1, size // 2 - 1)
    big = max(1, min(math.ceil(2 * max_fwhm), limit))
    r = tf.range(-big, big + 1, dtype=tf.float32)
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    alpha = fwhm / (2 * tf.sqrt(2 ** (1 / beta) - 1))
    radius = tf.clip_by_value(tf.math.ceil(2 * fwhm), 1.0, float(limit))
    inside = tf.maximum(tf.abs(r)[:, None], tf.abs(r)[None, :])[None] <= radius[:, None, None]
    kernel = (1 + d2[None] / alpha[:, None, None] ** 2) ** -beta[:, None, None]
    kernel = tf.where(inside, kernel, 0.0)
    return kernel / tf.reduce_sum(kernel, axis=[1, 2], keepdims=True)


def _blur(x: tf.Tensor, kernels: tf.Tensor) -> tf.Tensor:
    """Each image (n, H, W, C) convolved with its own kernel (n, K, K), reflect-padded."""
    n, height, width, channels = (tf.shape(x)[i] for i in range(4))
    k = tf.shape(kernels)[1]
    pad = k // 2
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    stacked = tf.reshape(
        tf.transpose(padded, [1, 2, 0, 3]), [1, height + 2 * pad, width + 2 * pad, -1]
    )
    filters = tf.transpose(kernels, [1, 2, 0])[..., None]  # (K, K, n, 1)
    filters = tf.reshape(tf.broadcast_to(filters, [k, k, n, channels]), [k, k, -1, 1])
    out = tf.nn.depthwise_conv2d(stacked, filters, [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(out, [height, width, n, channels]), [2, 0, 1, 3])


def _apply_to(x: tf.Tensor, chosen: tf.Tensor, fn) -> tf.Tensor:
    """`fn(images, rows)` on the chosen images only (rows: their batch positions), the rest as is.

    Gathering the chosen quarter of a batch (astro_p = 0.25) and scattering it back costs far less
    than transforming every image and selecting with `tf.where`.
    """
    rows = tf.where(chosen)[:, 0]

    def apply() -> tf.Tensor:
        return tf.tensor_scatter_nd_update(x, rows[:, None], fn(tf.gather(x, rows), rows))

    return tf.cond(tf.size(rows) > 0, apply, lambda: tf.identity(x))


def psf_blur(x: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """`PSFBlur`: each chosen image convolved with its own Moffat kernel (reflect padding)."""
    batch = tf.shape(x)[0]
    fwhm = _uniform(seed, 30, [batch], *config.psf_fwhm)
    beta = _uniform(seed, 31, [batch], *config.psf_beta)
    size = min(x.shape[1], x.shape[2])

    def blur(images: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        kernels = psf_kernels(
            tf.gather(fwhm, rows), tf.gather(beta, rows), size, config.psf_fwhm[1]
        )
        return _blur(images, kernels)

    return _apply_to(x, _chosen(seed, 32, batch, config.astro_p), blur)


def sky_noise(x: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """`SkyNoise`: x + sigma * N(0, 1) per pixel and band, clipped to [0, 1]."""
    batch = tf.shape(x)[0]
    sigma = _uniform(seed, 40, [batch], *config.sky_sigma)

    def noisy(images: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        noise = tf.random.stateless_normal(tf.shape(images), _stream(seed, 41), dtype=tf.float32)
        return tf.clip_by_value(images + tf.gather(sigma, rows)[:, None, None, None] * noise, 0, 1)

    return _apply_to(x, _chosen(seed, 42, batch, config.astro_p), noisy)


def _asinh(z: tf.Tensor) -> tf.Tensor:
    """asinh for z >= 0 as log1p(z + z^2 / (1 + sqrt(1 + z^2))): exact near 0, vectorised."""
    return tf.math.log1p(z + z * z / (1 + tf.sqrt(1 + z * z)))


def _sinh(z: tf.Tensor) -> tf.Tensor:
    """sinh for 0 <= z <= a few: (exp(z) - exp(-z)) / 2 via expm1, exact near 0, vectorised."""
    return 0.5 * (tf.math.expm1(z) - tf.math.expm1(-z))


def stretch_jitter(x: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """`StretchJitter`: asinh(a x) / asinh(a) or sinh(|a| x) / sinh(|a|), then a gain, clipped."""
    batch = tf.shape(x)[0]
    a = _uniform(seed, 50, [batch], -config.stretch_strength, config.stretch_strength)
    gain = _log_uniform(seed, 51, [batch], config.stretch_gain)

    def stretch(images: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        a_rows = tf.gather(a, rows)[:, None, None, None]
        strength = tf.where(tf.abs(a_rows) > 1e-3, tf.abs(a_rows), 1.0)
        stretched = tf.where(
            a_rows > 1e-3,
            _asinh(strength * images) / _asinh(strength),
            tf.where(a_rows < -1e-3, _sinh(strength * images) / _sinh(strength), images),
        )
        return tf.clip_by_value(tf.gather(gain, rows)[:, None, None, None] * stretched, 0, 1)

    return _apply_to(x, _chosen(seed, 52, batch, config.astro_p), stretch)


def masked_regions(x: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """`MaskedRegions`: zero 1 to `mask_max_regions` random rectangles per chosen image."""
    batch, regions = tf.shape(x)[0], config.mask_max_regions
    height = tf.cast(tf.shape(x)[1], tf.float32)
    width = tf.cast(tf.shape(x)[2], tf.float32)
    shape = [batch, regions]
    count = _randint(seed, 60, [batch], float(regions)) + 1
    area = _uniform(seed, 61, shape, *config.mask_area) * height * width
    aspect = _log_uniform(seed, 62, shape, config.mask_aspect)
    h = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, height)
    w = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, width)
    top = _randint(seed, 63, shape, height - h + 1)
    left = _randint(seed, 64, shape, width - w + 1)
    active = tf.range(regions, dtype=tf.float32)[None, :] < count[:, None]  # (B, R)

    def mask(images: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
        pick = [tf.gather(v, rows) for v in (top, h, left, w, active)]
        top_r, h_r, left_r, w_r, active_r = pick
        ys = tf.range(height)[None, None, :]
        xs = tf.range(width)[None, None, :]
        in_rows = (ys >= top_r[..., None]) & (ys < (top_r + h_r)[..., None])  # (n, R, H)
        in_cols = (xs >= left_r[..., None]) & (xs < (left_r + w_r)[..., None])  # (n, R, W)
        boxes = in_rows[..., :, None] & in_cols[..., None, :] & active_r[..., None, None]
        keep = 1.0 - tf.cast(tf.reduce_any(boxes, axis=1), tf.float32)  # (n, H, W)
        return images * keep[..., None]

    return _apply_to(x, _chosen(seed, 65, batch, config.astro_p), mask)


def augment_batch(
    images: tf.Tensor,
    seed: tf.Tensor,
    config: AugmentConfig | None = None,
    channels: int = 3,
    size: int | None = None,
) -> tf.Tensor:
    """Augment float32 RGB images in [0, 1] (B, H, W, 3) -> (B, size, size, channels) in [0, 1].

    `seed` is a shape-(2,) integer tensor; `size` defaults to the input's (static) height.
    """
    config = config or AugmentConfig()
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    size = size or images.shape[1]
    if size is None or size < 4:
        raise ValueError(f"augment_batch needs an output size of at least 4 pixels, got {size}")
    seed = tf.convert_to_tensor(seed)
    x = geometry(tf.convert_to_tensor(images, tf.float32), seed, config, size)
    x.set_shape([None, size, size, 3])
    if channels == 1:
        x = mean_greyscale(x)
    elif config.greyscale_p > 0:
        x = random_greyscale(x, seed, config.greyscale_p)
    if config.astro_p > 0:
        x = psf_blur(x, seed, config)
        x = sky_noise(x, seed, config)
        x = stretch_jitter(x, seed, config)
        x = masked_regions(x, seed, config)
    return x
