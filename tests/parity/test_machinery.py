"""The parity machinery itself: its measures, its report, and that broken mappings are caught.

Each "broken on purpose" test builds the real quantity of a parity check with one deliberate
mistake (a loss sign flipped on one question, a different resize or normalisation in the TF
pipeline, a transposed convolution kernel in the converted weights) and asserts that the check's
comparison reports a failure, and that the unbroken version passes. These use `compare` directly,
so they record nothing in the session's report.
"""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
from parity import (
    Check,
    ParityFailure,
    Recorder,
    compare,
    compare_equal,
    markdown_report,
    randomise_torch,
    write_report,
)

from zoobot.shared import dirichlet_multinomial_nll, get_schema

# ---------------------------------------------------------------------------------------------
# The measures


def test_scale_relative_difference_is_relative_to_the_reference_scale():
    reference = np.array([[10.0, -20.0], [0.0, 5.0]])
    check = compare("x", reference + [[0, 0], [0.002, 0]], reference, 1e-4)
    assert check.max_abs == pytest.approx(0.002)
    assert check.max_rel == pytest.approx(0.002 / 20)
    assert check.passed
    assert not compare("x", reference + [[0, 0], [0.01, 0]], reference, 1e-4).passed


def test_elementwise_relative_needs_exact_zeros_where_the_reference_is_zero():
    reference = np.array([1.0, 0.0, 100.0])
    assert compare("l", [1.0 + 1e-8, 0.0, 100.0], reference, 1e-6, relative="elementwise").passed
    small = compare("l", [1.0, 0.0, 100.001], reference, 1e-6, relative="elementwise")
    assert small.max_rel == pytest.approx(1e-5) and not small.passed
    nonzero = compare("l", [1.0, 1e-30, 100.0], reference, 1e-6, relative="elementwise")
    assert math.isinf(nonzero.max_rel) and not nonzero.passed


def test_shape_mismatch_nan_and_abs_mode_fail_or_pass_as_they_should():
    assert not compare("s", np.zeros((2, 3)), np.zeros((3, 2)), 1.0).passed
    assert not compare("n", [1.0, np.nan], [1.0, 2.0], 1.0).passed
    assert compare("a", 0.71, 0.75, 0.1, relative="abs").passed
    assert not compare("a", 0.6, 0.75, 0.1, relative="abs").passed
    assert compare_equal("c", ["a", "b"], ["a", "b"]).passed
    assert not compare_equal("c", ["a", "c"], ["a", "b"]).passed


def test_recorder_records_every_check_and_raises_on_failure(tmp_path):
    recorder = Recorder()
    recorder.current_test = "test_x"
    good = compare("good", [1.0], [1.0], 1e-6, group="g")
    bad = compare("bad", [2.0], [1.0], 1e-6, group="g")
    with pytest.raises(ParityFailure, match="g/bad"):
        recorder.record(good, bad)
    assert [c.name for c in recorder.checks] == ["good", "bad"]
    assert [c.status for c in recorder.checks] == ["pass", "FAIL"]
    md, js = write_report(recorder, tmp_path)
    text = md.read_text()
    assert "| g | bad | 1.00e+00 | 1.00e+00 | 1.00e-06 | scale | FAIL |" in text
    data = json.loads(js.read_text())
    assert data["passed"] is False and data["summary"] == {"pass": 1, "FAIL": 1}
    assert data["checks"][1]["test"] == "test_x"


def test_a_jax_run_joins_the_tf_run_side_by_side(tmp_path):
    """The TF run writes the report afresh; the JAX run adds its checks, and the side-by-side table
    has one row per check with the torch-only value and each run's in its own column."""
    tf_run = Recorder(run="tf")
    tf_run.record(
        compare("torch gz2 float32 loss", [1.0], [1.0], 1e-5, group="loss"),
        compare("tf gz2 float32 loss", [1.0 + 1e-7], [1.0], 1e-5, group="loss"),
        compare("m torch->tf features", [2.0], [2.0], 1e-4, group="encoders"),
    )
    write_report(tf_run, tmp_path)
    jax_run = Recorder(run="jax")
    jax_run.record(
        compare("jax gz2 float32 loss", [1.0 + 2e-6], [1.0], 1e-5, group="loss"),
        compare("m torch->jax features", [2.0], [2.0], 1e-4, group="encoders"),
    )
    md, js = write_report(jax_run, tmp_path)
    data = json.loads(js.read_text())
    assert sorted(data["runs"]) == ["jax", "tf"] and len(data["checks"]) == 5
    text = md.read_text()
    assert "| loss | torch gz2 float32 loss | 1.00e-05 | scale | 0 pass |  |  |" in text
    assert (
        "| loss | keras gz2 float32 loss | 1.00e-05 | scale |  | 1.00e-07 pass | 2.00e-06 pass |"
        in text
    )
    assert "| encoders | m torch->keras features | 1.00e-04 | scale |  | 0 pass | 0 pass |" in text
    write_report(tf_run, tmp_path)  # a new TF run starts afresh
    assert sorted(json.loads(js.read_text())["runs"]) == ["tf"]


def test_report_rows_escape_pipes_and_show_inf():
    recorder = Recorder(checks=[Check("g", "a|b", math.inf, math.inf, 0.0, "abs", False)])
    assert "| g | a|b | inf | inf | 0 | abs | FAIL |" in markdown_report(recorder)


# ---------------------------------------------------------------------------------------------
# Broken on purpose: the matching check must fail


def _votes(schema, rng):
    alpha = rng.uniform(1, 101, size=(16, len(schema.label_cols)))
    counts = rng.integers(0, 30, size=alpha.shape).astype(float)
    return counts, alpha


