"""Stretches and FITS/array conversion: ranges, colours, bad inputs reported, resume, atomic writes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from zoobot.data.images import (
    ConversionError,
    Stretch,
    asinh_stretch,
    convert_catalog,
    convert_file,
    is_complete,
    linear_stretch,
    lupton_rgb,
    read_array,
    write_image,
)

RNG = np.random.default_rng(0)


def galaxy(size: int = 48, flux: float = 1.0) -> np.ndarray:
    """A Sersic-like blob on a noisy sky, float32, as a band of a cutout in nanomaggies."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    blob = flux * np.exp(-np.hypot(x, y / 0.6) / 4)
    return (blob + RNG.normal(0, 0.01, (size, size))).astype(np.float32)


def write_fits(path: Path, data: np.ndarray, extension: bool = False) -> Path:
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(data)] if extension else [fits.PrimaryHDU(data)]
    fits.HDUList(hdus).writeto(path)
    return path


# Stretches


@pytest.mark.parametrize("stretch", [asinh_stretch, linear_stretch])
def test_stretches_are_monotonic_and_span_uint8(stretch):
    ramp = np.linspace(-1.0, 10.0, 1000)
    out = stretch(ramp)
    assert out.dtype == np.uint8
    assert np.all(np.diff(out.astype(int)) >= 0)
    assert out.min() == 0 and out.max() == 255


def test_asinh_lifts_faint_pixels_above_linear():
    ramp = np.linspace(0.0, 1.0, 101)
    assert asinh_stretch(ramp, low=0, high=100)[10] > linear_stretch(ramp, low=0, high=100)[10]


@pytest.mark.parametrize("stretch", [asinh_stretch, linear_stretch])
def test_nan_and_inf_become_black_without_changing_other_pixels(stretch):
    image = galaxy()
    holed = image.copy()
    holed[:5, :5] = np.nan
    holed[-1, -1] = np.inf
    out = stretch(holed)
    assert np.all(out[:5, :5] == 0) and out[-1, -1] == 0
    # The percentiles come from the finite pixels only, so the rest barely moves.
    assert np.abs(out[10:40, 10:40].astype(int) - stretch(image)[10:40, 10:40]).max() <= 2


def test_all_nan_image_is_black():
    assert np.all(asinh_stretch(np.full((8, 8), np.nan)) == 0)


def test_constant_image_does_not_divide_by_zero():
    assert asinh_stretch(np.ones((8, 8))).dtype == np.uint8


