"""The real-galaxy sample: sources detected in scikit-image's Hubble Deep Field, cut out reproducibly."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.data import hubble_deep_field

from zoobot.data.hubble_deep_field import (
    COLUMNS,
    SPIKE_ANGLE,
    SPIKE_CONTRAST,
    detect_sources,
    hubble_deep_field_sample,
    spike_contrast,
)

# With the defaults (3 sigma, 50 px, stamps of 6 semi-major axes) 273 sources are kept today; the
# range allows for a different JPEG decoder inside scikit-image shifting a few faint detections.
EXPECTED_SOURCES = range(240, 310)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> pd.DataFrame:
    return hubble_deep_field_sample(tmp_path_factory.mktemp("hdf"))


def test_sensible_number_of_sources(sample):
    assert len(sample) in EXPECTED_SOURCES
    assert list(sample.columns) == COLUMNS


def test_catalog_and_stamps(sample):
    assert sample["id_str"].is_unique
    assert sample["id_str"].iloc[0] == "hdf_0000"
    assert sample["flux"].is_monotonic_decreasing
    assert (sample["npix"] >= 50).all() and (sample["stamp_px"] >= 32).all()
    assert (sample["a"] >= sample["b"]).all()
    for loc in sample["file_loc"].iloc[[0, len(sample) // 2, -1]]:
        with Image.open(loc) as image:
            assert image.format == "JPEG" and image.size == (128, 128) and image.mode == "RGB"


def test_stamps_stay_inside_the_image(sample):
    height, width = hubble_deep_field().shape[:2]
    half = sample["stamp_px"] // 2
    assert (np.round(sample["x"]) - half >= 0).all() and (np.round(sample["y"]) - half >= 0).all()
    assert (np.round(sample["x"]) + half <= width).all()
    assert (np.round(sample["y"]) + half <= height).all()


def test_catalog_file_matches_the_returned_catalog(sample):
    folder = Path(sample["file_loc"].iloc[0]).parent.parent
    written = pd.read_csv(folder / "catalog.csv", dtype={"id_str": str})
    pd.testing.assert_frame_equal(written, sample, check_dtype=False)


def test_deterministic(sample, tmp_path):
    again = hubble_deep_field_sample(tmp_path, max_sources=25)
    pd.testing.assert_frame_equal(
        again.drop(columns="file_loc"), sample.head(25).drop(columns="file_loc")
    )
    for first, second in zip(sample["file_loc"].head(25), again["file_loc"], strict=True):
        assert Path(first).read_bytes() == Path(second).read_bytes()


def test_stricter_detection_finds_fewer_sources():
    image = hubble_deep_field()
    assert len(detect_sources(image, threshold=5.0, min_area=100)) < EXPECTED_SOURCES.start


@pytest.mark.parametrize("missing", ["sep", "skimage.data"])
def test_without_the_extra_the_error_names_it(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # what `import` sees when it is not installed
    monkeypatch.delitem(sys.modules, "zoobot.data.hubble_deep_field")
    with pytest.raises(ImportError, match=r"pip install 'zoobot-data\[hubble\]'"):
        importlib.import_module("zoobot.data.hubble_deep_field")


# -- star rejection, on made images --------------------------------------------------------------
def _made_field(star: bool = True) -> np.ndarray:
    """A 400 px field (sky 12 +- 3 grey levels) with a saturated star carrying four diffraction
    spikes at SPIKE_ANGLE, a saturated galaxy elongated along one spike direction (the hardest
    case: its light lies on two arms) and a round saturated galaxy; clipped to 8 bits."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:400, 0:400].astype(np.float64)
    field = 12.0 + rng.normal(0.0, 3.0, x.shape)
    if star:
        dx, dy = x - 100, y - 100
        r = np.hypot(dx, dy)
        field += 4000.0 * np.exp(-0.5 * (r / 2.0) ** 2) + 400.0 / (1 + (r / 3.0) ** 2) ** 1.5
        for k in range(4):
            t = np.deg2rad(SPIKE_ANGLE + 90.0 * k)
            along = dx * np.cos(t) + dy * np.sin(t)
            across = -dx * np.sin(t) + dy * np.cos(t)
            field += np.where(along > 0, 60.0 * np.exp(-along / 25.0), 0.0) * np.exp(
                -0.5 * (across / 0.8) ** 2
            )
    t = np.deg2rad(SPIKE_ANGLE)
    dx, dy = x - 290, y - 110
    major, minor = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
    field += 600.0 * np.exp(-np.hypot(major / 8.0, minor / 2.5))
    field += 500.0 * np.exp(-np.hypot(x - 200, y - 290) / 6.0)
    grey = np.clip(field, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _near(sources: pd.DataFrame, x: float, y: float) -> bool:
    return bool((np.hypot(sources["x"] - x, sources["y"] - y) < 3).any())


def test_a_saturated_star_with_spikes_is_rejected_and_saturated_galaxies_kept():
    image = _made_field()
    everything = detect_sources(image, reject_stars=False)
    assert all(_near(everything, x, y) for x, y in ((100, 100), (290, 110), (200, 290)))
    kept = detect_sources(image)
    assert not _near(kept, 100, 100)
    assert _near(kept, 290, 110) and _near(kept, 200, 290)
    assert len(kept) == len(everything) - 1


def test_spike_contrast_separates_the_star_from_an_elongated_galaxy():
    grey = _made_field().mean(axis=2).astype(np.float32)
    residual, rms = grey - 12.0, 3.0  # the made sky level and noise
    star = spike_contrast(residual, 100, 100, 5.0, rms)
    galaxy = spike_contrast(residual, 290, 110, 5.0, rms)
    round_galaxy = spike_contrast(residual, 200, 290, 5.0, rms)
    assert star > 2 * SPIKE_CONTRAST
    assert galaxy < 0.5 * SPIKE_CONTRAST and abs(round_galaxy) < 0.5 * SPIKE_CONTRAST
    # the star's spikes are at SPIKE_ANGLE: looked for 20 degrees away they are not found
    assert spike_contrast(residual, 100, 100, 5.0, rms, angle=SPIKE_ANGLE + 20) < SPIKE_CONTRAST


def test_the_hubble_deep_field_stars_are_not_in_the_sample(sample):
    """The field's three saturated stars with spikes (checked by eye) are detected, then dropped."""
    stars = ((754.3, 577.9), (253.5, 166.1), (146.3, 217.6))
    everything = detect_sources(hubble_deep_field(), reject_stars=False)
    assert all(_near(everything, x, y) for x, y in stars)
    assert not any(_near(sample, x, y) for x, y in stars)
    assert len(everything) - len(detect_sources(hubble_deep_field())) == len(stars)
