"""Training augmentations by name, the same in every framework, and the dihedral symmetries.

- `"dihedral"`: one of the square's 8 symmetries (quarter turns, then maybe a mirror), exact: no
  pixel is interpolated. Volunteers answer the same however a galaxy is turned, but not when it is
  blurred, noisier, re-stretched or zoomed, so this is the augmentation that keeps vote labels
  (the default for decision trees).
- `"full"`: any-angle rotation, flips, a random resized crop of 70-80% of the area (a 1.1-1.2x zoom)
  and the astronomy augmentations (PSF blur, sky noise, stretch, masks): for labels that image
  quality does not change (the default for classifiers and regressors).
- `"none"`: the images as evaluation sees them.

`dihedral` is the reference each framework's fast batch version is tested against.
"""

from __future__ import annotations

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
