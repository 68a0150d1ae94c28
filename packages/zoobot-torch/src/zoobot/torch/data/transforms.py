"""Image transforms: a deterministic evaluation transform and galaxy + astronomy training augmentations.

Every transform takes the decoded image as `zoobot.data` returns it (uint8, height x width x 3) and
returns a float32 tensor (channels x height x width).

The evaluation arithmetic, which `zoobot.tf` reproduces exactly, is:

1. decode and resize to `image_size` x `image_size` in `zoobot.data` (shared by both frameworks);
2. `x = float32(pixel) / 255` (a true division, not a multiplication by 1/255);
3. if `channels == 1`: `x = (x_r + x_g + x_b) / 3`, the mean over the three channels;
4. `x = (x - mean[c]) / std[c]` per channel (defaults 0 and 1: Zoobot encoders see [0, 1] images);
5. layout channels-first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from zoobot.data.augmentation import AugmentConfig, check_augmentation

DEFAULT_MEAN = (0.0,)
DEFAULT_STD = (1.0,)
FULL = AugmentConfig()  # the "full" augmentation's ranges, shared with zoobot.tf


class ToFloatImage(v2.Transform):
    """uint8 HxWxC array (or CxHxW tensor) to float32 CxHxW in [0, 1], dividing by 255 exactly."""

    _transformed_types = (np.ndarray, torch.Tensor)

    def transform(self, inpt: Any, params: dict[str, Any]) -> torch.Tensor:
        if isinstance(inpt, np.ndarray):
            inpt = torch.from_numpy(np.ascontiguousarray(inpt)).permute(2, 0, 1)
        return inpt.to(torch.float32) / 255.0


class MeanGreyscale(v2.Transform):
    """Mean over channels, keeping a channel axis of 1: how Zoobot makes one-channel images."""

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return inpt.mean(dim=-3, keepdim=True)


class Normalise(v2.Transform):
    """(x - mean) / std per channel; one value broadcasts over all channels."""

    def __init__(
        self,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
        channels: int | None = None,
    ):
        super().__init__()
        for label, values in (("mean", mean), ("std", std)):
            if channels is not None and len(values) not in (1, channels):
                raise ValueError(
                    f"normalisation {label} has {len(values)} values for {channels}-channel "
                    "images: give one per channel, or one for all"
                )
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return (inpt - self.mean) / self.std


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


class PSFBlur(v2.Transform):
    """Convolve with a Moffat PSF of random FWHM (pixels) and beta: seeing worse than the survey's."""

    def __init__(
        self, fwhm: tuple[float, float] = FULL.psf_fwhm, beta: tuple[float, float] = FULL.psf_beta
    ):
        super().__init__()
        self.fwhm, self.beta = fwhm, beta

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"fwhm": _uniform(*self.fwhm), "beta": _uniform(*self.beta)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        fwhm, beta = params["fwhm"], params["beta"]
        alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
        radius = max(1, min(math.ceil(2 * fwhm), min(inpt.shape[-2:]) // 2 - 1))
        r = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = (1 + (r[:, None] ** 2 + r[None, :] ** 2) / alpha**2) ** -beta
        kernel = (kernel / kernel.sum()).expand(inpt.shape[-3], 1, -1, -1)
        padded = F.pad(inpt.unsqueeze(0), [radius] * 4, mode="reflect")
        return F.conv2d(padded, kernel, groups=inpt.shape[-3]).squeeze(0)


class SkyNoise(v2.Transform):
    """Add Gaussian sky noise of random level (fraction of full scale) to each pixel and band."""

    def __init__(self, sigma: tuple[float, float] = FULL.sky_sigma):
        super().__init__()
        self.sigma = sigma

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"sigma": _uniform(*self.sigma)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return (inpt + params["sigma"] * torch.randn_like(inpt)).clamp_(0, 1)


class StretchJitter(v2.Transform):
    """Re-stretch the display: asinh (strength a > 0) or its inverse sinh (a < 0), then a gain.

    `x -> asinh(a x) / asinh(a)` brightens faint structure, `sinh(|a| x) / sinh(|a|)` hides it;
    both keep 0 and 1 fixed and tend to the identity as a -> 0. The gain scales contrast.
    """

    def __init__(
        self,
        strength: float = FULL.stretch_strength,
        gain: tuple[float, float] = FULL.stretch_gain,
    ):
        super().__init__()
        self.strength, self.gain = strength, gain

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        log_gain = _uniform(math.log(self.gain[0]), math.log(self.gain[1]))
        return {"a": _uniform(-self.strength, self.strength), "gain": math.exp(log_gain)}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        a = params["a"]
        if a > 1e-3:
            inpt = torch.asinh(a * inpt) / math.asinh(a)
        elif a < -1e-3:
            inpt = torch.sinh(-a * inpt) / math.sinh(-a)
        return (params["gain"] * inpt).clamp_(0, 1)


class MaskedRegions(v2.Transform):
    """Zero up to `max_regions` random rectangles, from blobs to thin stripes: bad pixels, chip gaps."""

    def __init__(
        self,
        max_regions: int = FULL.mask_max_regions,
        area: tuple[float, float] = FULL.mask_area,
        aspect: tuple[float, float] = FULL.mask_aspect,
    ):
        super().__init__()
        self.max_regions, self.area, self.aspect = max_regions, area, aspect

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = flat_inputs[0].shape[-2:]
        boxes = []
        for _ in range(int(torch.randint(1, self.max_regions + 1, ()))):
            area = _uniform(*self.area) * height * width
            aspect = math.exp(_uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
            h = max(1, min(height, round(math.sqrt(area * aspect))))
            w = max(1, min(width, round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            boxes.append((top, left, h, w))
        return {"boxes": boxes}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        inpt = inpt.clone()
        for top, left, h, w in params["boxes"]:
            inpt[..., top : top + h, left : left + w] = 0
        return inpt


class RandomQuarterTurn(v2.Transform):
    """Rotate by a random multiple of 90 degrees: every pixel is kept exactly, none interpolated."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        return torch.rot90(inpt, params["k"], dims=(-2, -1))


def astro_augmentations(p: float = FULL.astro_p) -> list[v2.Transform]:
    """The astronomy augmentations, each applied with probability `p`."""
    return [
        v2.RandomApply([t], p=p) for t in (PSFBlur(), SkyNoise(), StretchJitter(), MaskedRegions())
    ]


def eval_transform(
    channels: int = 3, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD
) -> v2.Compose:
    """The deterministic transform of the module docstring (the image arrives resized)."""
    steps: list[v2.Transform] = [ToFloatImage()]
    if channels == 1:
        steps.append(MeanGreyscale())
    return v2.Compose([*steps, Normalise(mean, std, channels)])


def train_transform(
    image_size: int,
    channels: int = 3,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    crop_scale: tuple[float, float] = FULL.crop_scale,
    crop_ratio: tuple[float, float] = FULL.crop_ratio,
    greyscale_p: float = FULL.greyscale_p,
    astro_p: float = FULL.astro_p,
) -> v2.Compose:
    """Any-angle rotation, flips, random resized crop, optional greyscale, astronomy augmentations
    (the ranges of `zoobot.data.augmentation.AugmentConfig`, which checks these arguments).

    Galaxies have no preferred orientation or handedness, so rotations and flips keep every label;
    the crop zooms in a little, as Zoobot always has. `astro_p=0` turns the astronomy ones off.
    """
    full = AugmentConfig(
        crop_scale=crop_scale, crop_ratio=crop_ratio, greyscale_p=greyscale_p, astro_p=astro_p
    )
    bilinear = v2.InterpolationMode.BILINEAR
    steps: list[v2.Transform] = [
        ToFloatImage(),
        v2.RandomRotation(180, interpolation=bilinear),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomResizedCrop(
            image_size,
            scale=full.crop_scale,
            ratio=full.crop_ratio,
            interpolation=bilinear,
            antialias=True,
        ),
    ]
    if channels == 1:
        steps.append(MeanGreyscale())
    elif full.greyscale_p > 0:
        steps.append(v2.RandomGrayscale(full.greyscale_p))
    if full.astro_p > 0:
        steps.extend(astro_augmentations(full.astro_p))
    return v2.Compose([*steps, Normalise(mean, std, channels)])


def dihedral_transform(
    channels: int = 3, mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD
) -> v2.Compose:
    """A random one of the square's 8 symmetries (quarter turns, then maybe a left-right mirror, as
    `zoobot.data.augmentation.dihedral`), then `eval_transform`'s steps; the image arrives resized.

    For training on votes: volunteers answer the same whichever way a galaxy is turned, but not
    when it is blurred, noisier, re-stretched or zoomed, so only these exact symmetries keep the
    labels.
    """
    steps: list[v2.Transform] = [ToFloatImage(), RandomQuarterTurn(), v2.RandomHorizontalFlip()]
    if channels == 1:
        steps.append(MeanGreyscale())
    return v2.Compose([*steps, Normalise(mean, std, channels)])


def augmentation_transform(
    augment: str,
    image_size: int,
    channels: int = 3,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> v2.Compose:
    """The training transform of a `zoobot.data.augmentation` name: "dihedral", "full"
    (`train_transform`) or "none" (`eval_transform`)."""
    augment = check_augmentation(augment)
    if augment == "full":
        return train_transform(image_size, channels, mean, std)
    if augment == "dihedral":
        return dihedral_transform(channels, mean, std)
    return eval_transform(channels, mean, std)
