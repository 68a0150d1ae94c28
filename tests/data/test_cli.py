"""The `zoobot-data` command: every subcommand run in-process on small data made here, its clear
one-line errors and exit codes, and the installed console script.
"""

import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from PIL import Image

from zoobot.data.cli import main
from zoobot.data.shards import read_shards
from zoobot.shared import get_schema

SCHEMA = "decals_dr5"


@pytest.fixture(autouse=True)
def no_network(tmp_path, monkeypatch):
    """Keep every test off the network and out of the user's caches and Hub credentials."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield
    datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A 10-galaxy synthetic survey at 32 px, made once through the CLI."""
    out = tmp_path_factory.mktemp("survey")
    args = ["survey", "10", str(out), "--image-size", "32", "--workers", "1", "--no-progress"]
    assert main([*args, "--schema", SCHEMA, "--seed", "3"]) == 0
    return out


def run(capsys, *argv):
    """(exit code, stdout, stderr) of `zoobot-data argv`, usage errors included."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_survey_writes_images_and_a_catalog_of_the_schema(survey):
    catalog = pd.read_parquet(survey / "catalog.parquet")
    assert len(catalog) == 10
    assert set(get_schema(SCHEMA).label_cols) <= set(catalog.columns)
    assert catalog["id_str"].str.startswith("synth-3-").all()
    for loc in catalog["file_loc"]:
        assert Image.open(survey / loc).size == (32, 32)


def test_validate_summarises_a_good_catalog(capsys, survey):
    code, out, err = run(
        capsys, "validate", survey / "catalog.parquet", "--schema", SCHEMA, "--check-files"
    )
    assert code == 0 and not err
    assert "10 galaxies" in out and f"valid against schema '{SCHEMA}' (34 label columns)" in out
    assert "image files: all found" in out


def test_validate_reports_a_bad_catalog_in_one_message(capsys, tmp_path, survey):
    catalog = pd.read_parquet(survey / "catalog.parquet")
    column = get_schema(SCHEMA).label_cols[2]
    catalog.loc[4, column] = -1
    catalog.to_csv(tmp_path / "bad.csv", index=False)
    code, out, err = run(capsys, "validate", tmp_path / "bad.csv", "--schema", SCHEMA)
    assert code == 1 and not out
    assert err.startswith(
        f"zoobot-data validate: error: catalog failed validation against schema '{SCHEMA}'"
    )
    assert f"column '{column}' is negative in 1 row(s): row 4 (id_str 'synth-3-000004')" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="does not exist|neither"):
        main(["--debug", "validate", str(tmp_path / "missing.csv")])


def test_unknown_schema_and_bad_splits_are_usage_errors(capsys, survey, tmp_path):
    code, _, err = run(capsys, "validate", survey / "catalog.parquet", "--schema", "gz9")
    assert code == 2 and "argument --schema: unknown schema 'gz9'; registered:" in err
    code, _, err = run(capsys, "shards", survey / "catalog.parquet", tmp_path, "--splits", "train")
    assert code == 2 and "expected distinct name=fraction pairs" in err


def test_shards_and_verify_shards(capsys, tmp_path, survey):
    out_dir = tmp_path / "shards"
    code, out, err = run(
        capsys,
        "shards",
        survey / "catalog.parquet",
        out_dir,
        "--schema",
        SCHEMA,
        "--shard-size",
        "3",
        "--splits",
        "train=0.6,validation=0.2,test=0.2",
        "--seed",
        "5",
        "--workers",
        "1",
        "--no-progress",
    )
    assert code == 0, err
    assert "10 galaxies in 4 shards" in out and "train 6, validation 2, test 2" in out
    code, out, err = run(capsys, "verify-shards", out_dir)
    assert code == 0 and "OK, 10 records in 4 shards" in out

    shard = sorted(out_dir.glob("train-*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[40] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out, err = run(capsys, "verify-shards", out_dir)
    assert code == 1 and err.startswith("zoobot-data verify-shards: error: ")
    assert shard.name in err and "Traceback" not in err


def test_shard_errors_are_one_line(capsys, tmp_path, survey):
    code, _, err = run(
        capsys, "shards", survey / "catalog.parquet", tmp_path, "--splits", "train=0.5,test=0.4"
    )
    assert code == 1
    assert err == (
        "zoobot-data shards: error: fractions must sum to 1, got 0.9 from "
        "{'train': 0.5, 'test': 0.4}\n"
    )


def test_hf_dataset_matches_the_shards_splits(capsys, tmp_path, survey):
    catalog = survey / "catalog.parquet"
    common = ["--schema", SCHEMA, "--seed", "9", "--no-progress"]
    code, out, err = run(capsys, "hf-dataset", catalog, tmp_path / "hub", *common)
    assert code == 0, err
    assert "train 8, validation 1, test 1" in out
    loaded = datasets.load_dataset(str(tmp_path / "hub"))
    assert run(capsys, "shards", catalog, tmp_path / "shards", *common, "--workers", "1")[0] == 0
    in_shards = {}
    for galaxy in read_shards(tmp_path / "shards"):
        in_shards.setdefault(galaxy["split"], set()).add(galaxy["id_str"])
    assert in_shards == {name: set(split["id_str"]) for name, split in loaded.items()}

    code, _, err = run(capsys, "hf-dataset", catalog, tmp_path / "hub", *common)
    assert code == 1 and "exists; pass --overwrite to replace it" in err
    code, _, err = run(capsys, "hf-dataset", catalog, tmp_path / "hub", *common, "--overwrite")
    assert code == 0, err


def test_publish_dry_run_lists_the_files(capsys, tmp_path, survey):
    catalog = survey / "catalog.parquet"
    frame = pd.read_parquet(catalog)
    frame["fold"] = ["train"] * 8 + ["test"] * 2
    folds = tmp_path / "folds.parquet"
    frame.to_parquet(folds)
    build = ["--root", survey, "--schema", SCHEMA, "--split-column", "fold", "--no-progress"]
    assert run(capsys, "hf-dataset", folds, tmp_path / "hub", *build)[0] == 0

    code, out, err = run(capsys, "publish", tmp_path / "hub", "me/galaxies", "--dry-run")
    assert code == 0, err
    assert "would upload 3 files" in out and "datasets/me/galaxies@main" in out
    for name in (
        "README.md",
        "data/train-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    ):
        assert name in out

    code, out, err = run(
        capsys, "publish", folds, "me/galaxies", *build, "--revision", "v1", "--dry-run"
    )
    assert code == 0, err
    assert "would upload 3 files" in out and "datasets/me/galaxies@v1" in out

    code, _, err = run(capsys, "publish", tmp_path / "hub", "me/galaxies", "--schema", SCHEMA)
    assert code == 2 and "a folder is published as is" in err
    code, _, err = run(capsys, "publish", catalog, "me/galaxies", "--dry-run")
    assert code == 2 and "needs --schema" in err


def test_publish_offline_fails_with_the_message(capsys, tmp_path, survey):
    build = ["--schema", SCHEMA, "--no-progress"]
    assert run(capsys, "hf-dataset", survey / "catalog.parquet", tmp_path / "hub", *build)[0] == 0
    code, out, err = run(capsys, "publish", tmp_path / "hub", "me/galaxies", "--private")
    assert code == 1 and not out
    assert err.startswith("zoobot-data publish: error: cannot publish 'me/galaxies': ")
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in err and err.count("\n") == 1


def _write_fits(path, data):
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32)).writeto(path)


def test_convert_fits_to_jpeg(capsys, tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    galaxy = np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / 30.0)
    _write_fits(tmp_path / "grey.fits", galaxy + rng.normal(0, 0.01, galaxy.shape))
    _write_fits(tmp_path / "cube.fits", np.stack([galaxy * s for s in (0.5, 1.0, 1.5)]))
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = not a fits file")
    pd.DataFrame(
        {
            "id_str": ["grey", "cube", "broken"],
            "file_loc": ["grey.fits", "cube.fits", "broken.fits"],
        }
    ).to_csv(tmp_path / "cutouts.csv", index=False)

    out_dir = tmp_path / "images"
    code, out, err = run(
        capsys,
        "convert",
        tmp_path / "cutouts.csv",
        out_dir,
        "--size",
        "24",
        "--stretch",
        "asinh",
        "--no-progress",
    )
    assert code == 0, err
    assert "2 converted, 0 already there, 1 failed" in out
    converted = pd.read_csv(out_dir / "catalog.csv")
    assert converted["id_str"].tolist() == ["grey", "cube"]
    assert Image.open(out_dir / "grey.jpg").size == (24, 24)
    assert Image.open(out_dir / "cube.jpg").mode == "RGB"
    failures = pd.read_csv(out_dir / "conversion_failures.csv")
    assert failures["id_str"].tolist() == ["broken"]

    same = ["--size", "24", "--stretch", "asinh", "--no-progress"]
    code, out, _ = run(capsys, "convert", tmp_path / "cutouts.csv", out_dir, *same)
    assert code == 0 and "0 converted, 2 already there, 1 failed" in out
    # other settings: the images of the first run are not passed off as theirs
    code, _, err = run(capsys, "convert", tmp_path / "cutouts.csv", out_dir, "--no-progress")
    assert code == 1 and "other inputs or settings" in err and "pass --overwrite" in err
    code, out, _ = run(
        capsys, "convert", tmp_path / "cutouts.csv", out_dir, "--no-progress", "--overwrite"
    )
    assert code == 0 and "2 converted, 0 already there, 1 failed" in out
    assert Image.open(out_dir / "grey.jpg").size == (40, 40)


def test_convert_fails_when_no_input_has_signal(capsys, tmp_path, folder_state):
    """All-NaN and constant FITS would make blank images: none is written, and with every input
    failed the command says so and exits 1."""
    _write_fits(tmp_path / "nan.fits", np.full((16, 16), np.nan))
    _write_fits(tmp_path / "flat.fits", np.full((16, 16), 3.0))
    _write_fits(tmp_path / "flat_cube.fits", np.stack([np.full((16, 16), v) for v in (1, 2, 3)]))
    catalog = pd.DataFrame(
        {"id_str": ["nan", "flat", "cube"], "file_loc": ["nan.fits", "flat.fits", "flat_cube.fits"]}
    )
    catalog.to_csv(tmp_path / "cutouts.csv", index=False)
    out_dir = tmp_path / "images"
    code, out, err = run(capsys, "convert", tmp_path / "cutouts.csv", out_dir, "--no-progress")
    assert code == 1 and "every input failed" in err
    assert "0 converted, 0 already there, 3 failed" in out
    assert not list(out_dir.glob("*.jpg"))
    failures = pd.read_csv(out_dir / "conversion_failures.csv", keep_default_na=False)
    errors = failures.set_index("id_str")["error"]
    assert "nan.fits: no signal: every pixel is NaN or infinite" in errors["nan"]
    assert "flat.fits: no signal: every finite pixel is 3" in errors["flat"]
    assert "flat_cube.fits: no signal: every band is constant" in errors["cube"]


def test_convert_never_replaces_files_it_did_not_write(capsys, tmp_path, folder_state):
    _write_fits(tmp_path / "a.fits", np.random.default_rng(0).normal(size=(16, 16)))
    pd.DataFrame({"id_str": ["a"], "file_loc": ["a.fits"]}).to_csv(tmp_path / "c.csv", index=False)
    out_dir = tmp_path / "images"
    out_dir.mkdir()
    Image.new("RGB", (8, 8), "red").save(out_dir / "a.jpg")  # someone's image of the same name
    before = folder_state(out_dir)
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "convert", tmp_path / "c.csv", out_dir, "--no-progress", *extra)
        assert code == 1 and "a.jpg; move them away" in err.replace("e.g. ", "")
        assert before.touched() == set()
    (out_dir / "a.jpg").unlink()
    (out_dir / "catalog.csv").write_text("their,catalog\n")
    before = folder_state(out_dir)
    code, _, err = run(capsys, "convert", tmp_path / "c.csv", out_dir, "--no-progress")
    assert code == 1 and "catalog.csv exist(s) and convert did not write them" in err
    assert before.touched() == set()
    (out_dir / "catalog.csv").unlink()
    code, out, _ = run(capsys, "convert", tmp_path / "c.csv", out_dir, "--no-progress")
    assert code == 0 and "1 converted" in out
    code, out, _ = run(capsys, "convert", tmp_path / "c.csv", out_dir, "--no-progress")
    assert code == 0 and "1 already there" in out  # its own catalog.csv is replaced


def test_cutouts_of_the_hubble_deep_field(capsys, tmp_path):
    code, out, err = run(capsys, "cutouts", tmp_path, "--size", "32", "--max-sources", "4")
    assert code == 0, err
    assert f"4 sources: {tmp_path / 'catalog.csv'}" in out
    catalog = pd.read_csv(tmp_path / "catalog.csv", dtype={"id_str": str})
    assert len(catalog) == 4
    assert all(Image.open(loc).size == (32, 32) for loc in catalog["file_loc"])


def test_download_lists_the_registry_and_fails_offline_clearly(capsys, tmp_path):
    code, out, _ = run(capsys, "download", "--list")
    assert code == 0 and "gz2" in out and "Galaxy Zoo DECaLS" in out
    code, out, err = run(capsys, "download", "demo_rings", "--root", tmp_path, "--offline")
    assert code == 1 and not out
    assert err.startswith(
        f"zoobot-data download: error: offline mode: data set 'demo_rings' is missing files in {tmp_path}"
    )
    assert "Traceback" not in err
    code, _, err = run(capsys, "download", "demo_rings")
    assert code == 2 and "give a data set NAME and --root DIR" in err
    code, _, err = run(capsys, "download", "gz99", "--root", tmp_path)
    assert code == 2 and "invalid choice: 'gz99'" in err


@pytest.mark.parametrize(
    "command",
    [
        "download",
        "validate",
        "convert",
        "cutouts",
        "survey",
        "shards",
        "verify-shards",
        "hf-dataset",
        "publish",
    ],
)
def test_every_subcommand_explains_itself_with_an_example(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert f"usage: zoobot-data {command}" in out and f"example:\n  zoobot-data {command}" in out


def test_installed_console_script():
    script = Path(sys.executable).parent / "zoobot-data"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: zoobot-data")
    for command in ("download", "validate", "convert", "cutouts", "survey", "shards", "publish"):
        assert command in result.stdout


def test_validate_refuses_empty_catalogs_and_padded_ids(capsys, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("id_str,file_loc\n")
    code, out, err = run(capsys, "validate", path)
    assert code == 1 and "the catalog has no rows" in err and "valid" not in out
    path.write_text("id_str,file_loc\nA1,a.jpg\nA2 ,b.jpg\n")
    code, _, err = run(capsys, "validate", path)
    assert (
        code == 1
        and "id_str has leading or trailing spaces in 1 row(s): row 1 (id_str 'A2 ')" in err
    )
