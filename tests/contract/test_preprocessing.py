"""What a model was trained to see travels with it, the same in every framework: training records
the image size, channels and normalisation, `save_pretrained` writes them, and `predict` and
`get_representations` show the reloaded model the same images without being told."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from contract import SIZE

from zoobot.data.images import read_image
from zoobot.models import preprocessing
from zoobot.models.preprocessing import Preprocessing, attach

MEAN, STD = (0.2, 0.25, 0.3), (0.5,)
RUN = {"batch_size": 8, "chunk_rows": 16, "progress": False}
# The same model and images through `predict` (batches of 8) and `predict_batch` (one batch):
# float32 sums in another order, a few ulps per layer over ~20 layers (as test_predict.RTOL).
RTOL = 1e-4


@pytest.fixture(scope="module")
def trained(fw, survey, tmp_path_factory):
    """A classifier finetuned at SIZE px on normalised images, saved and reloaded."""
    catalog = survey.assign(label=(survey["true_kind"] == "disk").astype(int))
    run = tmp_path_factory.mktemp("trained")
    options = {
        "epochs": 1,
        "batch_size": 16,
        "image_size": SIZE,
        "accelerator": "cpu",
        "devices": 1,
        "num_workers": 0,
        "seed": 3,
        "progress": False,
        "splits": {"train": 0.75, "validation": 0.25},
        "mean": MEAN,
        "std": STD,
    }

    def build():
        return fw.package.FinetuneableZoobotClassifier(2, name="resnet10t", warmup_epochs=0)

    fw.backend.fit_catalog(build, catalog, ["label"], run, options)
    return run / "best"


def test_training_saves_the_size_channels_and_normalisation(fw, trained):
    saved = json.loads((trained / "config.json").read_text())["zoobot"]["preprocessing"]
    assert saved == {
        "image_size": SIZE,
        "channels": 3,
        "mean": list(MEAN),
        "std": list(STD),
        "view": "cutout",
    }
    model = fw.package.from_pretrained(trained)
    assert preprocessing.of(model) == Preprocessing(SIZE, 3, MEAN, STD)
    assert "normalised as (x - [0.2, 0.25, 0.3]) / [0.5]" in (trained / "README.md").read_text()


def probabilities(files) -> np.ndarray:
    """(galaxies, classes) probabilities of a classifier's predictions table."""
    table = pd.read_parquet(files.predictions)
    return table[[c for c in table.columns if c.endswith("_probability")]].to_numpy()


def test_predict_shows_the_reloaded_model_what_training_showed_it(fw, survey, trained, tmp_path):
    model = fw.package.from_pretrained(trained)
    files = fw.package.predict(survey, model, tmp_path / "saved.parquet", **RUN)
    predicted = probabilities(files)
    images = np.stack([read_image(path, SIZE) for path in survey["file_loc"]])
    direct = fw.backend.predict_batch(model, images)
    np.testing.assert_allclose(predicted, direct, rtol=RTOL, atol=1e-6)

    # the record is what changes the numbers: the same weights shown [0, 1] pixels differ
    attach(model, Preprocessing(SIZE, 3))
    plain = probabilities(fw.package.predict(survey, model, tmp_path / "plain.parquet", **RUN))
    assert np.abs(plain - predicted).max() > 1e-3


def test_another_image_size_is_used_with_a_warning(fw, survey, trained, tmp_path, caplog):
    model = fw.package.from_pretrained(trained)
    with caplog.at_level(logging.WARNING, logger="zoobot.models.preprocessing"):
        files = fw.package.predict(survey, model, tmp_path / "big.parquet", image_size=48, **RUN)
    assert f"image_size=48 differs from the {SIZE} px the model was trained at" in caplog.text
    assert (files.n_predicted, files.n_failed) == (len(survey), 0)


def test_representations_use_the_encoders_saved_preprocessing(fw, survey, trained, tmp_path):
    model = fw.package.from_pretrained(trained)
    folder = fw.package.save_pretrained(model.encoder, tmp_path / "encoder")
    saved = json.loads((folder / "config.json").read_text())["zoobot"]
    assert saved["task"] == "encoder" and saved["preprocessing"]["mean"] == list(MEAN)
    encoder = fw.package.load_encoder(folder)
    files = fw.package.get_representations(survey, encoder, tmp_path / "features.parquet", **RUN)
    features = pd.read_parquet(files.representations).iloc[:, 1:].to_numpy()
    images = np.stack([read_image(path, SIZE) for path in survey["file_loc"]])
    mean, std = np.asarray(MEAN, np.float32), np.asarray(STD, np.float32)
    normalised = (images.astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(features, fw.features(encoder, normalised), rtol=RTOL, atol=1e-5)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"view": "centre-crop"}, "view 'centre-crop' is not one this version"),
        ({"mean": [0.1, 0.2]}, "mean needs 1 or 3 values"),
        ({"std": [0.0]}, "std must be one or more positive finite numbers"),
        ({"size": 64}, "unknown keys ['size']"),
    ],
)
def test_a_bad_saved_preprocessing_is_named_on_load(fw, trained, tmp_path, entry, message):
    model = fw.package.from_pretrained(trained)
    folder = model.save_pretrained(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["zoobot"]["preprocessing"].update(entry)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: zoobot.preprocessing") as err:
        fw.package.from_pretrained(folder)
    assert message in str(err.value)
