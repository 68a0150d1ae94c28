"""predict: the documented tables for trees, classifiers and regressors, equal to a direct forward
pass; failures reported and skipped; a run killed with SIGKILL resumes to the uninterrupted table.

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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zoobot.data.images import read_image
from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.shared.tables import friendly_table, read_predictions_full
from zoobot.torch import (
    FinetuneableZoobotClassifier,
    FinetuneableZoobotRegressor,
    ZoobotTree,
    save_pretrained,
    streaming,
)
from zoobot.torch.encoders import load_encoder
from zoobot.torch.predictions import predict
from zoobot.torch.transforms import eval_transform

SCHEMA = get_schema("decals_dr5")
SIZE = 32
FAST = {"image_size": SIZE, "batch_size": 8, "chunk_rows": 16, "progress": False}


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> pd.DataFrame:
    """40 synthetic DECaLS DR5 galaxies, 48 px JPEGs."""
    out = tmp_path_factory.mktemp("survey")
    return make_survey(40, out, schema=SCHEMA, image_size=48, seed=7, progress=False)


@pytest.fixture(scope="module")
def tree() -> ZoobotTree:
    torch.manual_seed(0)
    return ZoobotTree(SCHEMA, "resnet10t").eval()


def direct(model, catalog: pd.DataFrame, n_samples: int = 1) -> np.ndarray:
    """The model's predictions, image by image through the evaluation transform, in one batch."""
    transform = eval_transform()
    images = torch.stack([transform(read_image(path, SIZE)) for path in catalog["file_loc"]])
    with torch.inference_mode():
        return model.eval().predict_samples(images, n_samples).numpy()


def test_tree_model_writes_full_and_friendly_tables_equal_to_a_forward_pass(survey, tree, tmp_path):
    files = predict(survey, tree, tmp_path / "votes.parquet", channels_last=False, **FAST)
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
    first = predict(survey, tree, tmp_path / "a.parquet", n_samples=3, **FAST)
    again = predict(survey, tree, tmp_path / "b.parquet", n_samples=3, **FAST)
    alpha = read_predictions_full(first.predictions).concentrations
    assert alpha.shape == (40, len(SCHEMA.label_cols), 3)
    assert not np.allclose(alpha[..., 0], alpha[..., 1])
    np.testing.assert_array_equal(alpha, read_predictions_full(again.predictions).concentrations)
    np.testing.assert_allclose(alpha.mean(2), direct(tree, survey)[..., 0], rtol=0.05)


def test_classifier_table_has_probability_columns_and_passes(survey, tmp_path):
    torch.manual_seed(1)
    model = FinetuneableZoobotClassifier(3, name="resnet10t")
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
    model = FinetuneableZoobotClassifier(2, name="resnet10t", class_names=["ring", "no ring"])
    files = predict(survey.head(8), model, tmp_path / "named.parquet", **FAST)
    columns = pq.read_table(files.predictions).column_names
    assert columns == ["id_str", "ring_probability", "no ring_probability"]


def test_regressor_table_names_outputs(survey, tmp_path):
    model = FinetuneableZoobotRegressor(name="resnet10t", num_outputs=2, unit_interval=True)
    files = predict(survey, model, tmp_path / "r.parquet", **FAST)
    df = pd.read_parquet(files.predictions)
    assert df.columns.tolist() == ["id_str", "output_0_prediction", "output_1_prediction"]
    np.testing.assert_allclose(
        df.iloc[:, 1:].to_numpy(), direct(model, survey)[..., 0], rtol=1e-4, atol=1e-6
    )


def test_bf16_channels_last_is_close_to_fp32(survey, tree, tmp_path):
    files = predict(survey, tree, tmp_path / "bf16.parquet", precision="bf16", **FAST)
    fast = read_predictions_full(files.predictions).concentrations[..., 0]
    exact = direct(tree, survey)[..., 0]
    for start, end in SCHEMA.question_index_groups:
        answers = slice(start, end + 1)
        fractions = [a[:, answers] / a[:, answers].sum(1, keepdims=True) for a in (fast, exact)]
        assert np.abs(fractions[0] - fractions[1]).max() < 0.01


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


def test_predict_refuses_an_encoder(survey, tmp_path):
    with pytest.raises(ValueError, match="get_representations"):
        predict(survey, load_encoder("resnet10t"), tmp_path / "x.parquet", **FAST)


KILLED_RUN = """
import sys, time
import torch
from zoobot.torch import streaming
from zoobot.torch.predictions import predict

read_image = streaming.read_image
def slow_read_image(path, size):
    time.sleep(0.05)  # a slow disk, so the run is still going when it is killed
    return read_image(path, size)
streaming.read_image = slow_read_image
torch.set_num_threads(int(sys.argv[4]))  # the parent's: thread counts change float sums
predict(sys.argv[1], sys.argv[2], sys.argv[3], n_samples=2, num_workers=0, **{fast})
"""


def test_a_killed_run_resumes_to_the_uninterrupted_table(survey, tree, tmp_path, monkeypatch):
    model_dir = save_pretrained(tree, tmp_path / "model")
    catalog_file = tmp_path / "catalog.parquet"
    survey.to_parquet(catalog_file)
    save_loc = tmp_path / "killed.parquet"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLED_RUN).format(fast=FAST))
    process = subprocess.Popen(
        [sys.executable, str(script), str(catalog_file), str(model_dir), str(save_loc)]
        + [str(torch.get_num_threads())]
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

    other = ZoobotTree(SCHEMA, "resnet10t")
    with pytest.raises(ValueError, match="different run.*weights"):
        predict(catalog_file, other, save_loc, n_samples=2, num_workers=0, **FAST)

    decoded = []
    monkeypatch.setattr(
        streaming, "read_image", lambda path, size: decoded.append(path) or read_image(path, size)
    )
    resumed = predict(catalog_file, str(model_dir), save_loc, 2, num_workers=0, **FAST)
    assert len(decoded) == 40 - 16 * len(done)
    reference = predict(survey, tree, tmp_path / "reference.parquet", 2, num_workers=0, **FAST)
    got, want = (read_predictions_full(f.predictions) for f in (resumed, reference))
    assert list(got.id_str) == list(want.id_str)
    np.testing.assert_array_equal(got.concentrations, want.concentrations)
    pd.testing.assert_frame_equal(
        pd.read_parquet(resumed.friendly), pd.read_parquet(reference.friendly)
    )
    assert not os.path.exists(f"{save_loc}.parts")
