"""Training augmentations by name, the same in every framework, and the dihedral symmetries.

- `"dihedral"`: one of the square's 8 symmetries (quarter turns, then maybe a mirror), exact: no
  pixel is interpolated. Volunteers answer the same however a galaxy is turned, but not when it is
  blurred, noisier, re-stretched or zoomed, so this is the augmentation that keeps vote labels
  (the default for decision trees).
- `"full"`: any-angle rotation, flips, a random resized crop of 70-80% of the area (a 1.1-1.2x zoom)
  and the astronomy augmentations (PSF blur, sky noise, stretch, masks): for labels that image
  quality does not change (the default for classifiers and regressors).
- `"none"`: the images as evaluation sees them.

`dihedral` is the reference each framework's fast batch version is tested against; `AugmentConfig`
holds the steps and ranges of "full", which both frameworks apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

AUGMENTATIONS = ("dihedral", "full", "none")
DIHEDRAL = tuple((k, mirror) for mirror in (False, True) for k in range(4))
"""The 8 symmetries as (quarter turns, mirror) pairs; symmetry `i` of a draw in [0, 8) is
`DIHEDRAL[i]`."""


def check_augmentation(name: str) -> str:
    """`name` if it is one of `AUGMENTATIONS`, else an error listing them."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {name!r}")
    return name


def dihedral(image: np.ndarray, k: int, mirror: bool, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """`image` turned `k` quarter turns (numpy's `rot90` direction, from the row axis towards the
    column axis), then mirrored left-right (the column axis reversed) if `mirror`."""
    turned = np.rot90(image, k, axes=axes)
    return np.flip(turned, axis=axes[1]) if mirror else turned


@dataclass(frozen=True)
class AugmentConfig:
    """Which steps of the "full" augmentation apply and their ranges, the same in every framework
    (`zoobot.torch.data.transforms.train_transform`, `zoobot.tf.data.augment.augment_batch`)."""

    rotation: bool = True
    flips: bool = True
    crop_scale: tuple[float, float] = (0.7, 0.8)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    greyscale_p: float = 0.0
    astro_p: float = 0.25
    psf_fwhm: tuple[float, float] = (0.5, 2.5)
    psf_beta: tuple[float, float] = (2.5, 4.5)
    sky_sigma: tuple[float, float] = (0.005, 0.05)
    stretch_strength: float = 3.0
    stretch_gain: tuple[float, float] = (0.8, 1.25)
    mask_max_regions: int = 3
    mask_area: tuple[float, float] = (0.002, 0.03)
    mask_aspect: tuple[float, float] = (1 / 20, 20.0)

    def __post_init__(self):
        for name in ("greyscale_p", "astro_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"{name} must be a probability in [0, 1], got {getattr(self, name)}"
                )
        ranges = ("crop_scale", "crop_ratio", "psf_fwhm", "psf_beta", "sky_sigma", "stretch_gain")
        for name in (*ranges, "mask_area", "mask_aspect"):
            value = getattr(self, name)
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ValueError(f"{name} must be a (low, high) pair with 0 < low <= high: {value}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        if self.crop_scale[1] > 1:
            raise ValueError(
                f"crop_scale is a fraction of the image area, at most 1: {self.crop_scale}"
            )
        if self.mask_max_regions < 1:
            raise ValueError(f"mask_max_regions must be at least 1, got {self.mask_max_regions}")

    @classmethod
    def from_value(
        cls, augment: bool | str | Mapping | AugmentConfig | None
    ) -> AugmentConfig | None:
        """`True` or "full" -> defaults, `False`/`None`/"none" -> no augmentation, a mapping ->
        those fields ("dihedral" is a transform of its own, not a setting of the full one)."""
        if isinstance(augment, AugmentConfig):
            return augment
        if isinstance(augment, str):
            if check_augmentation(augment) == "dihedral":
                raise ValueError("augment='dihedral' is dihedral_transform, not an AugmentConfig")
            augment = augment == "full"
        if augment is None or augment is False:
            return None
        if augment is True:
            return cls()
        if isinstance(augment, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(augment) - known)
            if unknown:
                raise ValueError(
                    f"unknown augmentation option(s) {unknown}; known: {sorted(known)}"
                )
            return cls(**augment)
        raise TypeError(f"augment must be a bool, a mapping or an AugmentConfig, not {augment!r}")
