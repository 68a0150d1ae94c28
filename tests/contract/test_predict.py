"""`predict` and `get_representations`, the same in every framework: the documented tables for trees,
classifiers and regressors, equal to a direct pass; Monte Carlo passes seeded; failures reported and
skipped; bf16 close to float32; a run killed with SIGKILL resumes to the uninterrupted table."""

import importlib
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
from contract import FAST, SCHEMA, SIZE

from zoobot.data.images import read_image
from zoobot.shared.tables import PCAProjection, friendly_table, read_predictions_full

# `predict` batches 8 images, `direct` all 40: oneDNN picks other kernels and sums in another
# order, a few float32 ulps per layer; over ~20 layers 1e-4 relative bounds it with room.
RTOL = 1e-4


@pytest.fixture(scope="module")
def tree(fw):
    fw.seed(0)
    return fw.package.ZoobotTree(SCHEMA, "resnet10t")


def direct(fw, model, catalog: pd.DataFrame) -> np.ndarray:
    """One deterministic pass of the model over the catalog's images, in one batch."""
    images = np.stack([read_image(path, SIZE) for path in catalog["file_loc"]])
    return fw.backend.predict_batch(model, images)


def test_tree_model_writes_full_and_friendly_tables_equal_to_a_forward_pass(
    fw, survey, tree, tmp_path
):
    files = fw.package.predict(survey, tree, tmp_path / "votes.parquet", **FAST)
    assert (files.n_predicted, files.n_failed) == (40, 0)
    assert files.friendly == tmp_path / "votes_friendly.parquet"
    full = read_predictions_full(files.predictions)
    assert full.schema == SCHEMA and full.model_name == "ZoobotTree"
    assert list(full.id_str) == list(survey["id_str"]) and isinstance(full.id_str[0], str)
    np.testing.assert_allclose(full.concentrations[..., 0], direct(fw, tree, survey), rtol=RTOL)

    friendly = pd.read_parquet(files.friendly)
    expected = friendly_table(full.id_str, full.concentrations, SCHEMA)
    pd.testing.assert_frame_equal(friendly, expected, check_dtype=False)
    assert pd.api.types.is_string_dtype(friendly["id_str"])
    assert pd.read_csv(files.failed).columns.tolist() == ["id_str", "file_loc", "error"]
    assert not (tmp_path / "votes.parquet.parts").exists()


def test_monte_carlo_passes_differ_and_repeat_with_the_seed(fw, survey, tree, tmp_path):
    first = fw.package.predict(survey, tree, tmp_path / "a.parquet", n_samples=3, **FAST)
    again = fw.package.predict(survey, tree, tmp_path / "b.parquet", n_samples=3, **FAST)
    alpha = read_predictions_full(first.predictions).concentrations
    assert alpha.shape == (40, len(SCHEMA.label_cols), 3)
    assert not np.allclose(alpha[..., 0], alpha[..., 1])
    # each chunk's dropout is seeded from the seed and the chunk: the same draws, the same batches
    np.testing.assert_array_equal(alpha, read_predictions_full(again.predictions).concentrations)
    # Dropout moves each pass's concentrations by a few percent (the head's output is exp of a
    # linear map of them): 3 passes average to the deterministic forward within 0.1 in log (10%),
    # a statistical bound for this model and seed, not a float32 one.
    centre = np.log(alpha).mean(2)
    np.testing.assert_allclose(centre, np.log(direct(fw, tree, survey)), rtol=0, atol=0.1)


