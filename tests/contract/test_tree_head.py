"""A tree's Dirichlet head, the same in every framework: concentrations in the log-spaced range
the model was built with (by default `DEFAULT_CONCENTRATION`), saved in config.json so a reloaded
model rebuilds the same head; a config saved before the option reloads with the 1 + 100 sigmoid
head it had; trees train with the label-preserving augmentation unless told otherwise."""

import json

import numpy as np
import pytest
from contract import SCHEMA, images

from zoobot.models.tasks import DEFAULT_CONCENTRATION, DEFAULT_FRACTION_WEIGHT

ENCODER = "test_convnext"


def outputs(fw, model) -> np.ndarray:
    return fw.backend.predict_batch(model, images(4))


def test_default_head_is_log_spaced_and_saved(fw, tmp_path):
    fw.seed(0)
    model = fw.package.ZoobotTree(SCHEMA, ENCODER)
    low, high = DEFAULT_CONCENTRATION
    assert model.task_config()["concentration"] == [low, high]
    out = outputs(fw, model)
    # float32 exp of values in [log low, log high]: a few ulp past either end at most
    assert (out >= low * (1 - 1e-6)).all() and (out <= high * (1 + 1e-6)).all()
    folder = model.save_pretrained(tmp_path / "tree")
    saved = json.loads((folder / "config.json").read_text())["zoobot"]
    assert saved["concentration"] == [low, high]


def test_a_range_is_kept_through_save_and_reload(fw, tmp_path):
    fw.seed(0)
    model = fw.package.ZoobotTree(SCHEMA, ENCODER, concentration=(0.5, 50.0))
    out = outputs(fw, model)
    assert (out >= 0.5 * (1 - 1e-6)).all() and (out <= 50.0 * (1 + 1e-6)).all()
    reloaded = fw.package.from_pretrained(str(model.save_pretrained(tmp_path / "tree")))
    assert reloaded.task_config()["concentration"] == [0.5, 50.0]
    # the same weights through the same kernels on the same batch: equal bit for bit
    np.testing.assert_array_equal(outputs(fw, reloaded), out)


def test_a_config_from_before_the_option_reloads_the_sigmoid_head(fw, tmp_path):
    fw.seed(0)
    model = fw.package.ZoobotTree(SCHEMA, ENCODER, concentration=None)
    out = outputs(fw, model)
    assert (out >= 1.0).all() and (out <= 101.0).all()
    folder = model.save_pretrained(tmp_path / "tree")
    config = json.loads((folder / "config.json").read_text())
    del config["zoobot"]["concentration"]  # as every tree saved before the option
    (folder / "config.json").write_text(json.dumps(config))
    reloaded = fw.package.from_pretrained(str(folder))
    assert reloaded.task_config()["concentration"] is None
    np.testing.assert_array_equal(outputs(fw, reloaded), out)


def test_the_fraction_weight_is_saved_and_older_trees_keep_the_likelihood_alone(fw, tmp_path):
    fw.seed(0)
    model = fw.package.ZoobotTree(SCHEMA, ENCODER)
    assert model.fraction_weight == DEFAULT_FRACTION_WEIGHT > 0
    folder = model.save_pretrained(tmp_path / "tree")
    config = json.loads((folder / "config.json").read_text())
    assert config["zoobot"]["fraction_weight"] == DEFAULT_FRACTION_WEIGHT
    assert fw.package.from_pretrained(str(folder)).fraction_weight == DEFAULT_FRACTION_WEIGHT
    del config["zoobot"]["fraction_weight"]  # as every tree saved before the option
    (folder / "config.json").write_text(json.dumps(config))
    assert fw.package.from_pretrained(str(folder)).fraction_weight == 0.0


def test_a_bad_range_or_augmentation_is_refused_before_training(fw, survey, tmp_path):
    with pytest.raises(ValueError, match="0 < low < high"):
        fw.package.ZoobotTree(SCHEMA, ENCODER, concentration=(10.0, 1.0))
    for weight in (-1.0, float("nan"), "10"):
        with pytest.raises(ValueError, match="fraction_weight must be a finite number >= 0"):
            fw.package.ZoobotTree(SCHEMA, ENCODER, fraction_weight=weight)
    with pytest.raises(ValueError, match="augment must be one of dihedral, full, none"):
        fw.package.train(
            survey, SCHEMA, tmp_path / "run", architecture=ENCODER, epochs=1, augment="zoom"
        )
