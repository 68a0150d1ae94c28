"""Real galaxies for demos and tests: sources detected in the Hubble Deep Field that ships with
scikit-image, cut out as square JPEG stamps with a catalog.

`skimage.data.hubble_deep_field()` is an 8-bit colour rendering (872 x 1000 px) of the HST WFPC2
Hubble Deep Field, not calibrated flux: `flux` and `peak` below are in its stretched grey levels.
Detection runs SExtractor's algorithm (the `sep` library) on the mean of the three channels:
a 64 px mesh background is subtracted, pixels `threshold` x the background RMS above it are
grouped into sources of at least `min_area` pixels and deblended (32 levels, contrast 0.005).
Stars are dropped (`reject_stars`): a source whose core is saturated and whose light shows the
telescope's four diffraction spikes is a bright point source, not a galaxy. Every step is deterministic, so the same versions give the same sources, stamps and catalog.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import map_coordinates

from zoobot.shared.io import atomic_write_bytes, atomic_write_text

try:
    import sep
    from skimage.data import hubble_deep_field
except ImportError as err:
    raise ImportError(
        "the Hubble Deep Field sample needs sep and scikit-image: pip install 'zoobot-data[hubble]'"
    ) from err

BACKGROUND_MESH = 64
DEBLEND_LEVELS = 32
DEBLEND_CONTRAST = 0.005
CATALOG_NAME = "catalog.csv"
# Star rejection. In this 8-bit rendering a bright star's core is clipped at white; the grey level
# (mean of the channels) of a clipped core reaches SATURATION. WFPC2's secondary-mirror spider
# puts four diffraction spikes on every star of the field at the same angle: SPIKE_ANGLE, in
# degrees from the x axis towards y, measured on this image's stars (hdf sources at x, y = 754, 578;
# 253, 166 and 146, 218). All four arms must stand SPIKE_CONTRAST background RMS above the pixels
# beside them: the field's three spiked stars reach 1.5-2.7, its saturated galaxies at most 0.3.
SATURATION = 250.0
SPIKE_ANGLE = 45.0
SPIKE_CONTRAST = 1.0
COLUMNS = ["id_str", "file_loc", "x", "y", "flux", "peak", "a", "b", "theta", "npix", "stamp_px"]


def detect_sources(
    image: np.ndarray,
    threshold: float = 3.0,
    min_area: int = 50,
    stamp_scale: float = 6.0,
    min_stamp: int = 32,
    reject_stars: bool = True,
) -> pd.DataFrame:
    """Detect sources in an RGB image and size a square stamp for each, brightest first.

    Sources with fewer than `min_area` pixels (deblended fragments included) are dropped. A stamp
    reaches `stamp_scale` x the semi-major axis `a` on each side of the centre (at least
    `min_stamp` px across); sources whose stamp would leave the image are dropped, and so are
    stars (`is_star`) unless `reject_stars` is False.
    """
    grey = np.ascontiguousarray(np.asarray(image, dtype=np.float32).mean(axis=2))
    background = sep.Background(grey, bw=BACKGROUND_MESH, bh=BACKGROUND_MESH)
    objects = sep.extract(
        grey - background.back(),
        threshold,
        err=background.globalrms,
        minarea=min_area,
        deblend_nthresh=DEBLEND_LEVELS,
        deblend_cont=DEBLEND_CONTRAST,
    )
    names = ("x", "y", "flux", "peak", "a", "b", "theta")
    sources = pd.DataFrame({name: objects[name].astype(float) for name in names})
    sources["npix"] = objects["npix"].astype(int)
    half = np.maximum(np.ceil(stamp_scale * sources["a"]), min_stamp / 2).astype(int)
    sources["stamp_px"] = 2 * half
    x0, y0 = np.round(sources["x"]).astype(int) - half, np.round(sources["y"]).astype(int) - half
    height, width = grey.shape
    keep = (
        (sources["npix"] >= min_area)
        & (x0 >= 0)
        & (y0 >= 0)
        & (x0 + 2 * half <= width)
        & (y0 + 2 * half <= height)
    )
    if reject_stars:
        keep &= ~is_star(grey, grey - background.back(), background.globalrms, sources)
    sources = sources[keep].sort_values("flux", ascending=False, kind="stable")
    return sources.reset_index(drop=True)


def spike_contrast(
    residual: np.ndarray,
    x: float,
    y: float,
    a: float,
    rms: float,
    angle: float = SPIKE_ANGLE,
    offset: float = 3.0,
) -> float:
    """How far the weakest of four arms at `angle` + k x 90 degrees stands above the pixels on the
    same circle `offset` px to either side of it, averaged from 1.5 to 5 semi-major axes `a` out,
    in units of the background `rms` (best angle within 3 degrees). Diffraction spikes raise all
    four arms; a round profile gives 0, and a galaxy elongated along one arm leaves the two across
    it flat.
    """
    radii = np.arange(1.5 * a, 5.0 * a, 0.5)
    beside = offset / radii  # radians along each circle

    def sample(arms: np.ndarray) -> np.ndarray:
        xs, ys = x + radii * np.cos(arms), y + radii * np.sin(arms)
        return map_coordinates(residual, [ys.ravel(), xs.ravel()], order=1, mode="nearest")

    best = -np.inf
    for tilt in np.arange(-3.0, 3.5, 0.5):
        arms = np.deg2rad(angle + tilt + 90.0 * np.arange(4))[:, None]
        ridge = sample(arms) - 0.5 * (sample(arms - beside) + sample(arms + beside))
        best = max(best, float(ridge.reshape(4, -1).mean(axis=1).min()))
    return best / rms


def is_star(
    grey: np.ndarray,
    residual: np.ndarray,
    rms: float,
    sources: pd.DataFrame,
    saturation: float = SATURATION,
    angle: float = SPIKE_ANGLE,
    min_contrast: float = SPIKE_CONTRAST,
) -> np.ndarray:
    """Which `sources` are stars: a saturated core (a pixel within 2 px of the centroid at
    `saturation` or more in `grey`) with diffraction spikes (`spike_contrast` of the background
    subtracted `residual` at least `min_contrast`). A galaxy's core can saturate too, but it has
    no spikes; an unsaturated star shows no measurable spikes here and is kept."""
    height, width = grey.shape
    stars = np.zeros(len(sources), dtype=bool)
    for n, (x, y, a) in enumerate(sources[["x", "y", "a"]].to_numpy()):
        col, row = round(x), round(y)
        core = grey[max(row - 2, 0) : min(row + 3, height), max(col - 2, 0) : min(col + 3, width)]
        if core.size and core.max() >= saturation:
            stars[n] = spike_contrast(residual, x, y, a, rms, angle) >= min_contrast
    return stars


def cutout(image: np.ndarray, x: float, y: float, stamp_px: int, size: int) -> Image.Image:
    """The stamp_px square around (x, y), resized to size x size with Pillow's LANCZOS filter."""
    half = stamp_px // 2
    left, top = round(x) - half, round(y) - half
    stamp = Image.fromarray(image[top : top + stamp_px, left : left + stamp_px])
    return stamp.resize((size, size), Image.Resampling.LANCZOS)