def test_classifier_table_has_probability_columns_and_passes(fw, survey, tmp_path):
    fw.seed(1)
    model = fw.package.FinetuneableZoobotClassifier(3, name="resnet10t")
    names = ["ring", "lens", "other"]
    files = fw.package.predict(
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
    probabilities = df[[f"{n}_probability" for n in names]].to_numpy()
    np.testing.assert_allclose(probabilities, direct(fw, model, survey), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    passes = np.stack([np.stack(df[f"{n}_probability_passes"]) for n in names], 1)
    np.testing.assert_allclose(passes.mean(2), probabilities, rtol=1e-6)


def test_a_named_classifier_names_its_columns(fw, survey, tmp_path):
    model = fw.package.FinetuneableZoobotClassifier(
        2, name="resnet10t", class_names=["ring", "no ring"]
    )
    files = fw.package.predict(survey.head(8), model, tmp_path / "named.parquet", **FAST)
    columns = pq.read_table(files.predictions).column_names
    assert columns == ["id_str", "ring_probability", "no ring_probability"]


def test_regressor_table_names_outputs(fw, survey, tmp_path):
    model = fw.package.FinetuneableZoobotRegressor(
        name="resnet10t", num_outputs=2, unit_interval=True
    )
    files = fw.package.predict(survey, model, tmp_path / "r.parquet", **FAST)
    df = pd.read_parquet(files.predictions)
    assert df.columns.tolist() == ["id_str", "output_0_prediction", "output_1_prediction"]
    np.testing.assert_allclose(
        df.iloc[:, 1:].to_numpy(), direct(fw, model, survey), rtol=RTOL, atol=1e-6
    )


def test_bf16_is_close_to_fp32(fw, survey, tree, tmp_path):
    files = fw.package.predict(survey, tree, tmp_path / "bf16.parquet", precision="bf16", **FAST)
    fast = read_predictions_full(files.predictions).concentrations[..., 0]
    exact = direct(fw, tree, survey)
    for start, end in SCHEMA.question_index_groups:
        answers = slice(start, end + 1)
        fractions = [a[:, answers] / a[:, answers].sum(1, keepdims=True) for a in (fast, exact)]
        # bf16 keeps 8 bits of mantissa: features move by ~0.4%, fractions by well under 0.02
        assert np.abs(fractions[0] - fractions[1]).max() < 0.02


def test_unreadable_images_are_reported_and_the_rest_predicted(fw, survey, tree, tmp_path):
    catalog = survey.copy()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    catalog.loc[5, "file_loc"] = str(broken)
    catalog.loc[21, "file_loc"] = str(tmp_path / "missing.jpg")
    files = fw.package.predict(catalog, tree, tmp_path / "p.parquet", num_workers=1, **FAST)
    assert (files.n_predicted, files.n_failed) == (38, 2)
    failed = pd.read_csv(files.failed, dtype=str)
    assert failed["id_str"].tolist() == [catalog.id_str[5], catalog.id_str[21]]
    assert failed["file_loc"].tolist() == [str(broken), str(tmp_path / "missing.jpg")]
    assert "not a JPEG or PNG" in failed["error"][0] and "cannot read" in failed["error"][1]
    full = read_predictions_full(files.predictions)
    kept = catalog.drop(index=[5, 21])
    assert list(full.id_str) == list(kept["id_str"])
    np.testing.assert_allclose(
        full.concentrations[..., 0], direct(fw, tree, survey.loc[kept.index]), rtol=RTOL
    )


def test_predict_refuses_an_encoder_and_checks_arguments(fw, survey, tree, tmp_path):
    with pytest.raises(ValueError, match="get_representations"):
        fw.package.predict(survey, tree.encoder, tmp_path / "x.parquet", **FAST)
    with pytest.raises(ValueError, match="omit label_cols"):
        fw.package.predict(survey, tree, tmp_path / "x.parquet", label_cols=["a"], **FAST)
    with pytest.raises(ValueError, match="n_samples"):
        fw.package.predict(survey, tree, tmp_path / "x.parquet", n_samples=0, **FAST)


def test_representations_tables_and_a_reusable_projection(fw, survey, tree, tmp_path):
    raw = fw.package.get_representations(survey, tree, tmp_path / "features.parquet", **FAST)
    assert (raw.n_represented, raw.n_failed, raw.pca) == (40, 0, None)
    features = pd.read_parquet(raw.representations)
    width = fw.backend.encoder_dim(tree.encoder)
    assert features.columns.tolist() == ["id_str", *(f"feat_{i}" for i in range(width))]
    assert (features.dtypes.iloc[1:] == np.float32).all()
    assert features["id_str"].tolist() == survey["id_str"].tolist()
    np.testing.assert_allclose(
        features.iloc[:, 1:].to_numpy(), direct(fw, tree.encoder, survey), rtol=RTOL, atol=1e-6
    )

    files = fw.package.get_representations(
        survey, tree.encoder, tmp_path / "pca.parquet", n_components=4, **FAST
    )
    compressed = pd.read_parquet(files.representations)
    assert compressed.columns.tolist() == ["id_str", *(f"feat_pca_{i}" for i in range(4))]
    projection = PCAProjection(**np.load(files.pca))
    np.testing.assert_allclose(
        compressed.iloc[:, 1:].to_numpy(),
        projection.transform(features.iloc[:, 1:].to_numpy()),
        rtol=1e-4,
        atol=1e-4,
    )
    nearest = fw.package.similar_galaxies(files.representations, [survey.id_str[3]], k=3)
    assert nearest["rank"].tolist() == [1, 2, 3]


def test_an_unreadable_image_is_reported_by_representations(fw, survey, tree, tmp_path):
    catalog = survey.iloc[:24].copy()
    catalog.loc[7, "file_loc"] = str(tmp_path / "missing.png")
    files = fw.package.get_representations(catalog, tree, tmp_path / "f.parquet", **FAST)
    assert (files.n_represented, files.n_failed) == (23, 1)
    assert pd.read_csv(files.failed, dtype=str)["id_str"].tolist() == [catalog.id_str[7]]
    assert catalog.id_str[7] not in set(pd.read_parquet(files.representations)["id_str"])


KILLED_RUN = """
import sys, time, importlib
package = importlib.import_module({package!r})
reader = importlib.import_module({reader_module!r})
read_image = getattr(reader, {reader_name!r})
def slow_read_image(*args, **kwargs):
    time.sleep(0.1)  # a slow disk, so the run is still going when it is killed
    return read_image(*args, **kwargs)
setattr(reader, {reader_name!r}, slow_read_image)
if {threads!r} is not None:  # the parent's: thread counts change float sums
    importlib.import_module({package!r} + ".backend").BACKEND.set_threads({threads!r})
package.predict(sys.argv[1], sys.argv[2], sys.argv[3], n_samples=2, num_workers=0, **{fast!r})
"""


def test_a_killed_run_resumes_to_the_uninterrupted_table(fw, survey, tree, tmp_path, monkeypatch):
    model_dir = tree.save_pretrained(tmp_path / "model")
    catalog_file = tmp_path / "catalog.parquet"
    survey.to_parquet(catalog_file)
    save_loc = tmp_path / "killed.parquet"
    script = tmp_path / "run.py"
    reader_module, reader_name = fw.reader
    script.write_text(
        textwrap.dedent(KILLED_RUN).format(
            package=fw.package.__name__,
            reader_module=reader_module,
            reader_name=reader_name,
            threads=fw.threads(),
            fast=FAST,
        )
    )
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

    fw.seed(5)
    other = fw.package.ZoobotTree(SCHEMA, "resnet10t")
    with pytest.raises(ValueError, match="different run.*weights"):
        fw.package.predict(catalog_file, other, save_loc, n_samples=2, num_workers=0, **FAST)

    decoded = []  # decoded in this process (num_workers=0), so the reads are counted here
    reader = importlib.import_module(reader_module)
    read = getattr(reader, reader_name)
    monkeypatch.setattr(
        reader, reader_name, lambda path, *a: decoded.append(path) or read(path, *a)
    )
    resumed = fw.package.predict(catalog_file, str(model_dir), save_loc, 2, num_workers=0, **FAST)
    assert len(decoded) == 40 - 16 * len(done)
    reference = fw.package.predict(
        survey, tree, tmp_path / "reference.parquet", 2, num_workers=0, **FAST
    )
    got, want = (read_predictions_full(f.predictions) for f in (resumed, reference))
    assert list(got.id_str) == list(want.id_str)
    # chunks resumed run the same batches through the same weights, kernels and thread count,
    # with dropout seeded per chunk: bit for bit the uninterrupted run
    np.testing.assert_array_equal(got.concentrations, want.concentrations)
    pd.testing.assert_frame_equal(
        pd.read_parquet(resumed.friendly), pd.read_parquet(reference.friendly)
    )
    assert not os.path.exists(f"{save_loc}.parts")
