"""Fast decode + resize of galaxy images into uint8 arrays: Zoobot's evaluation transform.

Both framework packages read images with `read_image`, so their inputs are identical, and the shard
and Hugging Face writers check images with it. What it accepts is one set of rules:

- the format is read from the bytes, not the file name: JPEG or PNG, nothing else (a FITS file
  named `.jpg` is refused, with a hint to `zoobot-data convert` it);
- at most `MAX_PIXELS` pixels, as the header states (before anything is decoded);
- a 16-bit PNG keeps the high byte of each pixel (0..65535 scaled to 0..255, as TensorFlow's
  `decode_png` + `convert_image_dtype` do), never clipped to 255;
- a truncated or corrupt file is an error;
- an image whose pixels are all equal after decoding and resizing carries no signal (a blank
  cutout, an all-NaN FITS written as a black JPEG) and is an error, never a prediction.

Every failure is an `ImageDecodeError` naming the file. Decoding itself (`fast=True`, the default):

1. A JPEG is decoded by libjpeg-turbo (accurate integer IDCT, smooth chroma upsampling) in the DCT
   domain at the smallest scale M/8, M = 1..8, that keeps both sides >= `size`; each side becomes
   ceil(side * M / 8). A 424 px JPEG decodes to 265 px for size 224 (M = 5) and to 159 px for 128.
2. The decoded image is resized to size x size by bilinear interpolation, OpenCV
   `INTER_LINEAR_EXACT`: pixel centres aligned (source x = (x + 0.5) * in / out - 0.5), edges
   replicated, bit-exact fixed point on every platform. After step 1 less than a 2x reduction is
   left (1.18x for 424 -> 224), so the two taps per axis still see every source pixel.

Every other input takes the reference transform, which `fast=False` gives for any input:
`Image.open(src).convert("RGB").resize((size, size), Image.BILINEAR)` (Pillow's antialiased
triangle filter; "L" instead of "RGB" for `channels=1`; 16-bit greyscale by its high byte). That
covers PNG, JPEGs not stored as YCbCr or grey (CMYK, whose colour conversion differs between
decoders), and JPEGs so large or elongated that a reduction of 2x or more would remain after step 1
(a side over about 16x the target).

On 424 px JPEGs of real sky (Hubble Deep Field tiles) the fast path differs from the reference by
about 1.2 grey levels on average, under 30 at the 99.9th percentile, and up to ~90 on single pixels
of bright point sources, which the DCT-domain reduction keeps sharper than Pillow's triangle
filter; `tests/data/test_decode.py` pins these tolerances. For `channels=1` the fast path takes the
JPEG's stored luma plane, the reference Pillow's ITU-R 601 luma of the decoded RGB.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from zoobot.data.images.errors import ImageDecodeError
from zoobot.data.images.headers import read_header

CHECK_SIZE = 64
"""Pixels per side at which writers check an image (`check_image`): decoding at a reduced JPEG
scale reads every byte of the file, at a fraction of the cost of full size."""
# Colour models whose libjpeg-turbo RGB/grey output matches Pillow's; CMYK and others do not.
FAST_COLORSPACES = ("YCbCr", "Gray")
ImageSource = str | os.PathLike | bytes | bytearray | memoryview


def read_image(
    source: ImageSource, size: int = 224, channels: int = 3, fast: bool = True
) -> np.ndarray:
    """Decode a JPEG/PNG (path or encoded bytes) and resize it to uint8 (size, size, channels)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    name, data = _load(source)
    return decode_image(data, name, size, channels, fast)


def decode_image(
    data: bytes, name: str, size: int = 224, channels: int = 3, fast: bool = True
) -> np.ndarray:
    """`read_image` of encoded bytes, `name` naming them in errors (the file they came from)."""
    image_format, _, _, _ = read_header(data, name)
    image = _fast_jpeg(data, size, channels) if fast and image_format == "jpeg" else None
    if image is None:
        image = _reference(data, name, size, channels)
    if (image == image[0, 0]).all():
        raise ImageDecodeError(
            f"{name}: the image carries no signal (every pixel is {image[0, 0].tolist()}); a "
            "blank cutout or an image converted from empty (NaN or constant) data"
        )
    return image


def read_images(
    sources: Sequence[ImageSource],
    size: int = 224,
    channels: int = 3,
    fast: bool = True,
    workers: int = 1,
) -> np.ndarray:
    """Read many images into one uint8 (N, size, size, channels) array, with `workers` threads.

    Decoding and resizing release the GIL, so threads scale across cores.
    """
    batch = np.empty((len(sources), size, size, channels), dtype=np.uint8)

    def fill(index: int) -> None:
        batch[index] = read_image(sources[index], size, channels, fast)

    if workers <= 1:
        for index in range(len(sources)):
            fill(index)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill, range(len(sources))))
    return batch


def check_image(data: bytes, name: str) -> tuple[str, int, int, int]:
    """(format, height, width, channels) of image bytes that pass every rule of this module (read
    as `read_image` reads them at `CHECK_SIZE`), else `ImageDecodeError` naming `name`: what the
    shard and Hugging Face writers store, so they hold only images `predict` can read."""
    header = read_header(data, name)
    decode_image(data, name, CHECK_SIZE)
    return header


def _load(source: ImageSource) -> tuple[str, bytes]:
    """A name for error messages and the encoded bytes of `source`."""
    if isinstance(source, bytes | bytearray | memoryview):
        return "<image bytes>", bytes(source)
    path = Path(source)
    try:
        return str(path), path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read image file ({exc})") from exc


def _fast_jpeg(data: bytes, size: int, channels: int) -> np.ndarray | None:
    """Steps 1-2 of the transform, or None when the input must take the reference transform."""
    try:
        height, width, stored, _ = simplejpeg.decode_jpeg_header(
            data, min_height=size, min_width=size
        )
        if stored not in FAST_COLORSPACES or max(height, width) >= 2 * size:
            return None
        colorspace = "GRAY" if channels == 1 else "RGB"
        decoded = simplejpeg.decode_jpeg(data, colorspace, min_height=size, min_width=size)
    except ValueError:  # libjpeg-turbo cannot read it: the reference decodes it or names the error
        return None
    if decoded.shape[:2] != (size, size):
        decoded = cv2.resize(decoded, (size, size), interpolation=cv2.INTER_LINEAR_EXACT)
    return decoded.reshape(size, size, channels)


def _reference(data: bytes, name: str, size: int, channels: int) -> np.ndarray:
    """The reference transform: Pillow decode, convert, antialiased bilinear resize."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG", "PNG"]) as image:
            converted = _eight_bit(image).convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(
            f"{name}: cannot decode image ({exc}); expected a JPEG or PNG file"
        ) from exc
    resized = converted.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(resized).reshape(size, size, channels)


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (Pillow modes I;16* and I) as 8-bit L by its high byte; else as it is.

    Pillow's own `convert` clips such pixels at 255; 16-bit colour PNGs already load as 8-bit RGB
    from their high bytes.
    """
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image
    pixels = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8), "L")