@pytest.mark.parametrize(("kwargs", "match"), [({"low": 50, "high": 10}, "percentiles")])
def test_bad_percentiles(kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_stretch(galaxy(), **kwargs)


def test_lupton_maps_z_to_red_and_g_to_blue():
    empty = np.zeros((32, 32), np.float32)
    red_only = lupton_rgb(g=empty, r=empty, z=galaxy(32))
    assert red_only.shape == (32, 32, 3) and red_only.dtype == np.uint8
    assert red_only[..., 0].sum() > 0 and red_only[..., 1:].sum() == 0
    blue_only = lupton_rgb(g=galaxy(32), r=empty, z=empty)
    assert blue_only[..., 2].sum() > 0 and blue_only[..., :2].sum() == 0


def test_lupton_treats_nan_as_zero_flux():
    band = galaxy(32)
    band[0, 0] = np.nan
    assert lupton_rgb(band, band, band)[0, 0].tolist() == [0, 0, 0]


def test_lupton_rejects_mismatched_bands():
    with pytest.raises(ValueError, match="one shape"):
        lupton_rgb(galaxy(32), galaxy(32), galaxy(16))


def test_stretch_checks_method_and_bands():
    with pytest.raises(ValueError, match="unknown stretch method 'log'"):
        Stretch(method="log")
    cube = np.stack([galaxy(16)] * 3)
    with pytest.raises(ValueError, match="3 band planes but bands='gr'"):
        Stretch().apply(cube, "gr")
    with pytest.raises(ValueError, match="need bands .* bands='ugi'"):
        Stretch().apply(cube, "ugi")
    with pytest.raises(ValueError, match="lupton stretch needs a colour cube"):
        Stretch(method="lupton").apply(galaxy(16))


def test_custom_rgb_bands():
    cube = np.stack([galaxy(16), np.zeros((16, 16)), np.zeros((16, 16))])  # only "B" has flux
    rgb = Stretch(rgb=("I", "V", "B"), scales=(1.0, 1.0, 1.0)).apply(cube, "BVI")
    assert rgb[..., 2].max() == 255 and rgb[..., 0].max() == 0


# Reading and converting single files


def test_single_band_fits_to_greyscale_png(tmp_path):
    source = write_fits(tmp_path / "one.fits", galaxy(40))
    out = convert_file(source, tmp_path / "one.png", size=64)
    with Image.open(out) as image:
        assert image.mode == "L" and image.size == (64, 64)
        pixels = np.asarray(image)
    assert pixels[32, 32] > pixels[2, 2]  # the galaxy is brighter than the sky


@pytest.mark.parametrize("method", ["lupton", "asinh", "linear"])
def test_grz_cube_to_colour_jpeg(tmp_path, method):
    g, r, z = galaxy(48, 0.2), galaxy(48, 0.5), galaxy(48, 1.0)
    source = write_fits(tmp_path / "cube.fits", np.stack([g, r, z]), extension=True)
    out = convert_file(source, tmp_path / "cube.jpg", bands="grz", stretch=Stretch(method=method))
    with Image.open(out) as image:
        assert image.mode == "RGB" and image.size == (48, 48)
        centre = np.asarray(image)[20:28, 20:28].mean(axis=(0, 1))
    assert centre.max() > 60


def test_band_order_argument_picks_planes(tmp_path):
    source = write_fits(
        tmp_path / "zrg.fits", np.stack([galaxy(32), np.zeros((32, 32)), np.zeros((32, 32))])
    )
    out = convert_file(source, tmp_path / "zrg.png", bands="zrg", stretch=Stretch(method="lupton"))
    pixels = np.asarray(Image.open(out))
    assert pixels[..., 0].max() > 0 and pixels[..., 1:].max() == 0  # z -> red


def test_fits_gz_npy_and_hdu_choice(tmp_path):
    data = galaxy(24)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data * 2), fits.ImageHDU(data)]).writeto(
        tmp_path / "multi.fits.gz"
    )
    np.testing.assert_allclose(read_array(tmp_path / "multi.fits.gz"), data * 2)
    np.testing.assert_allclose(read_array(tmp_path / "multi.fits.gz", hdu=2), data)
    np.save(tmp_path / "a.npy", data.astype(np.float64))
    loaded = read_array(tmp_path / "a.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (24, 24)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.fits", b"SIMPLE  = garbage" * 10, "bad.fits: cannot read FITS file"),
        ("empty.fits", None, "empty.fits: no image data"),
        ("line.npy", np.arange(5.0), r"line.npy: expected a numeric 2-D image or 3-D cube"),
        ("notes.txt", b"hello", "notes.txt: unsupported input; expected FITS"),
    ],
)
def test_unreadable_inputs_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    if name == "empty.fits":
        fits.PrimaryHDU().writeto(path)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_bytes(content)
    with pytest.raises(ConversionError, match=match):
        read_array(path)


