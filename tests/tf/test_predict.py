"""zoobot.tf.predictions: the documented tables (the same files and columns as zoobot.torch) for trees
and classifiers (regressor tables: tests/data/test_streaming.py), equal to a direct forward pass;
failures reported and skipped; shards give what files give; bf16 close to float32; a run killed
with SIGKILL resumes to the uninterrupted table.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from zoobot.data.images import read_image
from zoobot.data.shards import write_shards
from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.shared.tables import friendly_table, read_predictions_full
from zoobot.tf.data import eval_transform
from zoobot.tf.data import transforms as data_transforms
from zoobot.tf.finetune import FinetuneableZoobotClassifier
from zoobot.tf.hub import save_pretrained
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
    x = eval_transform(tf.constant(images))
    return np.asarray(model.predict_samples(x, n_samples, False))


def test_tree_model_writes_full_and_friendly_tables_equal_to_a_forward_pass(survey, tree, tmp_path):
    files = predict(survey, tree, tmp_path / "votes.parquet", **FAST)
    assert (files.n_predicted, files.n_failed) == (40, 0)
    assert files.friendly == tmp_path / "votes_friendly.parquet"
    full = read_predictions_full(files.predictions)
    assert full.schema == SCHEMA and full.model_name == "ZoobotTree"
    assert list(full.id_str) == list(survey["id_str"]) and isinstance(full.id_str[0], str)
    np.testing.assert_allclose(full.concentrations, direct(tree, survey), rtol=1e-5)

    friendly = pd.read_parquet(files.friendly)
    expected = friendly_table(full.id_str, full.concentrations, SCHEMA)
    pd.testing.assert_frame_equal(friendly, expected, check_dtype=False)
    assert pd.api.types.is_string_dtype(friendly["id_str"])
    assert pd.read_csv(files.failed).columns.tolist() == ["id_str", "file_loc", "error"]
    assert not (tmp_path / "votes.parquet.parts").exists()


def test_monte_carlo_passes_differ_and_repeat_with_the_seed(survey, tree, tmp_path):
    first = predict(survey, tree, tmp_path / "a.parquet", n_samples=2, **FAST)
    again = predict(survey, tree, tmp_path / "b.parquet", n_samples=2, **FAST)
    other = predict(survey, tree, tmp_path / "c.parquet", n_samples=2, seed=1, **FAST)
    alpha = read_predictions_full(first.predictions).concentrations
    assert alpha.shape == (40, len(SCHEMA.label_cols), 2)
    assert not np.allclose(alpha[..., 0], alpha[..., 1])
    np.testing.assert_array_equal(alpha, read_predictions_full(again.predictions).concentrations)
    assert not np.allclose(alpha, read_predictions_full(other.predictions).concentrations)
    deterministic = direct(tree, survey)[..., 0]
    assert np.abs(alpha.mean(2) / deterministic - 1).mean() < 0.1


def test_classifier_table_has_probability_columns_and_passes(survey, tmp_path):
    keras.utils.set_random_seed(1)
    model = FinetuneableZoobotClassifier(3, name=ARCH)
    names = ["ring", "lens", "other"]
    files = predict(
        survey, model, tmp_path / "c.parquet", 2, label_cols=names, mc_dropout=False, **FAST
    )
    assert files.friendly is None
    table = pq.read_table(files.predictions)
    columns = [f"{n}_probability" for n in names] + [f"{n}_probability_passes" for n in names]
    assert table.column_names == ["id_str", *columns]
    assert table.schema.field("ring_probability").type == pa.float32()
    passes_type = table.schema.field("ring_probability_passes").type
    assert passes_type.list_size == 2 and passes_type.value_type == pa.float32()
    df = table.to_pandas()
    assert list(df["id_str"]) == list(survey["id_str"])
    expected = direct(model, survey)[..., 0]
    probabilities = df[[f"{n}_probability" for n in names]].to_numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    passes = np.stack([np.stack(df[f"{n}_probability_passes"]) for n in names], 1)
    np.testing.assert_allclose(passes.mean(2), probabilities, rtol=1e-6)


def test_a_named_classifier_names_its_columns(survey, tmp_path):
    model = FinetuneableZoobotClassifier(2, name=ARCH, class_names=["ring", "no ring"])
    files = predict(survey.head(8), model, tmp_path / "named.parquet", num_workers=1, **FAST)
    columns = pq.read_table(files.predictions).column_names
    assert columns == ["id_str", "ring_probability", "no ring_probability"]


def test_unreadable_images_are_reported_and_the_rest_predicted(survey, tree, tmp_path):
    catalog = survey.copy()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    catalog.loc[5, "file_loc"] = str(broken)
    catalog.loc[21, "file_loc"] = str(tmp_path / "missing.jpg")
    files = predict(catalog, tree, tmp_path / "p.parquet", num_workers=1, **FAST)
    assert (files.n_predicted, files.n_failed) == (38, 2)
    failed = pd.read_csv(files.failed, dtype=str)
    assert failed["id_str"].tolist() == [catalog.id_str[5], catalog.id_str[21]]
    assert failed["file_loc"].tolist() == [str(broken), str(tmp_path / "missing.jpg")]
    assert "cannot decode" in failed["error"][0] and "cannot read" in failed["error"][1]
    full = read_predictions_full(files.predictions)
    kept = catalog.drop(index=[5, 21])
    assert list(full.id_str) == list(kept["id_str"])
    np.testing.assert_allclose(full.concentrations, direct(tree, survey.loc[kept.index]), rtol=1e-4)


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


def test_predict_refuses_an_encoder_and_checks_arguments(survey, tree, tmp_path):
    with pytest.raises(ValueError, match="get_representations"):
        predict(survey, tree.encoder, tmp_path / "x.parquet", **FAST)
    with pytest.raises(ValueError, match="omit label_cols"):
        predict(survey, tree, tmp_path / "x.parquet", label_cols=["a"], **FAST)
    with pytest.raises(ValueError, match="n_samples"):
        predict(survey, tree, tmp_path / "x.parquet", n_samples=0, **FAST)


def test_bf16_is_close_to_fp32(survey, tree, tmp_path):
    files = predict(survey, tree, tmp_path / "bf16.parquet", precision="bf16", **FAST)
    fast = read_predictions_full(files.predictions).concentrations[..., 0]
    exact = direct(tree, survey)[..., 0]
    for start, end in SCHEMA.question_index_groups:
        answers = slice(start, end + 1)
        fractions = [a[:, answers] / a[:, answers].sum(1, keepdims=True) for a in (fast, exact)]
        assert np.abs(fractions[0] - fractions[1]).max() < 0.02


KILLED_RUN = """
import sys, time
from zoobot.tf.data import transforms
from zoobot.tf.predictions import predict

