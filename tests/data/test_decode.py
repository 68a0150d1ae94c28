"""Fast image reading: the evaluation transform, its reference, tolerances, shapes and bad inputs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg
from astropy.io import fits
from PIL import Image
from skimage.data import hubble_deep_field

from zoobot.data.images import ImageDecodeError, read_image, read_images

TILE = 424


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[Path]:
    """Twelve 424 px JPEG tiles of the Hubble Deep Field at native resolution (real sky)."""
    folder = tmp_path_factory.mktemp("jpegs")
    field = hubble_deep_field()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        y = int(rng.integers(0, field.shape[0] - TILE + 1))
        x = int(rng.integers(0, field.shape[1] - TILE + 1))
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(field[y : y + TILE, x : x + TILE]).save(paths[-1], quality=90)
    return paths


def pil_baseline(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(path).convert(mode).resize((size, size), Image.BILINEAR))


@pytest.mark.parametrize("size", [224, 128, 300, 500])
def test_reference_is_exactly_pil_bilinear(jpegs, size):
    for path in jpegs[:3]:
        np.testing.assert_array_equal(read_image(path, size, fast=False), pil_baseline(path, size))


def test_fast_path_follows_its_definition(jpegs):
    """DCT-domain decode at 5/8 (424 -> 265 px), then OpenCV's exact bilinear to 224."""
    data = jpegs[0].read_bytes()
    assert simplejpeg.decode_jpeg_header(data, min_height=224, min_width=224)[:2] == (265, 265)
    scaled = simplejpeg.decode_jpeg(data, "RGB", min_height=224, min_width=224)
    expected = cv2.resize(scaled, (224, 224), interpolation=cv2.INTER_LINEAR_EXACT)
    np.testing.assert_array_equal(read_image(jpegs[0], 224), expected)


@pytest.mark.parametrize("size", [224, 128, 300])
@pytest.mark.parametrize("channels", [3, 1])
def test_fast_path_is_within_documented_tolerance_of_reference(jpegs, size, channels):
    diff = np.stack(
        [
            np.abs(
                read_image(p, size, channels).astype(int)
                - read_image(p, size, channels, fast=False).astype(int)
            )
            for p in jpegs
        ]
    )
    assert diff.mean() < 1.5
    assert np.percentile(diff, 99.9) < 30
    assert diff.max() < 100


@pytest.mark.parametrize("size", [224, 64, 424, 512])
@pytest.mark.parametrize("channels", [3, 1])
def test_shapes_and_dtype(jpegs, size, channels):
    image = read_image(jpegs[0], size, channels)
    assert image.shape == (size, size, channels)
    assert image.dtype == np.uint8
    assert image.flags.writeable


def test_bytes_and_path_give_the_same_pixels(jpegs):
    data = jpegs[1].read_bytes()
    np.testing.assert_array_equal(read_image(data), read_image(jpegs[1]))
    np.testing.assert_array_equal(read_image(memoryview(data)), read_image(jpegs[1]))


def test_greyscale_fast_path_reads_the_luma_plane(jpegs):
    grey = read_image(jpegs[2], 224, channels=1)
    luma = simplejpeg.decode_jpeg(jpegs[2].read_bytes(), "GRAY", min_height=224, min_width=224)
    expected = cv2.resize(luma, (224, 224), interpolation=cv2.INTER_LINEAR_EXACT)
    np.testing.assert_array_equal(grey[..., 0], expected)
    np.testing.assert_array_equal(
        read_image(jpegs[2], 224, channels=1, fast=False)[..., 0], pil_baseline(jpegs[2], 224, "L")
    )


def test_png_takes_the_reference_transform(jpegs, tmp_path):
    png = tmp_path / "tile.png"
    Image.open(jpegs[0]).save(png)
    np.testing.assert_array_equal(read_image(png, 224), pil_baseline(png, 224))


def test_jpeg_far_larger_than_target_takes_the_reference_transform(jpegs):
    # 424 px to 20 px: even the 1/8 DCT scale leaves 53 px, a reduction over 2x.
    np.testing.assert_array_equal(read_image(jpegs[0], 20), pil_baseline(jpegs[0], 20))