def test_unknown_output_suffix(tmp_path):
    with pytest.raises(ConversionError, match="out.tif: unknown output suffix"):
        write_image(Image.new("L", (4, 4)), tmp_path / "out.tif")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def half_then_fail(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_image(Image.new("RGB", (32, 32)), tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []


def test_is_complete_detects_truncation(tmp_path):
    path = write_image(Image.new("RGB", (32, 32), "white"), tmp_path / "ok.jpg")
    assert is_complete(path)
    path.write_bytes(path.read_bytes()[:-10])
    assert not is_complete(path)
    assert not is_complete(tmp_path / "missing.png")


# Catalogs


@pytest.fixture
def catalog(tmp_path) -> pd.DataFrame:
    """Four good cubes and four bad inputs: corrupt, missing, wrong shape, unsupported."""
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for i in range(4):
        cube = np.stack([galaxy(32, f) for f in (0.2, 0.5, 1.0)])
        rows.append((f"good{i}", str(write_fits(src / f"good{i}.fits", cube))))
    (src / "corrupt.fits").write_bytes(b"\x00" * 2880)
    np.save(src / "line.npy", np.arange(3.0))
    (src / "notes.txt").write_text("not an image")
    rows += [
        ("corrupt", str(src / "corrupt.fits")),
        ("missing", str(src / "missing.fits")),
        ("line", str(src / "line.npy")),
        ("notes", str(src / "notes.txt")),
    ]
    return pd.DataFrame(rows, columns=["id_str", "file_loc"]).assign(label=range(len(rows)))


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_inputs_are_reported_and_skipped(catalog, tmp_path, workers, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        result = convert_catalog(catalog, out, size=64, workers=workers, progress=False)
    assert result["status"].tolist() == ["converted"] * 4 + ["failed"] * 4
    assert result["label"].tolist() == catalog["label"].tolist()  # nothing else is lost
    assert result["source_loc"].tolist() == catalog["file_loc"].tolist()
    for loc in result["file_loc"][:4]:
        assert Image.open(loc).size == (64, 64)
    assert result["file_loc"][4:].isna().all()
    report = pd.read_csv(out / "conversion_failures.csv")
    assert report["id_str"].tolist() == ["corrupt", "missing", "line", "notes"]
    errors = dict(zip(report["id_str"], report["error"], strict=True))
    assert "corrupt.fits: cannot read FITS file" in errors["corrupt"]
    assert "missing.fits" in errors["missing"]
    assert "expected a numeric 2-D image" in errors["line"]
    assert "unsupported input" in errors["notes"]
    assert "4 of 8 inputs failed" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [
        ".zoobot-convert.json",
        "conversion_failures.csv",
        *(f"good{i}.jpg" for i in range(4)),
    ]


def test_resume_skips_finished_outputs_and_redoes_truncated_ones(catalog, tmp_path):
    out = tmp_path / "out"
    convert_catalog(catalog, out, progress=False)
    kept, truncated = out / "good0.jpg", out / "good1.jpg"
    stamp = kept.stat().st_mtime_ns
    truncated.write_bytes(truncated.read_bytes()[:-100])
    result = convert_catalog(catalog, out, progress=False)
    assert (
        result["status"].tolist()
        == ["existing", "converted", "existing", "existing"] + ["failed"] * 4
    )
    assert kept.stat().st_mtime_ns == stamp
    assert is_complete(truncated)
    assert convert_catalog(catalog, out, overwrite=True, progress=False)["status"].iloc[0] == (
        "converted"
    )


def test_png_output_and_custom_report_path(catalog, tmp_path):
    report = tmp_path / "elsewhere" / "failures.csv"
    result = convert_catalog(
        catalog.head(2), tmp_path / "png", image_format="png", report=report, progress=False
    )
    assert all(loc.endswith(".png") for loc in result["file_loc"])
    assert pd.read_csv(report).empty


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.drop(columns="file_loc"), r"needs columns \['file_loc'\]"),
        (
            lambda c: c.assign(id_str=["a"] * len(c)),
            r"id_str repeats in \d+ row\(s\): row 0 \(id_str 'a'\), row 1 \(id_str 'a'\)",
        ),
        (lambda c: c.assign(id_str=[f"x/{i}" for i in range(len(c))]), "cannot be used as file"),
    ],
)
def test_catalog_problems_are_named(catalog, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        convert_catalog(change(catalog), tmp_path / "out", progress=False)


def test_unknown_format_and_workers(catalog, tmp_path):
    with pytest.raises(ValueError, match="image_format must be one of"):
        convert_catalog(catalog, tmp_path, image_format="tiff", progress=False)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        convert_catalog(catalog, tmp_path, workers=0, progress=False)
