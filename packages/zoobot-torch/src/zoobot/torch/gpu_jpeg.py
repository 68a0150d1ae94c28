"""JPEG decoding on the GPU (nvJPEG, through `torchvision.io.decode_jpeg(device="cuda")`) for
`predict` and `get_representations` on CUDA devices, behind a capability check.

On a GPU, decoding JPEGs on the CPU is what limits a run. With this path the DataLoader workers
only read each file and look at its header (`split_rows`); the main process decodes the batch's
JPEGs on the GPU in one call, resizes them there and fills them into the batch (`fill_on_device`).
Other images (PNG, CMYK JPEGs, JPEGs too large for `read_image`'s fast path) take `read_image` on
the CPU in the worker; a JPEG nvJPEG refuses is read by `read_image` instead, and one neither can
read is a failed row, as on the CPU path.

Pixels. `read_image` decodes a JPEG in the DCT domain at the smallest M/8 scale that keeps the
target size and resizes the rest with OpenCV's exact bilinear filter; here the JPEG is decoded at
full size and resized with an antialiased bilinear (triangle) filter, as `read_image`'s reference
transform (Pillow) does, then rounded to uint8. `tests/torch/test_gpu_jpeg.py` runs these same
operations on the CPU (libjpeg-turbo's full-size decode) against `read_image` on the synthetic
survey's images and bounds the difference (`PIXEL_TOLERANCE`); nvJPEG's inverse DCT may add a grey
level or two on a GPU, which this machine cannot measure. A run records which decoder it used
(`decoder`), so parts decoded one way are never merged with parts decoded the other.

The check (`gpu_jpeg`; `ZOOBOT_DISABLE=gpu_jpeg` turns it off) probes one small JPEG on the run's
CUDA device. torchvision deprecates its image decoders in favour of TorchCodec; when they are
removed the probe fails and runs decode on the CPU.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F

from zoobot.data.images import ImageDecodeError, read_image
from zoobot.data.images.decode import FAST_COLORSPACES
from zoobot.data.images.headers import sniff_format
from zoobot.models import fast_paths

NAME = "gpu_jpeg"
PIXEL_TOLERANCE = {"mean": 8.0, "p99": 30}
"""Largest mean and 99th-percentile absolute difference (grey levels) from `read_image` measured
on the CPU; see the module docstring."""


def _decode_jpeg():
    """torchvision's decoder, without its deprecation warning (the module docstring says why)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    def decode(data, device):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return decode, encode_jpeg


@functools.cache
def _probe(device: str) -> tuple[bool, str]:
    try:
        decode, encode = _decode_jpeg()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            probe = encode(torch.full((3, 16, 16), 128, dtype=torch.uint8))
        decoded = decode([probe], device)[0]
    except (ImportError, RuntimeError, TypeError, ValueError) as err:
        return False, f"torchvision cannot decode JPEGs on {device} ({type(err).__name__}: {err})"
    if decoded.device != torch.device(device) or decoded.shape != (3, 16, 16):
        return False, f"torchvision's decode on {device} gave {decoded.shape} on {decoded.device}"
    return True, f"torchvision decodes JPEGs on {device} (nvJPEG)"


def gpu_decoding(device: torch.device) -> bool:
    """Whether a run on `device` decodes its JPEGs there: only on CUDA devices (nothing is logged
    for a CPU run), where the probe succeeds and `ZOOBOT_DISABLE` does not name `gpu_jpeg`."""
    if device.type != "cuda":
        return False
    return fast_paths.choose(NAME, *_probe(str(device)))


def decoder(device: torch.device) -> str:
    """The name of the decoder a run on `device` uses, for its manifest."""
    return "nvjpeg" if gpu_decoding(device) else "read_image"


def _fits(data: bytes, size: int) -> bool:
    """Whether `data` is a JPEG to decode on the GPU: colours as `read_image`'s fast path takes."""
    if sniff_format(data) != "jpeg":
        return False
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False
    return colorspace in FAST_COLORSPACES


def split_rows(sources, size: int):
    """In a DataLoader worker: the batch's images for the GPU, others decoded here.

    Returns (uint8 (n_ok, size, size, 3) with the images decoded here and zeros where a JPEG goes,
    indices of the readable rows in `sources`, (index, message) of unreadable rows, and
    (position among the readable rows, encoded bytes as a uint8 tensor) of each JPEG)."""
    images = np.zeros((len(sources), size, size, 3), np.uint8)
    ok, errors, jpegs = [], [], []
    for index, source in enumerate(sources):
        try:
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
        except OSError:
            data = None
        try:
            if data is not None and _fits(data, size):
                jpegs.append((len(ok), torch.frombuffer(bytearray(data), dtype=torch.uint8)))
            else:  # read_image decodes it, or names why it cannot
                images[len(ok)] = read_image(source if data is None else data, size)
        except ImageDecodeError as err:
            errors.append((index, str(err)))
        else:
            ok.append(index)
    return images[: len(ok)], np.array(ok, np.int64), errors, jpegs


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (size, size, 3) uint8: antialiased bilinear, rounded."""
    x = F.interpolate(
        image[None].float(), (size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


def fill_on_device(images: torch.Tensor, jpegs, size: int, device: torch.device):
    """Decode `jpegs` (from `split_rows`) on `device` into `images` ((n, size, size, 3) uint8 on
    `device`). Returns the positions (among `images`) of the JPEGs neither nvJPEG nor `read_image`
    could read, with the reason: rows to drop as failed."""
    if not jpegs:
        return []
    decode, _ = _decode_jpeg()
    positions, data = zip(*jpegs, strict=True)
    try:
        decoded = decode(list(data), device)
    except RuntimeError:  # one bad file fails the whole call: decode one at a time
        decoded = []
        for item in data:
            try:
                decoded.append(decode([item], device)[0])
            except RuntimeError:
                decoded.append(None)
    failed = []
    for position, item, image in zip(positions, data, decoded, strict=True):
        if image is not None:
            images[position] = _resized(image, size)
            continue
        try:
            images[position] = torch.from_numpy(read_image(item.numpy().tobytes(), size))
        except ImageDecodeError as err:
            failed.append((position, str(err)))
    return failed
