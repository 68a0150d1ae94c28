"""zoobot.tf.data training pipeline: in-graph augmentations, seeds, splits, no Python in the graph."""

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from zoobot.data.augmentation import DIHEDRAL, dihedral
from zoobot.data.images import read_image
from zoobot.data.labels import LabelRule
from zoobot.data.shards import write_shards
from zoobot.data.splits import assign_splits
from zoobot.tf.data import (
    AugmentConfig,
    augment_batch,
    decode_train_image,
    dihedral_transform,
    eval_dataset,
    eval_transform,
    train_dataset,
)
from zoobot.tf.data.augment import (
    geometry,
    masked_regions,
    psf_blur,
    psf_kernels,
    sky_noise,
    stretch_jitter,
)
from zoobot.tf.data.pipelines import UNUSABLE_IMAGE, BatchIds

SIZE = 32
PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
SEED = tf.constant([7, 11], tf.int64)


def blob(size: int = 40, batch: int = 4) -> np.ndarray:
    """float32 (batch, size, size, 3) galaxies in [0, 0.8], each a different ellipse."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    images = []
    for q in np.linspace(0.4, 1.0, batch):
        flux = np.exp(-(xx**2 + (yy / q) ** 2) / (2 * (size / 8) ** 2))
        images.append(0.8 * flux[..., None] * [1.0, 0.8, 0.6])
    return np.asarray(images, np.float32)


@pytest.fixture
def catalog(tmp_path) -> pd.DataFrame:
    """20 JPEG galaxies of 48 px (one PNG); the label `row` is the catalog position."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    yy, xx = np.mgrid[:48, :48] - 23.5
    for i in range(20):
        flux = np.exp(-(xx**2 + (yy / rng.uniform(0.4, 1)) ** 2) / (2 * rng.uniform(3, 9) ** 2))
        pixels = np.clip(
            255 * flux[..., None] * [1, 0.8, 0.6] + rng.normal(0, 5, (48, 48, 3)), 0, 255
        )
        path = folder / (f"{i}.png" if i == 3 else f"{i}.jpg")
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        rows.append({"id_str": f"g{i:02d}", "file_loc": str(path), "row": i, "votes": 3 * i})
    return pd.DataFrame(rows)


