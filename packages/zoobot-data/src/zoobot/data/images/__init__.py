"""Images: flux-to-8-bit stretches, FITS/array conversion, and fast decoding for the frameworks."""

from zoobot.data.images.convert import (
    ConversionError,
    array_to_image,
    convert_catalog,
    convert_file,
    is_complete,
    read_array,
    write_image,
)
from zoobot.data.images.decode import check_image, decode_image, read_image, read_images
from zoobot.data.images.errors import ImageDecodeError
from zoobot.data.images.headers import pil_format, read_header, sniff_format
from zoobot.data.images.stretch import (
    DECALS_RGB,
    DECALS_SCALES,
    Stretch,
    asinh_stretch,
    clip_to_unit,
    linear_stretch,
    lupton_rgb,
    percentile_interval,
    to_uint8,
)

__all__ = [
    "DECALS_RGB",
    "DECALS_SCALES",
    "ConversionError",
    "ImageDecodeError",
    "Stretch",
    "array_to_image",
    "asinh_stretch",
    "check_image",
    "clip_to_unit",
    "convert_catalog",
    "convert_file",
    "decode_image",
    "is_complete",
    "linear_stretch",
    "lupton_rgb",
    "percentile_interval",
    "pil_format",
    "read_array",
    "read_header",
    "read_image",
    "read_images",
    "sniff_format",
    "to_uint8",
    "write_image",
]