def test_cmyk_jpeg_falls_back_to_pillow(jpegs, tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.open(jpegs[0]).convert("CMYK").save(cmyk, quality=90)
    np.testing.assert_array_equal(read_image(cmyk, 224), pil_baseline(cmyk, 224))


def test_greyscale_jpeg_reads_as_rgb(tmp_path):
    path = tmp_path / "grey.jpg"
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1))).save(path)
    image = read_image(path, 128)
    assert image.shape == (128, 128, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_corrupt_bytes_are_named_in_the_error():
    with pytest.raises(ImageDecodeError, match=r"<image bytes>: not a JPEG or PNG file"):
        read_image(b"not an image at all")


def test_truncated_jpeg_names_the_file(jpegs, tmp_path):
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(jpegs[0].read_bytes()[:2000])
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        read_image(broken)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="nowhere.jpg"):
        read_image(tmp_path / "nowhere.jpg")


@pytest.mark.parametrize(("size", "channels"), [(0, 3), (224, 2)])
def test_bad_arguments(jpegs, size, channels):
    with pytest.raises(ValueError, match="size|channels"):
        read_image(jpegs[0], size, channels)


@pytest.mark.parametrize("workers", [1, 2])
def test_read_images_stacks_read_image(jpegs, workers):
    batch = read_images(jpegs, 160, workers=workers)
    assert batch.shape == (len(jpegs), 160, 160, 3)
    for path, image in zip(jpegs, batch, strict=True):
        np.testing.assert_array_equal(image, read_image(path, 160))


def test_read_images_from_bytes(jpegs):
    buffers = [io.BytesIO(p.read_bytes()).getvalue() for p in jpegs[:2]]
    assert read_images(buffers, 64, channels=1).shape == (2, 64, 64, 1)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header states width x height pixels, with almost no pixel data after it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


def fits_bytes(data: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buffer)
    return buffer.getvalue()


def test_16_bit_png_is_scaled_by_its_high_byte_not_clipped(tmp_path):
    """Pillow's own convert("RGB") clips 16-bit grey at 255 (a 0..65535 ramp would read as
    mostly white); the rule keeps the high byte, as TensorFlow's decode_png does."""
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    sixteen, eight = tmp_path / "deep.png", tmp_path / "high_byte.png"
    Image.fromarray(ramp).save(sixteen)
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(eight)
    assert Image.open(sixteen).mode.startswith("I")
    image = read_image(sixteen, 64)
    np.testing.assert_array_equal(image, read_image(eight, 64))
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) > 50


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a JPEG or PNG file: it is empty"),
        (b"id_str,file_loc\n1,a.jpg\n", "not a JPEG or PNG file: it starts with b'id_str,f'"),
        ("fits", "a FITS file: convert it to JPEG or PNG with `zoobot-data convert`"),
        ("truncated", "cannot decode image"),
        ("grey", "carries no signal \\(every pixel is \\[128, 128, 128\\]\\)"),
        ("red", "carries no signal \\(every pixel is \\[2\\d\\d, \\d, \\d\\]\\)"),
        ("huge", "too large"),
        ("large", "too large: 9500 x 9500 pixels"),
    ],
)
def test_what_is_not_a_usable_image_is_refused_naming_the_file(jpegs, tmp_path, content, message):
    """One set of rules, whatever the file is called: the bytes say what it is."""
    if content == "fits":
        content = fits_bytes(np.ones((32, 32), np.float32))
    elif content == "truncated":
        content = jpegs[0].read_bytes()[:1500]
    elif content in ("grey", "red"):
        buffer = io.BytesIO()
        colour = (128, 128, 128) if content == "grey" else (250, 0, 0)
        Image.new("RGB", (64, 64), colour).save(buffer, "JPEG")
        content = buffer.getvalue()
    elif content == "huge":
        content = png_claiming(30_000, 30_000)
    elif content == "large":
        content = png_claiming(9_500, 9_500)
    path = tmp_path / "galaxy.jpg"
    path.write_bytes(content)
    for fast in (True, False):
        with pytest.raises(ImageDecodeError, match=f"^{path}: .*{message}"):
            read_image(path, 32, fast=fast)