def test_loss_with_one_question_sign_flipped_fails():
    import torch

    from zoobot.torch.loss import dirichlet_multinomial_loss

    schema = get_schema("decals_dr5")
    counts, alpha = _votes(schema, np.random.default_rng(0))
    reference = dirichlet_multinomial_nll(counts, alpha, schema)
    loss = dirichlet_multinomial_loss(torch.tensor(counts), torch.tensor(alpha), schema).numpy()
    assert compare("loss", loss, reference, 1e-6, relative="elementwise").passed
    broken = loss.copy()
    broken[:, 3] *= -1
    check = compare("loss", broken, reference, 1e-6, relative="elementwise")
    assert not check.passed and check.max_rel == pytest.approx(2.0)


def test_tf_loss_with_one_question_sign_flipped_fails(monkeypatch):
    tf_loss = importlib.import_module("zoobot.tf.loss")
    import tensorflow as tf

    schema = get_schema("gz2")
    counts, alpha = _votes(schema, np.random.default_rng(1))
    reference = dirichlet_multinomial_nll(counts, alpha, schema)
    original = tf_loss.dirichlet_multinomial_loss
    flip = np.ones(len(schema.questions))
    flip[2] = -1

    def flipped(*args, **kwargs):
        return original(*args, **kwargs) * tf.constant(flip, dtype=tf.float64)

    monkeypatch.setattr(tf_loss, "dirichlet_multinomial_loss", flipped)
    loss = tf_loss.dirichlet_multinomial_loss(
        tf.constant(counts), tf.constant(alpha), schema
    ).numpy()
    assert not compare("loss", loss, reference, 1e-6, relative="elementwise").passed


def _jpeg(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    y, x = np.mgrid[:150, :150] / 150 - 0.5
    pixels = np.exp(-np.hypot(x, y)[..., None] / [0.1, 0.12, 0.15]) + rng.normal(0, 0.05, (1, 1, 3))
    path = tmp_path / "galaxy.jpg"
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)
    return path


def _torch_eval(path, size, channels=3):
    from zoobot.data.images import read_image
    from zoobot.torch.data.transforms import eval_transform

    return eval_transform(channels)(read_image(path, size)).numpy().transpose(1, 2, 0)


def _tf_eval(path, size, channels=3, **kwargs):
    import pandas as pd

    data = importlib.import_module("zoobot.tf.data")
    catalog = pd.DataFrame({"id_str": ["g"], "file_loc": [str(path)]})
    batch = next(iter(data.eval_dataset(catalog, size, channels, batch_size=1, **kwargs)))
    return batch["image"].numpy()[0]


def test_tf_preprocessing_with_a_different_resize_fails(tmp_path, monkeypatch):
    path = _jpeg(tmp_path)
    reference = _torch_eval(path, 64)
    assert compare("pixels", _tf_eval(path, 64), reference, 0.0).passed

    import tensorflow as tf

    pipelines = importlib.import_module("zoobot.tf.data.pipelines")

    def tf_resize(source, image_size, is_path, strict=False):
        """TF's own decode + bilinear resize instead of zoobot.data.images.read_image."""
        data = tf.io.read_file(source) if is_path else source
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.resize(image, [image_size, image_size], "bilinear", antialias=True)
        return tf.cast(tf.round(image), tf.uint8), tf.constant("")

    monkeypatch.setattr(pipelines, "read_image_op", tf_resize)
    check = compare("pixels", _tf_eval(path, 64), reference, 0.0)
    assert not check.passed and check.max_abs > 1 / 255 / 2


def test_tf_preprocessing_with_a_different_normalisation_or_greyscale_fails(tmp_path):
    path = _jpeg(tmp_path)
    reference = _torch_eval(path, 64)
    assert not compare("pixels", _tf_eval(path, 64, mean=(0.5,)), reference, 1e-6).passed
    grey = _torch_eval(path, 64, channels=1)
    # Luma (ITU-R 601) instead of the mean of R, G and B:
    luma = _tf_eval(path, 64) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert not compare("pixels", luma[..., None], grey, 1e-6).passed


def _conv_kernels(state):
    """Names of square (k x k, k > 1) convolution kernels in a timm state dict."""
    return [k for k, v in state.items() if v.ndim == 4 and v.shape[2] == v.shape[3] > 1]


def test_transposed_conv_kernel_in_converted_weights_fails():
    architectures = importlib.import_module("zoobot.tf.architectures")
    import timm
    import torch

    name = "resnet18"
    torch.manual_seed(0)
    encoder = randomise_torch(timm.create_model(name, num_classes=0).eval())
    state = {k: v.numpy() for k, v in encoder.state_dict().items()}
    images = np.random.default_rng(3).normal(size=(2, 48, 48, 3)).astype(np.float32)
    with torch.no_grad():
        reference = encoder(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()

    keras_model = architectures.build_encoder(name, 3)
    architectures.load_timm_state(keras_model, state)
    features = np.asarray(keras_model(images, training=False))
    assert compare("features", features, reference, 1e-4).passed

    key = _conv_kernels(state)[len(_conv_kernels(state)) // 2]
    broken = dict(state)
    broken[key] = np.ascontiguousarray(state[key].transpose(0, 1, 3, 2))  # kh <-> kw
    architectures.load_timm_state(keras_model, broken)
    features = np.asarray(keras_model(images, training=False))
    check = compare("features", features, reference, 1e-4)
    assert not check.passed, f"transposing {key} went unnoticed: {check.describe()}"
