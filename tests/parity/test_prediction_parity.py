"""Check 4: `predict` with each backend on the same catalog and the same saved model folder.

A `ZoobotTree` (full + friendly tables) and a `FinetuneableZoobotClassifier` (probabilities), with
random weights (randomised norms and BatchNorm statistics, see `parity.randomise_torch`), are saved
once in the Hub layout by zoobot.torch; `zoobot.torch.predictions.predict` and `zoobot.tf.predictions.
predict` run on the same 16 synthetic galaxies (64 px JPEGs) from that folder. The tables must have
the same columns in the same order, the same ids, and values within 1e-4 relative to the scale of
each column (concentrations, fractions, bounds, probabilities). One pass, no MC dropout: the two
frameworks' dropout masks are not the same random numbers.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest
from parity import compare, compare_equal, randomise_torch

ARCHITECTURE = "resnet18"
SCHEMA = "decals_dr5"
IMAGE_SIZE = 64
TOLERANCE = 1e-4
N_GALAXIES = 16


def _as_matrix(column: pd.Series) -> np.ndarray:
    """A numeric column, or a column of per-pass lists, as float64 (rows, values)."""
    values = column.to_list()
    return np.asarray([np.atleast_1d(np.asarray(v, np.float64)) for v in values])


def _table_checks(name: str, actual: pd.DataFrame, reference: pd.DataFrame) -> list:
    checks = [
        compare_equal(f"{name} columns", list(actual.columns), list(reference.columns),
                      group="predictions", note=f"{len(reference.columns)} columns"),
        compare_equal(f"{name} id_str", actual["id_str"].astype(str), reference["id_str"].astype(str),
                      group="predictions"),
    ]  # fmt: skip
    if not checks[0].passed:
        return checks
    numeric = [c for c in reference.columns if c != "id_str"]
    per_column = [
        (column, compare(f"{name} values", _as_matrix(actual[column]),
                         _as_matrix(reference[column]), TOLERANCE, group="predictions"))
        for column in numeric
    ]  # fmt: skip
    column, worst = max(per_column, key=lambda cc: (not cc[1].passed, cc[1].max_rel))
    worst.note = f"worst of {len(numeric)} columns: {column}, relative to that column's scale"
    checks.append(worst)
    return checks


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    import torch

    import zoobot.torch
    from zoobot.torch.pretrained import save_pretrained

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    encoder = randomise_torch(zoobot.torch.load_encoder(ARCHITECTURE), seed=1)
    tree = zoobot.torch.ZoobotTree(SCHEMA, encoder=encoder)
    classifier = zoobot.torch.FinetuneableZoobotClassifier(num_classes=3, encoder=encoder)
    return {
        "tree": save_pretrained(tree, folder / "tree"),
        "classifier": save_pretrained(classifier, folder / "classifier"),
    }


def _predict_both(catalog, folder, tmp_path, suffix=".parquet"):
    from zoobot.torch.predictions import predict as torch_predict

    tf_predict = importlib.import_module("zoobot.tf.predictions")
    importlib.import_module("zoobot.tf.tree")
    importlib.import_module("zoobot.tf.finetune")
    options = {"image_size": IMAGE_SIZE, "batch_size": 8, "progress": False}
    torch_files = torch_predict(
        catalog, folder, tmp_path / f"torch{suffix}", num_workers=0, **options
    )
    tf_files = tf_predict.predict(catalog, folder, tmp_path / f"tf{suffix}", **options)
    return torch_files, tf_files


def test_tree_predictions_match(recorder, survey, model_folders, tmp_path):
    catalog = survey.iloc[:N_GALAXIES][["id_str", "file_loc"]]
    torch_files, tf_files = _predict_both(catalog, model_folders["tree"], tmp_path)
    assert torch_files.n_predicted == tf_files.n_predicted == N_GALAXIES
    recorder.record(
        *_table_checks("tree full table", pd.read_parquet(tf_files.predictions),
                       pd.read_parquet(torch_files.predictions)),
        *_table_checks("tree friendly table", pd.read_parquet(tf_files.friendly),
                       pd.read_parquet(torch_files.friendly)),
    )  # fmt: skip


def test_classifier_predictions_match(recorder, survey, model_folders, tmp_path):
    catalog = survey.iloc[:N_GALAXIES][["id_str", "file_loc"]]
    torch_files, tf_files = _predict_both(catalog, model_folders["classifier"], tmp_path)
    recorder.record(
        *_table_checks("classifier table", pd.read_parquet(tf_files.predictions),
                       pd.read_parquet(torch_files.predictions)),
    )  # fmt: skip
