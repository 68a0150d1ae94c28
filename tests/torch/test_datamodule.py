"""Data module and transforms: exact evaluation arithmetic, augmentations, catalogs and HF datasets."""

from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from zoobot.data.images import read_image
from zoobot.data.labels import LabelRule
from zoobot.data.splits import split_tables
from zoobot.torch import GalaxyDataModule
from zoobot.torch.data.datamodule import batch_ids
from zoobot.torch.data.transforms import (
    MaskedRegions,
    PSFBlur,
    SkyNoise,
    StretchJitter,
    eval_transform,
    train_transform,
)

LABELS = ["question_a", "question_b"]


@pytest.fixture
def catalog(tmp_path) -> pd.DataFrame:
    """20 PNG galaxies of 40 px: a blob whose brightness is label `question_a`."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40] - 19.5
    rows = []
    for i in range(20):
        blob = np.exp(-(xx**2 + yy**2) / (2 * rng.uniform(2, 8) ** 2))
        pixels = (255 * blob[..., None] * [1.0, 0.8, 0.6] * (i + 1) / 20).astype(np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"id_str": str(i), "file_loc": str(path), "question_a": i, "question_b": 2 * i})
    return pd.DataFrame(rows)


def test_eval_transform_arithmetic_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = pixels.astype(np.float32) / np.float32(255)
    out = eval_transform()(pixels)
    assert out.dtype == torch.float32 and out.shape == (3, 64, 64)
    np.testing.assert_array_equal(out.numpy(), x.transpose(2, 0, 1))
    grey = eval_transform(channels=1, mean=(0.5,), std=(0.25,))(pixels)
    mean = (x[..., 0] + x[..., 1] + x[..., 2]) / np.float32(3)
    expected = (mean - np.float32(0.5)) / np.float32(0.25)
    np.testing.assert_array_equal(grey.numpy()[0], expected)
    norm = eval_transform(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 2.0))(pixels)
    expected = (x - np.float32([0.1, 0.2, 0.3])) / np.float32([0.5, 0.5, 2.0])
    np.testing.assert_array_equal(norm.numpy(), expected.transpose(2, 0, 1))
    with pytest.raises(ValueError, match="mean has 3 values for 1-channel"):
        eval_transform(channels=1, mean=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="std has 2 values for 3-channel"):
        train_transform(32, std=(0.5, 0.5))


def test_train_transform_is_random_in_range_and_sized():
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    transform = train_transform(32, astro_p=1.0, greyscale_p=0.5)
    torch.manual_seed(0)
    first = transform(pixels)
    torch.manual_seed(0)
    assert torch.equal(first, transform(pixels)), "reproducible under a seed"
    assert first.shape == (3, 32, 32) and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, transform(pixels))
    assert train_transform(32, channels=1)(pixels).shape == (1, 32, 32)


def test_astronomy_augmentations():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    galaxy = torch.exp(-((xx - 15.5) ** 2 + (yy - 15.5) ** 2) / 8).expand(3, -1, -1) * 0.8
    blurred = PSFBlur(fwhm=(2.0, 2.0))(galaxy)
    assert blurred.max() < galaxy.max()
    torch.testing.assert_close(blurred.sum(), galaxy.sum(), rtol=1e-3, atol=0)
    noisy = SkyNoise(sigma=(0.05, 0.05))(torch.full((3, 64, 64), 0.5))
    assert abs(float((noisy - 0.5).std()) - 0.05) < 0.005
    ends = torch.tensor([0.0, 1.0]).view(1, 1, 2)
    torch.testing.assert_close(StretchJitter(gain=(1.0, 1.0))(ends), ends)
    stretched = StretchJitter(gain=(1.0, 1.0))(galaxy)
    assert not torch.equal(stretched, galaxy) and 0 <= stretched.min() <= stretched.max() <= 1
    masked = MaskedRegions(area=(0.05, 0.05))(torch.ones(3, 32, 32))
    assert 0 < (masked == 0).float().mean() <= 3 * 0.06
    assert ((masked == 0).all(0) == (masked == 0).any(0)).all(), "masks every band alike"


def test_catalog_splits_batches_and_prediction(catalog):
    dm = GalaxyDataModule(catalog, LABELS, image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    assert [len(dm.splits[s]) for s in ("train", "validation", "test")] == [16, 2, 2]
    tables = split_tables(catalog, None, seed=0)
    assert set(dm.splits["test"].paths) == set(tables["test"]["file_loc"])
    by_column = catalog.assign(split=["validation"] * 5 + ["train"] * 15)
    dm_column = GalaxyDataModule(by_column, LABELS, num_workers=0)
    dm_column.setup("fit")
    assert dm_column.splits["validation"].paths == list(catalog["file_loc"][:5])
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 32, 32) and labels.dtype == torch.float32
    row = catalog.set_index("question_a").loc[int(labels[0, 0])]
    assert labels[0, 1] == row["question_b"]
    expected = torch.from_numpy(read_image(row["file_loc"], 32)).permute(2, 0, 1) / 255.0
    assert torch.equal(images[0], expected), "validation images take the evaluation transform"
    train = list(dm.train_dataloader())
    assert len(train) == 4 and all(len(b[0]) == 4 for b in train)
    predict = GalaxyDataModule(catalog[["id_str", "file_loc"]], image_size=32, num_workers=0)
    predict.setup("predict")
    images, labels = next(iter(predict.predict_dataloader()))
    assert images.shape == (20, 3, 32, 32) and labels.shape == (20, 0)


def test_workers_pin_and_persist(catalog):
    dm = GalaxyDataModule(catalog, LABELS, image_size=16, batch_size=5, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    assert loader.pin_memory == torch.cuda.is_available()
    assert sum(len(b[0]) for b in loader) == 15


def test_hugging_face_dataset_matches_catalog(catalog):
    features = datasets.Features(
        {"image": datasets.Image(), "id_str": datasets.Value("string")}
        | {c: datasets.Value("float32") for c in LABELS}
    )
    table = catalog.rename(columns={"file_loc": "image"})
    dataset = datasets.Dataset.from_pandas(table, features=features, preserve_index=False)
    embedded = [{"bytes": Path(p).read_bytes(), "path": None} for p in catalog["file_loc"]]
    table["image"] = embedded  # as the Hub layout stores them
    with_bytes = datasets.Dataset.from_pandas(table, features=features, preserve_index=False)
    splits = datasets.DatasetDict(
        {
            "train": with_bytes.select(range(10)),
            "validation": with_bytes.select(range(10, 15)),
            "test": with_bytes.select(range(15, 20)),
        }
    )
    dm = GalaxyDataModule(splits, LABELS, image_size=32, batch_size=5, num_workers=0)
    dm.setup("fit")
    images, labels = next(iter(dm.val_dataloader()))
    files = GalaxyDataModule(
        {"train": catalog, "validation": catalog.iloc[10:15], "test": catalog},
        LABELS,
        image_size=32,
        batch_size=5,
        num_workers=0,
    )
    files.setup("fit")
    file_images, file_labels = next(iter(files.val_dataloader()))
    assert torch.equal(images, file_images) and torch.equal(labels, file_labels)
    single = GalaxyDataModule(dataset, LABELS, image_size=32, num_workers=0)
    single.setup("fit")
    assert [len(single.splits[s]) for s in ("train", "validation")] == [16, 2]
    same = GalaxyDataModule(catalog, LABELS, image_size=32, num_workers=0)
    same.setup("fit")
    assert torch.equal(single.splits["validation"].labels, same.splits["validation"].labels)


def test_missing_split_or_label_column_is_named(catalog):
    with pytest.raises(KeyError, match="validation"):
        GalaxyDataModule({"train": catalog}, LABELS, num_workers=0).setup("fit")
    with pytest.raises(ValueError, match=r"missing 1 label column\(s\): \['question_c'\]"):
        GalaxyDataModule(catalog, ["question_c"], num_workers=0)


@pytest.mark.parametrize(
    ("value", "problem"),
    [(np.nan, "NaN or infinite"), (-1.0, "negative"), (2.5, "not a whole number"), (1e12, "over")],
)
def test_vote_counts_are_checked_when_the_module_is_made(catalog, value, problem):
    bad = catalog.astype({"question_b": float})
    bad.loc[7, "question_b"] = value
    votes = LabelRule.votes(LABELS)
    with pytest.raises(
        ValueError, match=rf"column 'question_b' is {problem}.*row 7 \(id_str '7'\)"
    ):
        GalaxyDataModule(bad, LABELS, num_workers=0, label_rule=votes)
    splits = {"train": catalog, "validation": bad}
    with pytest.raises(
        ValueError, match=rf"split 'validation'[\s\S]*column 'question_b' is {problem}"
    ):
        GalaxyDataModule(splits, LABELS, num_workers=0, label_rule=votes)
    dataset = datasets.Dataset.from_pandas(bad, preserve_index=False)
    with pytest.raises(
        ValueError, match=rf"column 'question_b' is {problem}.*row 7 \(id_str '7'\)"
    ):
        GalaxyDataModule(dataset, LABELS, num_workers=0, label_rule=votes)


def test_without_a_rule_labels_must_be_finite_and_workers_not_negative(catalog):
    bad = catalog.astype({"question_a": float})
    bad.loc[3, "question_a"] = np.inf
    with pytest.raises(ValueError, match=r"column 'question_a' is NaN or infinite.*row 3"):
        GalaxyDataModule(bad, LABELS, num_workers=0)
    GalaxyDataModule(
        catalog.assign(question_a=0.5), LABELS, num_workers=0
    )  # targets may be fractional
    with pytest.raises(ValueError, match="num_workers=-1"):
        GalaxyDataModule(catalog, LABELS, num_workers=-1)


def test_the_training_loader_names_the_galaxies_of_each_batch(catalog):
    dm = GalaxyDataModule(catalog, LABELS, image_size=16, batch_size=4, num_workers=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    by_label = dict(zip(catalog["question_a"], catalog["id_str"], strict=True))
    for epoch in range(2):  # batches are reshuffled each epoch and recorded afresh
        for batch, (_, labels) in enumerate(loader):
            expected = [by_label[int(a)] for a in labels[:, 0]]
            assert batch_ids(loader, batch) == expected, epoch
    assert batch_ids(dm.val_dataloader(), 0) is None