def hubble_deep_field_sample(
    out_dir: str | os.PathLike,
    size: int = 128,
    threshold: float = 3.0,
    min_area: int = 50,
    stamp_scale: float = 6.0,
    max_sources: int | None = None,
    quality: int = 95,
) -> pd.DataFrame:
    """Write JPEG stamps of the Hubble Deep Field's sources and their catalog; return the catalog.

    Stamps go to `out_dir/images/hdf_NNNN.jpg` (numbered by decreasing flux) and the catalog, with
    `id_str`, `file_loc` (absolute), centroid `x`, `y`, `flux`, `peak`, ellipse `a`, `b`, `theta`
    (radians), `npix` and the stamp side `stamp_px` in original pixels, to `out_dir/catalog.csv`.
    All writes are atomic.
    """
    image = hubble_deep_field()
    sources = detect_sources(image, threshold, min_area, stamp_scale)
    if max_sources is not None:
        sources = sources.head(max_sources)
    images = Path(out_dir).resolve() / "images"
    digits = max(4, math.ceil(math.log10(len(sources) + 1)))
    ids, locs = [], []
    for n, row in enumerate(sources.itertuples(index=False)):
        ids.append(f"hdf_{n:0{digits}d}")
        locs.append(str(images / f"{ids[-1]}.jpg"))
        buffer = io.BytesIO()
        cutout(image, row.x, row.y, row.stamp_px, size).save(buffer, "JPEG", quality=quality)
        atomic_write_bytes(locs[-1], buffer.getvalue())
    catalog = sources.assign(id_str=ids, file_loc=locs)[COLUMNS]
    atomic_write_text(images.parent / CATALOG_NAME, catalog.to_csv(index=False))
    return catalog