read_image = transforms.read_image
def slow_read_image(*args, **kwargs):
    time.sleep(0.1)  # a slow disk, so the run is still going when it is killed
    return read_image(*args, **kwargs)
transforms.read_image = slow_read_image
predict(sys.argv[1], sys.argv[2], sys.argv[3], n_samples=2, num_workers=1, **{fast})
"""


def test_a_killed_run_resumes_to_the_uninterrupted_table(survey, tree, tmp_path, monkeypatch):
    model_dir = save_pretrained(tree, tmp_path / "model")
    catalog_file = tmp_path / "catalog.parquet"
    survey.to_parquet(catalog_file)
    save_loc = tmp_path / "killed.parquet"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLED_RUN).format(fast=FAST))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(catalog_file), str(model_dir), str(save_loc)], env=env
    )
    first_part = tmp_path / "killed.parquet.parts" / "part-000000.parquet"
    deadline = time.monotonic() + 120
    while not first_part.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = sorted(p.name for p in first_part.parent.glob("part-*.parquet"))
    assert 1 <= len(done) < 3 and not save_loc.exists()

    keras.utils.set_random_seed(5)
    other = ZoobotTree(SCHEMA, ARCH)
    with pytest.raises(ValueError, match="different run.*weights"):
        predict(catalog_file, other, save_loc, n_samples=2, num_workers=1, **FAST)

    decoded = []
    read = data_transforms.read_image
    monkeypatch.setattr(
        data_transforms, "read_image", lambda path, *a: decoded.append(path) or read(path, *a)
    )
    # The in-memory model resumes the parts its saved copy wrote: the same weights.
    resumed = predict(catalog_file, tree, save_loc, 2, num_workers=1, **FAST)
    assert len(decoded) == 40 - 16 * len(done)
    reference = predict(survey, tree, tmp_path / "reference.parquet", 2, num_workers=1, **FAST)
    got, want = (read_predictions_full(f.predictions) for f in (resumed, reference))
    assert list(got.id_str) == list(want.id_str)
    np.testing.assert_array_equal(got.concentrations, want.concentrations)
    pd.testing.assert_frame_equal(
        pd.read_parquet(resumed.friendly), pd.read_parquet(reference.friendly)
    )
    assert not os.path.exists(f"{save_loc}.parts")
