"""zoobot.tf.predict from TFRecord shards gives what it gives from the image files (the tables,
failures, bf16 and resuming, written once for every framework: tests/contract/test_predict.py)."""

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from zoobot.data.images import read_image
from zoobot.data.shards import write_shards
from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.shared.tables import read_predictions_full
from zoobot.tf.data import eval_transform
from zoobot.tf.predictions import predict
from zoobot.tf.tree import ZoobotTree

SCHEMA = get_schema("decals_dr5")
SIZE = 32
ARCH = "test_convnext"
FAST = {"image_size": SIZE, "batch_size": 8, "chunk_rows": 16, "progress": False}


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> pd.DataFrame:
    """40 synthetic DECaLS DR5 galaxies, 48 px JPEGs."""
    out = tmp_path_factory.mktemp("survey")
    return make_survey(40, out, schema=SCHEMA, image_size=48, seed=7, progress=False)


@pytest.fixture(scope="module")
def tree() -> ZoobotTree:
    keras.utils.set_random_seed(0)
    return ZoobotTree(SCHEMA, ARCH)


def direct(model, catalog: pd.DataFrame, n_samples: int = 1) -> np.ndarray:
    """The model's predictions, image by image through the evaluation transform, in one batch."""
    images = np.stack([read_image(path, SIZE) for path in catalog["file_loc"]])
    x = np.asarray(eval_transform(tf.constant(images)))
    return np.asarray(model.predict_samples(x, n_samples, False))


def test_shards_predict_as_the_image_files_do(survey, tree, tmp_path):
    write_shards(survey, tmp_path / "shards", schema=SCHEMA, shard_size=12, progress=False)
    from_files = read_predictions_full(
        predict(survey, tree, tmp_path / "f.parquet", **FAST).predictions
    )
    files = predict(tmp_path / "shards", tree, tmp_path / "s.parquet", **FAST)
    from_shards = read_predictions_full(files.predictions)
    assert files.n_predicted == 40 and sorted(from_shards.id_str) == sorted(from_files.id_str)
    order = pd.Index(from_files.id_str).get_indexer(from_shards.id_str)
    # The same pixels (read_image decodes both sources bit for bit, tests/tf/test_data.py), but in
    # other batches: oneDNN picks its convolution kernels, and so the order of each float32 sum,
    # by batch size and CPU (AVX2 differs from AVX-512). A reordered sum of K terms moves by about
    # sqrt(K) roundings of 2**-24 (6e-8); K <= 3 * 3 * 320 ~ 3e3 here gives ~3e-6 per layer at
    # worst, and errors of different layers mostly cancel (4e-7 seen on AVX2): rtol 1e-5.
    np.testing.assert_allclose(
        from_shards.concentrations, from_files.concentrations[order], rtol=1e-5, atol=0
    )
