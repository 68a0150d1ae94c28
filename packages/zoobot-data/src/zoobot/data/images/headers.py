"""What encoded image bytes are: format, size and channels from the header, pixels never decoded.

The one place zoobot-data identifies images: shards record the header, the fast decoder picks its
path by format, and Hugging Face datasets check and name their image files with it.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from zoobot.data.images.errors import ImageDecodeError

# The format is sniffed from the bytes, not the file name: TensorFlow decodes by content too.
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}
OTHER_FORMATS = {b"SIMPLE  =": "a FITS file: convert it to JPEG or PNG with `zoobot-data convert`"}
"""What other files start with, to say what was found instead of an image."""
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
"""The most pixels an image may have (Pillow's decompression-bomb limit, about 9459 x 9459): a
galaxy cutout is far smaller, and a header claiming more is refused before any pixel is decoded."""


def sniff_format(data: bytes) -> str | None:
    """'jpeg' or 'png' from the leading magic bytes, None for anything else."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def pil_format(data: bytes) -> str | None:
    """Pillow's name for the format of image bytes (`JPEG`, `PNG`, `TIFF`...), None if unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def _channels(image: Image.Image) -> int:
    # Count channels as `tf.io.decode_image(channels=0)` returns them: palettes expand to RGB, and a
    # tRNS transparency chunk becomes an alpha channel.
    if image.mode in ("P", "PA"):
        channels = 4 if image.mode == "PA" else 3
    else:
        channels = len(image.getbands())
    if "transparency" in image.info and channels in (1, 3):
        channels += 1
    return channels


def not_an_image(data: bytes) -> str:
    """Why bytes that are not a JPEG or PNG are refused, naming what they are when known."""
    if not data:
        return "not a JPEG or PNG file: it is empty (0 bytes)"
    known = next((what for magic, what in OTHER_FORMATS.items() if data.startswith(magic)), None)
    return f"not a JPEG or PNG file: {known or f'it starts with {data[:8]!r}'}"


def read_header(data: bytes, where: str) -> tuple[str, int, int, int]:
    """(format, height, width, channels) of encoded image bytes; `where` names them in errors.

    Refuses anything but a JPEG or PNG (by content) and images of more than `MAX_PIXELS` pixels.
    """
    image_format = sniff_format(data)
    if image_format is None:
        raise ImageDecodeError(f"{where}: {not_an_image(data)}")
    try:
        # Image.open parses only the header; pixels would be decoded on first access, never here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[image_format]]) as image:
                width, height = image.size
                channels = _channels(image)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{where}: too large: {err}") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(f"{where}: unreadable {image_format.upper()} header: {err}") from err
    if height * width > MAX_PIXELS:
        raise ImageDecodeError(
            f"{where}: too large: {width} x {height} pixels (at most {MAX_PIXELS:,}); "
            "cut out the galaxy first"
        )
    return image_format, height, width, channels
