"""Check 2: the deterministic evaluation transform of the same image files in both frameworks.

torch reads each file as its training/prediction datasets do (`zoobot.torch.data.datamodule.
CatalogDataset` with `zoobot.torch.data.transforms.eval_transform`, channels-first); TF reads the same
catalog with `zoobot.tf.data.eval_dataset`, from the files and from TFRecord shards written by
`zoobot.data.shards.write_shards` (channels-last). The tensors must be identical after
transposing CHW -> HWC: JPEGs of several sizes (so libjpeg-turbo's DCT-domain scaling is used),
a greyscale JPEG, RGB and greyscale PNGs and an RGBA PNG; 1 and 3 channels; default and
non-trivial normalisation.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
from parity import compare, compare_equal
from PIL import Image

IMAGE_SIZE = 64
TOLERANCE = 0.0  # identical float32 arithmetic: no difference at all is expected
NORMALISATIONS = {"default": ((0.0,), (1.0,)), "mean0.3-std0.2": ((0.3,), (0.2,))}
# (file name, PIL mode, side, format)
IMAGES = [
    ("large.jpg", "RGB", 424, "JPEG"),
    ("medium.jpg", "RGB", 150, "JPEG"),
    ("small.jpg", "RGB", 48, "JPEG"),
    ("grey.jpg", "L", 200, "JPEG"),
    ("colour.png", "RGB", 120, "PNG"),
    ("grey.png", "L", 90, "PNG"),
    ("alpha.png", "RGBA", 100, "PNG"),
]


def galaxy_like(side: int, rng: np.random.Generator, bands: int) -> np.ndarray:
    """A smooth blob with structure and noise, uint8 (side, side, bands)."""
    y, x = np.mgrid[:side, :side] / side - 0.5
    image = np.zeros((side, side, bands))
    for band in range(bands):
        cx, cy = rng.normal(0, 0.05, 2)
        r = np.hypot(x - cx, (y - cy) * rng.uniform(0.5, 1))
        image[..., band] = np.exp(-r / rng.uniform(0.05, 0.15)) + 0.3 * np.sin(20 * r) * (r < 0.3)
    image += rng.normal(0, 0.05, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(8)
    rows = []
    for i, (name, mode, side, fmt) in enumerate(IMAGES):
        bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        pixels = galaxy_like(side, rng, bands)
        if mode == "RGBA":
            pixels[..., 3] = 255 - pixels[..., 3] // 4
        image = Image.fromarray(pixels[..., 0] if bands == 1 else pixels, mode)
        path = folder / name
        image.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        rows.append({"id_str": f"galaxy-{i}", "file_loc": str(path), "label": float(i)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def shard_folder(catalog, tmp_path_factory):
    from zoobot.data.shards import write_shards

    folder = tmp_path_factory.mktemp("shards")
    write_shards(
        catalog, folder, label_cols=["label"], splits={"test": 1.0}, shard_size=3, workers=1,
        progress=False,
    )  # fmt: skip
    return folder


def torch_images(catalog, channels, mean, std) -> dict[str, np.ndarray]:
    """id_str -> HWC float32 from the torch dataset (CHW transposed)."""
    from zoobot.torch.data.datamodule import CatalogDataset
    from zoobot.torch.data.transforms import eval_transform

    dataset = CatalogDataset(catalog, [], IMAGE_SIZE, eval_transform(channels, mean, std))
    return {
        id_str: dataset[i][0].numpy().transpose(1, 2, 0)
        for i, id_str in enumerate(catalog["id_str"])
    }


def tf_images(source, channels, mean, std) -> dict[str, np.ndarray]:
    """id_str -> HWC float32 from zoobot.tf.data.eval_dataset (files or shards)."""
    data = importlib.import_module("zoobot.tf.data")
    out = {}
    for batch in data.eval_dataset(source, IMAGE_SIZE, channels, batch_size=4, mean=mean, std=std):
        assert bool(np.all(batch["ok"].numpy())), batch["error"].numpy()
        for id_str, image in zip(batch["id_str"].numpy(), batch["image"].numpy(), strict=True):
            out[id_str.decode()] = image
    return out


def _checks(name, actual: dict, reference: dict):
    ids = sorted(reference)
    checks = [compare_equal(f"{name} ids", sorted(actual), ids, group="preprocessing")]
    if checks[0].passed:
        checks.append(
            compare(
                name,
                np.stack([actual[i] for i in ids]),
                np.stack([reference[i] for i in ids]),
                TOLERANCE,
                relative="scale",
                group="preprocessing",
                note=f"{len(ids)} JPEG/PNG files, {IMAGE_SIZE} px, HWC vs torch CHW transposed",
            )
        )
    return checks


@pytest.mark.parametrize("norm", list(NORMALISATIONS))
@pytest.mark.parametrize("channels", [3, 1])
def test_eval_transform_from_files(recorder, catalog, channels, norm):
    mean, std = NORMALISATIONS[norm]
    reference = torch_images(catalog, channels, mean, std)
    assert next(iter(reference.values())).shape == (IMAGE_SIZE, IMAGE_SIZE, channels)
    actual = tf_images(catalog, channels, mean, std)
    recorder.record(*_checks(f"files {channels}ch {norm}: tf vs torch", actual, reference))


@pytest.mark.parametrize("norm", list(NORMALISATIONS))
@pytest.mark.parametrize("channels", [3, 1])
def test_eval_transform_from_shards(recorder, catalog, shard_folder, channels, norm):
    mean, std = NORMALISATIONS[norm]
    reference = torch_images(catalog, channels, mean, std)
    actual = tf_images(shard_folder, channels, mean, std)
    recorder.record(*_checks(f"shards {channels}ch {norm}: tf vs torch", actual, reference))
