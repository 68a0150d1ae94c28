"""zoobot.models.settings and tasks: training settings checked once with errors that name the
argument; the warmup + cosine factor; classifier arguments; output tables and names."""

import math

import pytest

from zoobot.models.settings import FIELDS, FINETUNING, PRETRAINING, TrainingSettings, warmup_cosine
from zoobot.models.tasks import classifier_args, output_table


def test_presets_differ_where_pretraining_and_finetuning_differ():
    assert (PRETRAINING.n_blocks, PRETRAINING.learning_rate, PRETRAINING.dropout) == (-1, 2e-3, 0.2)
    assert PRETRAINING.weight_decay == 0.01
    assert (FINETUNING.n_blocks, FINETUNING.learning_rate, FINETUNING.dropout) == (0, 1e-4, 0.5)
    assert set(PRETRAINING.as_dict()) == set(FIELDS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_blocks": -2}, "n_blocks must be -1"),
        ({"n_blocks": 1.5}, "n_blocks must be a whole number"),
        ({"lr_decay": 0}, r"lr_decay must be in \(0.0, 1.0\]"),
        ({"learning_rate": -1e-3}, r"learning_rate must be in \[0.0, inf\)"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"dropout": 1.0}, r"dropout must be in \[0.0, 1.0\)"),
        ({"warmup_steps": -1}, "warmup_steps must be a whole number >= 0"),
        ({"cosine": "yes"}, "cosine must be True or False"),
    ],
)
def test_each_bad_setting_is_named(change, message):
    with pytest.raises(ValueError, match=message):
        FINETUNING.replace(**change)


def test_unknown_settings_list_the_known_ones():
    with pytest.raises(TypeError, match="unknown training setting.*'lr'.*learning_rate"):
        FINETUNING.replace(lr=1e-3)
    settings, rest = TrainingSettings.split({"dropout": 0.1, "name": "x"})
    assert settings == {"dropout": 0.1} and rest == {"name": "x"}


def test_warmup_then_cosine():
    factors = [warmup_cosine(step, 4, 12) for step in range(14)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[8] == pytest.approx(0.5) and factors[12:] == [0.0, 0.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert warmup_cosine(100, 4, 12, cosine=False) == 1.0


def test_classifier_arguments_are_checked():
    assert classifier_args(2) == {"num_classes": 2, "label_smoothing": 0.0, "class_weights": None}
    named = classifier_args(2, class_weights=[1, 3], class_names=["a", "b"])
    assert named["class_weights"] == [1.0, 3.0] and named["class_names"] == ["a", "b"]
    with pytest.raises(ValueError, match="class_weights has 3 values for 2 classes"):
        classifier_args(2, class_weights=[1, 2, 3])
    with pytest.raises(ValueError, match="2 distinct names"):
        classifier_args(2, class_names=["a", "a"])
    with pytest.raises(ValueError, match="num_classes must be a whole number of at least 2"):
        classifier_args(1)


def test_output_tables_follow_the_task():
    kinds = {"tree": "tree", "finetuneable_tree": "tree", "classifier": "classifier"}
    for task, table in kinds.items():
        assert output_table(type("M", (), {"task": task})()) == table
    custom = type("M", (), {"task": "mine", "output_table": "regressor"})()
    assert output_table(custom) == "regressor"
    with pytest.raises(ValueError, match="get_representations"):
        output_table(object())
