"""Every kind of unusable image in one catalog, through `predict` of the framework under test and
through `write_shards`: each is listed with its reason (the same list in both frameworks, so the
two agree row for row), every usable image is predicted, and a 16-bit PNG is read by its high byte
(predicted as its 8-bit twin). Training stops at such an image, naming it, in both frameworks."""

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from contract import FAST, SCHEMA
from PIL import Image

from zoobot.data.shards import ShardError, write_shards
from zoobot.shared.tables import read_predictions_full

# id_str -> what the failure list says about it: the one expected list both frameworks must give
UNUSABLE = {
    "empty": "not a JPEG or PNG file: it is empty",
    "truncated": "cannot decode image",
    "text": "not a JPEG or PNG file: it starts with b'id_str,f'",
    "fits": "a FITS file: convert it to JPEG or PNG with `zoobot-data convert`",
    "constant": "carries no signal (every pixel is [90, 90, 90])",
    "huge": "too large",
    "missing": "cannot read image file",
}


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header states width x height pixels, with almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))


@pytest.fixture(scope="module")
def mixed(survey, tmp_path_factory) -> pd.DataFrame:
    """Twelve usable galaxies (two of them a 16-bit PNG and its 8-bit high-byte twin) with every
    kind of unusable image between them, each named `.jpg` or `.png` whatever it holds."""
    folder = tmp_path_factory.mktemp("mixed")
    good = survey.iloc[:10][["id_str", "file_loc"]]
    data = Path(good.file_loc.iloc[0]).read_bytes()
    grey = io.BytesIO()
    Image.new("RGB", (48, 48), (90, 90, 90)).save(grey, "JPEG")
    fits = b"SIMPLE  =                    T / a FITS header" + b" " * 2833
    contents = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "text": b"id_str,file_loc\n1,a.jpg\n",
        "fits": fits,
        "constant": grey.getvalue(),
        "huge": png_claiming(30_000, 30_000),
    }
    rows = []
    for name, content in contents.items():
        path = folder / f"{name}.jpg"
        path.write_bytes(content)
        rows.append((name, str(path)))
    rows.append(("missing", str(folder / "missing.jpg")))
    ramp = np.add.outer(np.arange(48), np.arange(48)) * 700 + 300  # 300 .. 66_100: 16-bit values
    deep = np.clip(ramp, 0, 65535).astype(np.uint16)
    Image.fromarray(deep).save(folder / "sixteen.png")
    Image.fromarray((deep >> 8).astype(np.uint8)).save(folder / "eight.png")
    rows += [("sixteen", str(folder / "sixteen.png")), ("eight", str(folder / "eight.png"))]
    table = pd.DataFrame(rows, columns=["id_str", "file_loc"])
    # interleaved, so unusable rows fall in every batch and chunk
    return pd.concat([good.iloc[:4], table.iloc[:4], good.iloc[4:], table.iloc[4:]]).reset_index(
        drop=True
    )


@pytest.fixture(scope="module")
def tree(fw):
    fw.seed(0)
    return fw.package.ZoobotTree(SCHEMA, "resnet10t")


def test_predict_lists_every_unusable_image_and_predicts_the_rest(fw, mixed, tree, tmp_path):
    files = fw.package.predict(mixed, tree, tmp_path / "p.parquet", **FAST)
    failed = pd.read_csv(files.failed, dtype=str, keep_default_na=False)
    expected = [i for i in mixed["id_str"] if i in UNUSABLE]
    assert failed["id_str"].tolist() == expected  # in catalog order, the same in every framework
    for id_str, file_loc, error in failed.itertuples(index=False):
        assert error.startswith(f"{file_loc}: ") and UNUSABLE[id_str] in error, error
    usable = [i for i in mixed["id_str"] if i not in UNUSABLE]
    full = read_predictions_full(files.predictions)
    assert list(full.id_str) == usable and (files.n_predicted, files.n_failed) == (12, 7)
    assert np.isfinite(full.concentrations).all()
    sixteen, eight = (usable.index(i) for i in ("sixteen", "eight"))
    # the same pixels in two batch positions: only summation order may differ (float32 ulps)
    np.testing.assert_allclose(full.concentrations[sixteen], full.concentrations[eight], rtol=1e-5)


def test_shards_list_every_unusable_image_with_the_same_reasons(mixed, tmp_path):
    present = mixed[mixed["id_str"] != "missing"]
    out = tmp_path / "shards"
    with pytest.raises(ShardError, match=r"6 image\(s\) of the catalog cannot be used") as err:
        write_shards(present, out, shard_size=4, splits={"train": 1.0}, workers=1, progress=False)
    failed = pd.read_csv(out / "failed.csv", dtype=str, keep_default_na=False)
    assert sorted(failed["id_str"]) == sorted(set(UNUSABLE) - {"missing"})
    for row, id_str, file_loc, error in failed.itertuples(index=False):
        assert UNUSABLE[id_str] in error and file_loc in error
        assert re.search(rf"catalog row {row} \(id_str '{id_str}'\)", str(err.value))
    with pytest.raises(ShardError, match=r"file_loc points to no file .*id_str 'missing'"):
        write_shards(mixed, tmp_path / "other", progress=False)


OPTIONS = {
    "epochs": 1,
    "batch_size": 4,
    "image_size": 32,
    "accelerator": "cpu",
    "devices": 1,
    "num_workers": 0,
    "seed": 0,
    "progress": False,
    "splits": {"train": 0.6, "validation": 0.4},
}


@pytest.mark.parametrize("kind", ["constant", "fits"])
def test_training_stops_at_an_unusable_image_naming_it(fw, survey, tmp_path, kind, mixed):
    path = mixed.loc[mixed["id_str"] == kind, "file_loc"].iloc[0]
    catalog = survey.iloc[:7].copy()
    catalog.loc[5, "file_loc"] = path
    with pytest.raises(ValueError, match=re.escape(path) + ".*" + re.escape(UNUSABLE[kind][:12])):
        fw.package.train(catalog, SCHEMA, tmp_path / "run", "resnet10t", **OPTIONS)
    assert not (tmp_path / "run" / "best").exists()
