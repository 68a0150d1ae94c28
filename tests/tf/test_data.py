"""zoobot.tf.data evaluation pipeline: exact arithmetic, catalogs vs shards, splits, failures."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from zoobot.data.images import read_image
from zoobot.data.shards import read_shards, write_shards
from zoobot.data.splits import assign_splits, split_tables
from zoobot.shared import get_schema
from zoobot.tf.data import (
    LabelColumnError,
    eval_dataset,
    eval_transform,
    open_source,
)

SIZE = 32
LABELS = ["smooth", "featured"]


def galaxy_pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth elliptical blob with noise, uint8 RGB: compresses like a galaxy cutout."""
    yy, xx = np.mgrid[:height, :width] - [[[height / 2]], [[width / 2]]]
    q, scale = rng.uniform(0.4, 1), rng.uniform(4, 12)
    blob = np.exp(-(xx**2 + (yy / q) ** 2) / (2 * scale**2))
    colour = np.array([1.0, 0.8, 0.6]) * rng.uniform(0.6, 1)
    pixels = 255 * blob[..., None] * colour + rng.normal(0, 6, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_catalog(folder: Path, n: int = 9, seed: int = 0) -> pd.DataFrame:
    """JPEGs of 60x52 px (DCT-scaled fast path), a PNG, a greyscale JPEG and a 200 px JPEG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        kind = ("png", "grey", "big")[i - (n - 3)] if i >= n - 3 else "jpg"
        pixels = galaxy_pixels(rng, *((200, 180) if kind == "big" else (52, 60)))
        path = folder / f"galaxy_{i}.{'png' if kind == 'png' else 'jpg'}"
        image = Image.fromarray(pixels)
        if kind == "grey":
            image = image.convert("L")
        image.save(path, **({} if kind == "png" else {"quality": 90}))
        rows.append(
            {"id_str": f"{i:04d}", "file_loc": str(path), "smooth": i, "featured": 2 * i + 1}
        )
    return pd.DataFrame(rows)


@pytest.fixture
def catalog(tmp_path) -> pd.DataFrame:
    return make_catalog(tmp_path / "images")


@pytest.fixture
def shard_dir(tmp_path, catalog) -> Path:
    out = tmp_path / "shards"
    write_shards(
        catalog,
        out,
        label_cols=LABELS,
        shard_size=2,
        splits={"train": 0.6, "test": 0.4},
        seed=1,
        workers=1,
        progress=False,
    )
    return out


def expected(paths, channels=3, mean=(0.0,), std=(1.0,)) -> np.ndarray:
    """NumPy reference: read_image, float32 / 255, mean of R, G, B, (x - mean) / std."""
    x = np.stack([read_image(p, SIZE) for p in paths]).astype(np.float32) / np.float32(255)
    if channels == 1:
        x = (x[..., 0:1] + x[..., 1:2] + x[..., 2:3]) / np.float32(3)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def collect(dataset: tf.data.Dataset) -> dict[str, np.ndarray]:
    batches = list(dataset.as_numpy_iterator())
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


@pytest.mark.parametrize(
    ("channels", "mean", "std"),
    [
        (3, (0.0,), (1.0,)),
        (3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        (1, (0.3,), (0.7,)),
    ],
)
def test_eval_from_files_is_bit_exact(catalog, channels, mean, std):
    dataset = eval_dataset(catalog, SIZE, channels, 4, mean, std, label_cols=LABELS)
    assert dataset.cardinality() == 3
    out = collect(dataset)
    assert out["image"].dtype == np.float32
    assert out["image"].shape == (len(catalog), SIZE, SIZE, channels)
    np.testing.assert_array_equal(out["image"], expected(catalog["file_loc"], channels, mean, std))
    assert out["id_str"].tolist() == [s.encode() for s in catalog["id_str"]]
    assert out["index"].tolist() == list(range(len(catalog)))
    assert out["ok"].all() and set(out["error"].tolist()) == {b""}
    np.testing.assert_array_equal(out["labels"], catalog[LABELS].to_numpy(np.float32))


def test_eval_transform_matches_torch_arithmetic():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x = pixels.astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(np.asarray(eval_transform(pixels)), x)
    grey = np.asarray(eval_transform(pixels, 1, (0.5,), (0.25,)))
    mean = (x[..., 0] + x[..., 1] + x[..., 2]) / np.float32(3)
    np.testing.assert_array_equal(grey[..., 0], (mean - np.float32(0.5)) / np.float32(0.25))
    with pytest.raises(ValueError, match="mean has 3 values for 1-channel"):
        eval_transform(pixels, 1, (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="std has 2 values for 3-channel"):
        eval_dataset(pd.DataFrame(), std=(0.5, 0.5))


def test_eval_uint8_without_transform(catalog):
    out = collect(eval_dataset(catalog, SIZE, batch_size=5, transform=False))
    assert out["image"].dtype == np.uint8 and "labels" not in out
    np.testing.assert_array_equal(out["image"], [read_image(p, SIZE) for p in catalog.file_loc])


def test_eval_from_shards_equals_files(catalog, shard_dir):
    from_shards = collect(eval_dataset(shard_dir, SIZE, batch_size=3, label_cols=["featured"]))
    records = list(read_shards(shard_dir))
    assert from_shards["id_str"].tolist() == [r["id_str"].encode() for r in records]
    assert from_shards["index"].tolist() == list(range(len(catalog)))
    assert from_shards["ok"].all()
    by_id = catalog.set_index("id_str").loc[[r["id_str"] for r in records]]
    np.testing.assert_array_equal(from_shards["image"], expected(by_id["file_loc"]))
    np.testing.assert_array_equal(from_shards["labels"][:, 0], by_id["featured"].to_numpy())
    grey = collect(eval_dataset(shard_dir, SIZE, 1, 4, split="test"))
    test_ids = [i.decode() for i in grey["id_str"]]
    files = collect(eval_dataset(catalog.set_index("id_str").loc[test_ids].reset_index(), SIZE, 1))
    assert grey["id_str"].tolist() == files["id_str"].tolist()
    np.testing.assert_array_equal(grey["image"], files["image"])


def test_start_stop_and_splits(catalog, shard_dir):
    whole = collect(eval_dataset(shard_dir, SIZE, batch_size=4, transform=False))
    part = collect(eval_dataset(shard_dir, SIZE, batch_size=4, transform=False, start=3, stop=7))
    assert part["index"].tolist() == [3, 4, 5, 6]  # crosses shard files of 2 records
    assert part["id_str"].tolist() == whole["id_str"][3:7].tolist()
    np.testing.assert_array_equal(part["image"], whole["image"][3:7])

    test = collect(eval_dataset(shard_dir, SIZE, batch_size=4, split="test", transform=False))
    assert test["id_str"].tolist() == [r["id_str"].encode() for r in read_shards(shard_dir, "test")]

    members = assign_splits(catalog, None, 5)
    validation = collect(eval_dataset(catalog, SIZE, split="validation", split_seed=5))
    assert validation["index"].tolist() == members["validation"].tolist()
    assert [t.index.tolist() for t in split_tables(catalog, None, 5).values()] == [
        m.tolist() for m in members.values()
    ]
    with pytest.raises(KeyError, match="no split 'validation'"):
        eval_dataset(shard_dir, split="validation")
    with pytest.raises(ValueError, match="fixed when written"):
        eval_dataset(shard_dir, splits={"train": 1.0})


def test_label_column_mismatch_is_a_clear_error(catalog, shard_dir):
    with pytest.raises(LabelColumnError, match=r"\['bar'\]") as err:
        eval_dataset(shard_dir, label_cols=["smooth", "bar"])
    assert str(shard_dir) in str(err.value) and "smooth" in str(err.value)
    with pytest.raises(LabelColumnError, match="schema 'gz2'") as err:
        open_source(shard_dir, schema="gz2")
    assert get_schema("gz2").label_cols[0] in str(err.value)
    with pytest.raises(LabelColumnError, match=r"the catalog has no label column\(s\) \['bar'\]"):
        eval_dataset(catalog, label_cols=["bar"])
    with pytest.raises(LabelColumnError, match="not in schema"):
        open_source(catalog, ["smooth"], schema="gz2")


def test_schema_label_cols_from_shards(tmp_path, catalog):
    schema = get_schema("gz2")
    labelled = catalog.copy()
    for i, col in enumerate(schema.label_cols):
        labelled[col] = float(i)
    out = tmp_path / "gz2"
    write_shards(labelled, out, schema="gz2", shard_size=4, workers=1, progress=False)
    source = open_source(out, schema="gz2")
    assert source.label_cols == tuple(schema.label_cols)
    batch = next(iter(eval_dataset(out, SIZE, schema="gz2", as_tuples=True)))
    images, labels = batch
    assert labels.shape == (len(catalog), len(schema.label_cols))
    np.testing.assert_array_equal(labels[0], np.arange(len(schema.label_cols), dtype=np.float32))


def test_unreadable_image_is_flagged_not_fatal(catalog, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    bad = catalog.copy()
    bad.loc[2, "file_loc"] = str(broken)
    bad.loc[5, "file_loc"] = str(tmp_path / "missing.png")
    out = collect(eval_dataset(bad, SIZE, batch_size=4))
    assert out["ok"].tolist() == [i not in (2, 5) for i in range(len(bad))]
    assert str(broken) in out["error"][2].decode() and "missing.png" in out["error"][5].decode()
    good = [i for i in range(len(bad)) if i not in (2, 5)]
    np.testing.assert_array_equal(out["image"][good], expected(bad["file_loc"][good]))
    assert not out["image"][[2, 5]].any()
    with pytest.raises(tf.errors.OpError, match="broken.jpg"):
        list(eval_dataset(bad, SIZE, batch_size=4, as_tuples=True))


def test_catalog_file_and_bad_sources(tmp_path, catalog):
    path = tmp_path / "catalog.csv"
    catalog.to_csv(path, index=False)
    out = collect(eval_dataset(path, SIZE, batch_size=9))
    np.testing.assert_array_equal(out["image"], expected(catalog["file_loc"]))
    with pytest.raises(ValueError, match="needs columns id_str and file_loc"):
        open_source(catalog.drop(columns="file_loc"))
    with pytest.raises(Exception, match="not a finished shard folder"):
        open_source(tmp_path)
    with pytest.raises(TypeError, match="source must be"):
        open_source(42)
