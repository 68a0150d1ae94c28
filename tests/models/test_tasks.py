"""zoobot.models.tasks for decision trees: the head's concentration range and the loss's
vote-fraction weight checked once, configs saved before either option rebuilt as they were
trained, and which augmentation a task trains with."""

import math

import pytest

from zoobot.models.tasks import (
    DEFAULT_CONCENTRATION,
    DEFAULT_FRACTION_WEIGHT,
    checked_concentration,
    checked_fraction_weight,
    log_concentration_scale,
    saved_tree_args,
    training_augmentation,
    tree_args,
)
from zoobot.shared import get_schema


class Tree:
    task = "tree"


class Classifier:
    task = "classifier"


def test_concentration_range_is_checked_and_saved_as_a_list():
    assert checked_concentration(None) is None
    assert checked_concentration((0.01, 1000)) == [0.01, 1000.0]
    for bad in ((1.0, 1.0), (0.0, 10.0), (5.0, 1.0), (1.0,), (1.0, math.inf), (True, 2.0), 3.0):
        with pytest.raises(ValueError, match="0 < low < high"):
            checked_concentration(bad)
    args = tree_args(get_schema("gz_rings"), DEFAULT_CONCENTRATION, DEFAULT_FRACTION_WEIGHT)
    assert args["concentration"] == list(DEFAULT_CONCENTRATION)
    assert args["schema"] == get_schema("gz_rings").to_dict()
    assert args["fraction_weight"] == DEFAULT_FRACTION_WEIGHT


def test_fraction_weight_is_checked_and_saved_as_a_float():
    assert checked_fraction_weight(0) == 0.0 and isinstance(checked_fraction_weight(3), float)
    for bad in (-0.5, math.inf, math.nan, True, "10", None):
        with pytest.raises(ValueError, match="fraction_weight must be a finite number >= 0"):
            checked_fraction_weight(bad)


def test_log_scale_puts_the_range_s_ends_at_sigmoid_0_and_1():
    a, b = log_concentration_scale((0.01, 1000.0))
    assert math.exp(a) == pytest.approx(0.01, rel=1e-15)  # float64 log/exp round trip
    assert math.exp(a + b) == pytest.approx(1000.0, rel=1e-15)
    assert math.exp(a + b / 2) == pytest.approx(math.sqrt(10.0), rel=1e-15)  # geometric middle


def test_a_config_without_concentration_is_the_old_sigmoid_head():
    assert saved_tree_args({"schema": {}})["concentration"] is None
    assert saved_tree_args({"concentration": [0.1, 10.0]})["concentration"] == [0.1, 10.0]


def test_a_config_without_fraction_weight_trains_on_the_likelihood_alone():
    assert saved_tree_args({"schema": {}})["fraction_weight"] == 0.0
    assert saved_tree_args({"fraction_weight": 10.0})["fraction_weight"] == 10.0


def test_trees_train_with_label_preserving_augmentation_by_default():
    assert training_augmentation(Tree(), None) == "dihedral"
    assert training_augmentation(Classifier(), None) == "full"
    assert training_augmentation(Tree(), "none") == "none"
    with pytest.raises(ValueError, match="augment must be one of"):
        training_augmentation(Tree(), "zoom")