def graph_ops(dataset: tf.data.Dataset) -> set[str]:
    """Op types of a dataset's graph, including every function in its library."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    ops = {node.op for node in graph.node}
    return ops | {node.op for function in graph.library.function for node in function.node_def}


def epoch(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    batches = list(dataset.as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_augment_batch_shape_range_and_seed():
    images = blob()
    config = AugmentConfig(astro_p=1.0, greyscale_p=0.5)
    out = augment_batch(images, SEED, config, size=SIZE)
    assert out.dtype == tf.float32 and out.shape == (4, SIZE, SIZE, 3)
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 1
    np.testing.assert_array_equal(out, augment_batch(images, SEED, config, size=SIZE))
    other = augment_batch(images, tf.constant([7, 12], tf.int64), config, size=SIZE)
    assert not np.array_equal(out, other)
    grey = augment_batch(images, SEED, AugmentConfig(), channels=1)
    assert grey.shape == (4, 40, 40, 1)
    compiled = tf.function(lambda x, s: augment_batch(x, s, config, size=SIZE))
    np.testing.assert_allclose(compiled(images, SEED), out, atol=1e-6)


def test_no_python_ops_in_training_graph(catalog, tmp_path):
    traced = tf.function(lambda x, s: augment_batch(x, s, AugmentConfig(astro_p=1.0)))
    graph = traced.get_concrete_function(
        tf.TensorSpec([None, 40, 40, 3], tf.float32), tf.TensorSpec([2], tf.int64)
    ).graph
    ops = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:
        ops |= {node.op for node in function.node_def}
    assert "ImageProjectiveTransformV3" in ops and "DepthwiseConv2dNative" in ops
    assert not ops & PYTHON_OPS

    write_shards(catalog, tmp_path / "shards", label_cols=["votes"], workers=1, progress=False)
    for source in (catalog, tmp_path / "shards"):
        ops = graph_ops(train_dataset(source, ["votes"], SIZE, batch_size=4, seed=0))
        assert {"DecodeJpeg", "ImageProjectiveTransformV3"} <= ops and not ops & PYTHON_OPS
    # The check can see Python: the evaluation pipeline does run read_image through one.
    assert graph_ops(eval_dataset(catalog, SIZE)) & PYTHON_OPS


def test_geometry_rotates_flips_and_crops():
    images = blob(batch=8)
    config = AugmentConfig(astro_p=0.0)
    out = np.asarray(geometry(images, SEED, config, SIZE))
    assert out.shape == (8, SIZE, SIZE, 3) and out.min() >= 0 and out.max() <= 0.8 + 1e-6
    crop_only = np.asarray(geometry(images, SEED, AugmentConfig(rotation=False, flips=False), 40))
    # A 70-80 % area crop zooms in: the galaxy covers more of the frame, keeping its peak.
    assert (crop_only > 0.4).sum() > (images > 0.4).sum()
    np.testing.assert_allclose(crop_only.max(axis=(1, 2)), images.max(axis=(1, 2)), atol=0.05)
    # Rotation turns the elongated galaxies: second moments change, flux stays near the centre.
    turned = geometry(images, SEED, AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1, 1)), 40)
    assert not np.allclose(np.asarray(turned)[0], images[0], atol=0.05)
    np.testing.assert_allclose(
        np.asarray(turned).sum(axis=(1, 2)), images.sum(axis=(1, 2)), rtol=0.02
    )


def test_psf_kernels_are_the_torch_moffat():
    fwhm, beta, size = np.array([0.7, 2.4], np.float32), np.array([2.6, 4.1], np.float32), 40
    kernels = np.asarray(psf_kernels(fwhm, beta, size, max_fwhm=2.5))
    big = kernels.shape[1] // 2
    assert big == 5
    for k, f, b in zip(kernels, fwhm, beta, strict=True):
        # zoobot.torch.data.transforms.PSFBlur, in NumPy.
        alpha = f / (2 * math.sqrt(2 ** (1 / b) - 1))
        radius = max(1, min(math.ceil(2 * f), size // 2 - 1))
        r = np.arange(-radius, radius + 1, dtype=np.float32)
        ref = (1 + (r[:, None] ** 2 + r[None, :] ** 2) / alpha**2) ** -b
        ref = np.pad(ref / ref.sum(), big - radius)
        np.testing.assert_allclose(k, ref, rtol=1e-5, atol=1e-7)


def test_astronomy_augmentations():
    images = blob(48, batch=6)
    always = AugmentConfig(astro_p=1.0, psf_fwhm=(2.0, 2.0))
    blurred = np.asarray(psf_blur(images, SEED, always))
    assert (blurred.max(axis=(1, 2, 3)) < images.max(axis=(1, 2, 3))).all()
    np.testing.assert_allclose(blurred.sum(axis=(1, 2)), images.sum(axis=(1, 2)), rtol=1e-3)
    never = AugmentConfig(astro_p=0.0)
    for augmentation in (psf_blur, sky_noise, stretch_jitter, masked_regions):
        np.testing.assert_array_equal(augmentation(images, SEED, never), images)
        changed = np.asarray(augmentation(images, SEED, always))
        assert changed.dtype == np.float32 and changed.shape == images.shape
        assert changed.min() >= 0 and changed.max() <= 1 and not np.array_equal(changed, images)
        np.testing.assert_array_equal(changed, augmentation(images, SEED, always))
    grey = np.full((8, 64, 64, 3), 0.5, np.float32)
    noise = np.asarray(sky_noise(grey, SEED, AugmentConfig(astro_p=1.0))) - 0.5
    assert (noise.std(axis=(1, 2, 3)) > 0.004).all() and (noise.std(axis=(1, 2, 3)) < 0.055).all()
    ramp = np.broadcast_to(np.linspace(0, 1, 64, dtype=np.float32)[None, None, :, None], grey.shape)
    stretched = np.asarray(stretch_jitter(ramp, SEED, AugmentConfig(astro_p=1.0)))
    assert (np.diff(stretched, axis=2) >= 0).all(), "a stretch keeps the order of brightness"
    assert not np.allclose(stretched, ramp, atol=1e-3)
    masked = np.asarray(masked_regions(grey, SEED, AugmentConfig(astro_p=1.0)))
    zeroed = (masked == 0).all(axis=-1).mean(axis=(1, 2))
    assert (zeroed > 0).all() and (zeroed < 0.2).all()
    assert set(np.unique(masked)) == {0.0, 0.5}


def test_train_dataset_from_catalog(catalog):
    members = assign_splits(catalog, None, 3)["train"]
    dataset = train_dataset(catalog, ["row", "votes"], SIZE, batch_size=4, seed=5, split_seed=3)
    assert dataset.cardinality() == len(members) // 4
    images, labels = epoch(dataset)
    assert images.shape == (len(members), SIZE, SIZE, 3) and images.dtype == np.float32
    assert labels.dtype == np.float32 and sorted(labels[:, 0]) == sorted(members)
    np.testing.assert_array_equal(labels[:, 1], 3 * labels[:, 0])
    assert images.min() >= 0 and images.max() <= 1
    again = train_dataset(catalog, ["row", "votes"], SIZE, batch_size=4, seed=5, split_seed=3)
    first = epoch(again)
    np.testing.assert_array_equal(first[0], images)
    np.testing.assert_array_equal(first[1], labels)
    second = epoch(again)
    assert not np.array_equal(second[0], first[0]), "a new epoch reshuffles and re-augments"

    whole = train_dataset(catalog, ["row"], SIZE, 1, batch_size=6, split=None, seed=0)
    assert whole.cardinality() == 3  # 20 rows, last partial batch dropped as torch does
    x, y = epoch(whole)
    assert x.shape == (18, SIZE, SIZE, 1)
    normalised = train_dataset(
        catalog,
        ["row"],
        SIZE,
        batch_size=20,
        split=None,
        seed=0,
        augment=False,
        mean=(0.5,),
        std=(0.25,),
        drop_remainder=False,
    )
    x, y = epoch(normalised)
    assert x.min() >= -2 and x.max() <= 2 and x.min() < 0


def test_train_dataset_from_shards(catalog, tmp_path):
    out = tmp_path / "shards"
    write_shards(
        catalog, out, label_cols=["row", "votes"], shard_size=3, seed=2, workers=1, progress=False
    )
    dataset = train_dataset(out, image_size=SIZE, batch_size=4, seed=1, shuffle_buffer=8)
    n_train = 16  # 80 % of 20
    images, labels = epoch(dataset)
    assert labels.shape == (n_train, 2) and images.shape == (n_train, SIZE, SIZE, 3)
    assert sorted(labels[:, 0]) == sorted(assign_splits(catalog, None, 2)["train"])
    repeat = epoch(train_dataset(out, image_size=SIZE, batch_size=4, seed=1, shuffle_buffer=8))
    np.testing.assert_array_equal(repeat[0], images)
    test = epoch(train_dataset(out, ["votes"], SIZE, batch_size=2, split="test", seed=0))
    assert test[1].shape == (2, 1)


def test_decode_train_image_is_close_to_read_image(catalog, tmp_path):
    for path in catalog["file_loc"][:4]:
        data = tf.io.read_file(path)
        decoded = np.asarray(decode_train_image(data, SIZE))
        reference = read_image(path, SIZE).astype(np.float32) / 255
        assert decoded.shape == (SIZE, SIZE, 3) and decoded.dtype == np.float32
        assert np.abs(decoded - reference).mean() < 2 / 255
    big = tmp_path / "big.jpg"
    pixels = np.kron(read_image(catalog["file_loc"][0], 48), np.ones((6, 6, 1), np.uint8))
    Image.fromarray(pixels).save(big, quality=95)  # 288 px: decoded at DCT scale 1/8 for 32
    decoded = np.asarray(decode_train_image(tf.io.read_file(str(big)), SIZE))
    assert np.abs(decoded - read_image(big, SIZE) / 255).mean() < 3 / 255


def test_unseeded_training_leaves_images_on_disk_unchanged(catalog):
    before = {p: Path(p).read_bytes() for p in catalog["file_loc"]}
    list(train_dataset(catalog, ["row"], SIZE, batch_size=8, split=None, seed=None))
    assert before == {p: Path(p).read_bytes() for p in catalog["file_loc"]}


def test_batch_ids_record_the_galaxies_of_each_batch_as_fit_sees_them(catalog, tmp_path):
    write_shards(catalog, tmp_path / "shards", label_cols=["row"], workers=1, progress=False)
    for source in (catalog, tmp_path / "shards"):
        recorded = BatchIds()
        dataset = train_dataset(
            source, ["row"], SIZE, batch_size=4, seed=0, split=None, batch_ids=recorded,
            splits=None if source is not catalog else {"train": 1.0},
        )  # fmt: skip
        for _ in range(2):  # each epoch reshuffles; batch numbers start again at 0
            for number, (_, labels) in enumerate(dataset):
                ids = [f"g{int(row):02d}" for row in labels.numpy()[:, 0]]
                assert recorded.get(number) == ids


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("constant", "the image carries no signal"),
        ("fits", "not a JPEG or PNG file: a FITS file"),
        ("text", "not a JPEG or PNG file"),
        ("huge", "too large"),
    ],
)
def test_training_images_follow_the_one_image_rule_and_are_named(
    catalog, tmp_path, content, problem
):
    path = tmp_path / f"{content}.jpg"
    if content == "constant":
        Image.new("RGB", (48, 48), (30, 30, 30)).save(path)
    elif content == "fits":
        path.write_bytes(b"SIMPLE  =                    T" + b" " * 2850)
    elif content == "text":
        path.write_text("id_str,file_loc\n")
    else:
        header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 0, 0, 0, 0)
        ihdr = b"IHDR" + header
        path.write_bytes(
            b"\x89PNG\r\n\x1a\n"
            + struct.pack(">I", 13)
            + ihdr
            + struct.pack(">I", zlib.crc32(ihdr))
        )
    bad = catalog.copy()
    bad.loc[5, "file_loc"] = str(path)
    dataset = train_dataset(bad, ["row"], SIZE, batch_size=4, seed=0, splits={"train": 1.0})
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=rf"\[{UNUSABLE_IMAGE}\] \[{path}\] \[{problem}"
    ):
        list(dataset)


def test_training_labels_follow_the_rule_given(catalog, tmp_path):
    bad = catalog.astype({"votes": float})
    bad.loc[4, "votes"] = np.nan
    with pytest.raises(ValueError, match=r"column 'votes' is NaN or infinite in 1 row\(s\): row 4"):
        train_dataset(bad, ["votes"], SIZE, splits={"train": 1.0})  # finite, without a rule
    with pytest.raises(ValueError, match=r"column 'votes' is not a class index 0 to 9.* row 4 "):
        train_dataset(catalog, ["votes"], SIZE, label_rule=LabelRule.classes("votes", 10))
    write_shards(catalog, tmp_path / "shards", label_cols=["votes"], workers=1, progress=False)
    with pytest.raises(
        ValueError, match=r"shards: label columns must hold class indices[\s\S]*row\(s\)"
    ):
        train_dataset(
            tmp_path / "shards", ["votes"], SIZE, label_rule=LabelRule.classes("votes", 40)
        )


def test_dihedral_transform_gives_the_8_symmetries_of_the_square_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    symmetries = {
        eval_transform(np.ascontiguousarray(dihedral(pixels, k, m, axes=(1, 2)))).numpy().tobytes()
        for k, m in DIHEDRAL
    }
    batch = np.repeat(pixels, 64, axis=0)
    out = dihedral_transform(batch, SEED).numpy()
    seen = {image[None].tobytes() for image in out}
    assert seen == symmetries  # all 8 appear among 64 draws (each missed with chance < 2e-4)
    np.testing.assert_array_equal(dihedral_transform(batch, SEED), out)  # stateless: same seed
    floats = dihedral_transform(batch.astype(np.float32) / 255.0, SEED)
    np.testing.assert_array_equal(floats, out)  # uint8 or [0, 1] floats: the same images
    grey = dihedral_transform(batch, SEED, channels=1, mean=(0.5,), std=(0.25,))
    assert grey.shape == (64, 16, 16, 1)


def test_train_dataset_with_dihedral_augmentation_only_turns_and_mirrors(catalog):
    options = {"image_size": SIZE, "batch_size": 4, "seed": 1, "split": None}
    plain, rows = epoch(train_dataset(catalog, ["row"], augment=False, **options))
    turned, turned_rows = epoch(train_dataset(catalog, ["row"], augment="dihedral", **options))
    np.testing.assert_array_equal(turned_rows, rows)  # the same shuffle: only the pixels differ
    for image, original in zip(turned, plain, strict=True):
        assert any(np.array_equal(image, dihedral(original, k, m)) for k, m in DIHEDRAL)
    assert not np.array_equal(turned, plain)
    with pytest.raises(ValueError, match="augment must be one of"):
        train_dataset(catalog, ["row"], augment="zoom", **options)
