"""zoobot.tf's capability checks forced to "unsupported" (or turned off by `ZOOBOT_DISABLE`): the
plain path runs, gives the same numbers within float rounding, and one log line says which path."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoobot.data.synthetic import make_survey
from zoobot.models import fast_paths
from zoobot.shared import get_schema
from zoobot.shared.tables import read_predictions_full
from zoobot.tf import optimizers
from zoobot.tf.finetune import FinetuneableZoobotClassifier
from zoobot.tf.optimizers import LayerwiseAdamW, layerwise_adamw
from zoobot.tf.predictions import predict
from zoobot.tf.runner import seed_states
from zoobot.tf.tree import ZoobotTree

SCHEMA = get_schema("decals_dr5")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Every choice logged afresh; no user settings."""
    monkeypatch.setattr(fast_paths, "_announced", set())
    monkeypatch.delenv(fast_paths.DISABLE, raising=False)


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("zoobot")]


def test_bf16_predict_without_native_bf16_runs_float32(tmp_path, monkeypatch, caplog):
    """As on an AVX2-only CPU, where TensorFlow's oneDNN refuses bf16 convolutions."""
    monkeypatch.setattr(fast_paths, "native", lambda kind: (False, "forced unsupported"))
    survey = make_survey(
        12, tmp_path / "survey", schema=SCHEMA, image_size=32, seed=3, progress=False
    )
    keras.utils.set_random_seed(0)
    model = ZoobotTree(SCHEMA, "test_convnext")
    options = {"image_size": 32, "batch_size": 4, "num_workers": 1, "progress": False}
    with caplog.at_level(logging.INFO, logger="zoobot"):
        asked = predict(survey, model, tmp_path / "bf16.parquet", precision="bf16", **options)
    assert [m for m in messages(caplog) if m.startswith("cpu_bf16")] == [
        "cpu_bf16: off (forced unsupported; runs in float32, faster than emulated bf16)"
    ]  # on JAX also the xla_cpu_depthwise line (tests/tf/test_depthwise.py)
    fp32 = predict(survey, model, tmp_path / "fp32.parquet", precision="32", **options)
    # The same compiled float32 function on the same batches in one process: bit equal.
    np.testing.assert_array_equal(
        read_predictions_full(asked.predictions).concentrations,
        read_predictions_full(fp32.predictions).concentrations,
    )


def test_a_predict_that_fails_before_its_first_part_leaves_nothing(tmp_path):
    survey = make_survey(
        4, tmp_path / "survey", schema=SCHEMA, image_size=32, seed=3, progress=False
    )

    class Broken(ZoobotTree):
        def predict_samples(self, images, n_samples=1, mc_dropout=False):
            raise tf.errors.AbortedError(None, None, "could not create a primitive descriptor")

    model = Broken(SCHEMA, "test_convnext")
    with pytest.raises(tf.errors.AbortedError, match="primitive descriptor"):
        predict(survey, model, tmp_path / "out" / "p.parquet", image_size=32, num_workers=1)
    assert list((tmp_path / "out").iterdir()) == []


def test_seed_states_are_the_dropout_randomness_through_public_keras():
    keras.utils.set_random_seed(0)
    model = ZoobotTree(SCHEMA, "test_convnext", dropout=0.5)
    (state,) = seed_states(model)
    assert state is model.head.layers[0].seed_generator.state


@pytest.mark.parametrize("why", ["unsupported", "turned off"])
def test_without_keras_internals_the_optimizer_is_keras_adamw_stepping_alike(
    monkeypatch, caplog, why
):
    """Keras's AdamW (one learning rate, Keras's epsilon placement, clipping per replica) steps as
    `LayerwiseAdamW` does with every multiplier 1."""
    start = np.array([[0.5, -1.0], [2.0, 0.1]], np.float32)
    gradient = np.array([[3.0, -4.0], [0.5, 0.2]], np.float32)  # norm 5.03 > the clip norm

    def step(optimizer) -> np.ndarray:
        variable = keras.Variable(start)
        optimizer.apply_gradients([(gradient, variable)])
        return np.asarray(variable)

    with caplog.at_level(logging.INFO, logger="zoobot"):
        layerwise = layerwise_adamw(1e-2, 0.05, None, 1.0)
        if why == "unsupported":
            monkeypatch.setattr(optimizers, "probe", lambda: (False, "forced unsupported"))
        else:
            monkeypatch.setenv(fast_paths.DISABLE, "keras_optimizer_internals")
        plain = layerwise_adamw(1e-2, 0.05, None, 1.0)
    assert isinstance(layerwise, LayerwiseAdamW) and type(plain) is keras.optimizers.AdamW
    assert plain.global_clipnorm == 1.0 and plain.weight_decay == 0.05 and plain.epsilon == 1e-8
    reason = "forced unsupported" if why == "unsupported" else "turned off by ZOOBOT_DISABLE"
    assert messages(caplog) == [
        "keras_optimizer_internals: on (Keras's optimizer internals are as verified)",
        f"keras_optimizer_internals: off ({reason})",
    ]
    # First Adam step: lr * g / (|g| + eps'), Keras's eps' = 1e-8 / sqrt(1 - 0.999) = 3.2e-7
    # against PyTorch's 1e-8; with clipped |g| >= 0.04 the steps differ by lr * 3.2e-7 / 0.04 =
    # 8e-8 relative, below float32 rounding of the weights (2**-24 of 2: 1.2e-7); the clipping
    # coefficients 1 / norm and 1 / (norm + 1e-6) differ by 2e-7 relative. atol 1e-6.
    np.testing.assert_allclose(step(plain), step(layerwise), rtol=0, atol=1e-6)


def test_a_model_fits_with_the_keras_adamw_fallback(monkeypatch):
    monkeypatch.setattr(optimizers, "probe", lambda: (False, "forced unsupported"))
    keras.utils.set_random_seed(0)
    model = FinetuneableZoobotClassifier(2, "test_convnext", warmup_steps=1)
    rng = np.random.default_rng(0)
    images = rng.random((8, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 2, (8, 1)).astype(np.float32)
    before = np.asarray(model.head.layers[1].kernel).copy()
    history = model.fit(images, labels, batch_size=4, epochs=2, verbose=0).history
    assert type(model.optimizer) is keras.optimizers.AdamW
    assert (
        model.optimizer.warmup_schedule.warmup_steps,
        model.optimizer.warmup_schedule.total_steps,
    ) == (1, 4)
    assert np.isfinite(history["loss"]).all()
    assert not np.array_equal(before, np.asarray(model.head.layers[1].kernel))


def test_the_optimizer_probe_passes_with_this_keras():
    """Verified Keras versions (pyproject bounds) keep the internals LayerwiseAdamW needs."""
    assert optimizers.probe() == (True, "Keras's optimizer internals are as verified")
