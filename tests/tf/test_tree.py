"""ZoobotTree in Keras: Dirichlet head, loss and metrics per question and campaign, MC dropout,
mixed precision, and the Hub round trip.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras_backend import dtype_of, float64

from zoobot.models.tasks import DEFAULT_FRACTION_WEIGHT
from zoobot.shared import Schema, get_schema
from zoobot.shared.loss import training_objective
from zoobot.tf.encoders import load_encoder
from zoobot.tf.loss import DirichletMultinomialLoss
from zoobot.tf.optimizers import LayerwiseAdamW
from zoobot.tf.pretrained import from_pretrained, save_pretrained
from zoobot.tf.training import dtype_policy
from zoobot.tf.tree import ScaledSigmoid, TreeMetrics, ZoobotTree

TOY = Schema(
    {"smooth-or-featured-dr5": ["smooth", "featured"], "bar-dr8": ["yes", "no"]},
    {"bar-dr8": "smooth-or-featured-dr5_featured"},
    name="toy",
)


def tiny_tree(schema=TOY, encoder=None, **kwargs) -> ZoobotTree:
    """A tree model around a test_convnext (a fresh one unless `encoder` is given)."""
    keras.utils.set_random_seed(0)
    return ZoobotTree(schema, encoder=encoder or load_encoder("test_convnext"), **kwargs)


@pytest.fixture(scope="module")
def encoder():
    """An encoder for the tests that never train it."""
    keras.utils.set_random_seed(0)
    return load_encoder("test_convnext")


def vote_arrays(schema: Schema, n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 32 px images with random vote counts, the last question unasked for half of them."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, 32, 32, 3), dtype=np.float32)
    counts = rng.integers(0, 10, (n, len(schema.label_cols))).astype(np.float32)
    start, end = schema.question_index_groups[-1]
    counts[: n // 2, start : end + 1] = 0
    return images, counts


def vote_batches(schema: Schema, n: int = 16, seed: int = 0) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(vote_arrays(schema, n, seed)).batch(8)


def test_concentrations_lie_in_1_to_101_and_the_head_is_float32(encoder):
    model = tiny_tree(encoder=encoder, concentration=None)
    dense = model.head.layers[1]
    dense.kernel.assign(dense.kernel * 1e3)
    out = model(np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32") * 100)
    assert out.shape == (4, len(TOY.label_cols)) and dtype_of(out) == "float32"
    assert (np.asarray(out) >= 1).all() and (np.asarray(out) <= 101).all()
    assert np.asarray(out).min() < 1.01 and np.asarray(out).max() > 100.99, (
        "saturated logits reach both ends"
    )
    assert float(ScaledSigmoid()(np.zeros(1, np.float32))[0]) == 51.0
    assert [type(layer).__name__ for layer in model.head.layers] == [
        "Dropout",
        "Dense",
        "ScaledSigmoid",
    ]


def test_log_spaced_concentrations_span_their_range(encoder):
    model = tiny_tree(encoder=encoder, concentration=(0.01, 1000.0))
    dense = model.head.layers[1]
    dense.kernel.assign(dense.kernel * 1e3)
    images = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32") * 100
    out = keras.ops.convert_to_numpy(model(images))
    # float32 exp of log-spaced values: a few ulp of relative error at each end.
    assert (out >= 0.01 * (1 - 1e-6)).all() and (out <= 1000 * (1 + 1e-6)).all()
    assert out.min() < 0.0101 and out.max() > 990, "saturated logits reach both ends"
    scale = model.head.layers[2]
    assert type(scale).__name__ == "LogScaledSigmoid" and scale.dtype == "float32"
    # The midpoint is the geometric mean, sqrt(0.01 * 1000) = sqrt(10), to float32 rounding.
    midpoint = keras.ops.convert_to_numpy(scale(np.zeros(1, "float32")))
    np.testing.assert_allclose(midpoint, [10**0.5], rtol=1e-6)
    rebuilt = keras.layers.deserialize(keras.layers.serialize(scale))
    assert (rebuilt.low, rebuilt.high) == (0.01, 1000.0)


@pytest.mark.parametrize("fraction_weight", [DEFAULT_FRACTION_WEIGHT, 0.0])
def test_step_loss_is_the_training_objective_with_nan_as_unasked(encoder, fraction_weight):
    model = tiny_tree(encoder=encoder, fraction_weight=fraction_weight)
    images, counts = vote_arrays(TOY)
    with_nan = counts.copy()
    with_nan[counts == 0] = np.nan
    concentrations = model(images, training=False)
    with float64():  # the sums in float64 on JAX too, as on TensorFlow
        step_loss = model.compute_loss(y=with_nan, y_pred=concentrations)
        likelihood = DirichletMultinomialLoss(TOY)(counts, concentrations)
    alpha = np.asarray(concentrations).astype(np.float64)
    oracle = training_objective(counts, alpha, TOY, fraction_weight)
    # float32 concentrations and KL terms, float64 likelihood sums: float32 rounding of ~30
    assert float(step_loss) == pytest.approx(oracle, rel=1e-6)
    if not fraction_weight:  # the likelihood alone, as trees saved before the option trained
        np.testing.assert_allclose(np.asarray(step_loss), np.asarray(likelihood), rtol=1e-6)


def test_tree_metrics_match_numpy_and_skip_unasked_questions():
    rng = np.random.default_rng(0)
    concentrations = rng.uniform(1, 101, (6, 4))
    counts = rng.integers(0, 8, (6, 4)).astype(float)
    counts[:, 2:] = 0  # nobody was asked bar-dr8
    counts[0, :2] = 0
    per_question = DirichletMultinomialLoss(TOY, dtype="float64").per_question(
        counts, concentrations
    )
    metric = TreeMetrics(TOY)
    metric.update_state(counts[:2], concentrations[:2], per_question[:2])
    metric.update_state(counts[2:], concentrations[2:], per_question[2:])
    result = {k: np.asarray(v) for k, v in metric.result().items()}
    first, second = TOY.question_index_groups
    alpha, votes = concentrations[:, first[0] : first[1] + 1], counts[:, first[0] : first[1] + 1]
    asked = votes.sum(1) > 0
    predicted = alpha[asked] / alpha[asked].sum(1, keepdims=True)
    observed = votes[asked] / votes[asked].sum(1, keepdims=True)
    error = np.abs(predicted - observed).mean()
    assert result["vote_fraction_error/smooth-or-featured-dr5"] == pytest.approx(error, rel=1e-5)
    assert np.isnan(result["vote_fraction_error/bar-dr8"])
    assert result["vote_fraction_error"] == pytest.approx(error, rel=1e-5)
    mean_loss = np.asarray(per_question).mean(0)
    assert result["loss/smooth-or-featured-dr5"] == pytest.approx(mean_loss[0], rel=1e-6)
    assert result["loss/bar-dr8"] == 0
    assert result["campaign_loss/dr5"] == pytest.approx(mean_loss[0], rel=1e-6)
    assert result["campaign_loss/dr8"] == 0
    metric.reset_state()
    assert float(metric.result()["loss/smooth-or-featured-dr5"]) == 0


def test_fit_logs_loss_per_question_and_campaign_and_vote_fraction_error():
    schema = get_schema("decals_all_campaigns")
    model = tiny_tree(schema)
    model.compile(run_eagerly=True)
    history = model.fit(
        vote_batches(schema), validation_data=vote_batches(schema, seed=1), epochs=1, verbose=0
    ).history
    assert np.isfinite(history["val_vote_fraction_error"]).all()
    for prefix in ("", "val_"):
        for question in schema.questions:
            assert f"{prefix}loss/{question.name}" in history
            assert f"{prefix}vote_fraction_error/{question.name}" in history
        campaigns = sum(np.array(history[f"{prefix}campaign_loss/{c}"]) for c in schema.campaigns)
        kl = np.array(history[f"{prefix}fraction_kl"])
        objective = campaigns + model.fraction_weight * kl
        np.testing.assert_allclose(objective, history[f"{prefix}loss"], rtol=1e-5)


def test_training_loss_falls_and_the_cosine_reaches_zero():
    """Graph-mode `fit` (the default) on votes that follow the images' brightness."""
    rng = np.random.default_rng(4)
    brightness = rng.uniform(0.1, 0.9, 32).astype(np.float32)
    images = brightness[:, None, None, None] + rng.normal(0, 0.02, (32, 32, 32, 3)).astype(
        np.float32
    )
    smooth = np.round(20 * brightness)
    counts = np.stack([smooth, 20 - smooth, np.zeros(32), np.zeros(32)], axis=1).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, counts)).batch(8)
    model = tiny_tree(learning_rate=3e-3, warmup_epochs=0)
    history = model.fit(data, epochs=6, verbose=0).history
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert isinstance(model.optimizer, LayerwiseAdamW)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)


def test_mc_dropout_passes_differ_only_when_dropout_is_on(encoder):
    model = tiny_tree(encoder=encoder, dropout=0.5)
    images = np.random.default_rng(1).random((3, 32, 32, 3)).astype("float32")
    fixed = np.asarray(model.predict_samples(images, n_samples=4))
    assert fixed.shape == (3, len(TOY.label_cols), 4)
    np.testing.assert_array_equal(fixed[..., 0], fixed[..., 3])
    sampled = np.asarray(model.predict_samples(images, n_samples=4, mc_dropout=True))
    assert not np.array_equal(sampled[..., 0], sampled[..., 1])
    model.n_samples, model.mc_dropout = 2, True
    predicted = model.predict(vote_batches(TOY, n=8), verbose=0)
    assert predicted.shape == (8, len(TOY.label_cols), 2)
    assert not np.array_equal(predicted[..., 0], predicted[..., 1])


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_runs_a_step_with_head_and_loss_in_float32(precision):
    with dtype_policy(precision) as policy:
        model = tiny_tree()
    assert keras.config.dtype_policy().name == "float32", "the global policy is restored"
    compute = keras.mixed_precision.Policy(policy).compute_dtype
    assert model.encoder.layers[-1].compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.weights)
    images, counts = vote_arrays(TOY, n=8)
    assert dtype_of(model(images)) == "float32"
    model.compile(run_eagerly=True)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    before = np.asarray(model.head.layers[1].kernel).copy()
    history = model.fit(images, counts, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    # fp16 loss scaling starts high and skips the steps whose scaled gradients overflow
    for _ in range(12):
        if not np.array_equal(before, np.asarray(model.head.layers[1].kernel)):
            break
        model.train_on_batch(images, counts)
    assert not np.array_equal(before, np.asarray(model.head.layers[1].kernel))


def test_save_pretrained_reloads_identical_outputs(tmp_path):
    model = tiny_tree(dropout=0.3, learning_rate=3e-4)
    model.compile(run_eagerly=True)
    model.fit(vote_batches(TOY), epochs=1, verbose=0)
    save_pretrained(model, tmp_path / "tree")
    reloaded = from_pretrained(tmp_path / "tree")
    assert type(reloaded) is ZoobotTree
    assert reloaded.schema == TOY
    assert reloaded.task_config() == model.task_config()
    images, _ = vote_arrays(TOY, n=4)
    np.testing.assert_array_equal(np.asarray(reloaded(images)), np.asarray(model(images)))


def test_schema_by_name_or_dict_and_architecture_by_name():
    by_name = ZoobotTree("gz_rings", "test_convnext")
    assert by_name.schema == get_schema("gz_rings")
    by_dict = ZoobotTree(TOY.to_dict(), encoder=by_name.encoder)
    assert by_dict.schema == TOY
    assert by_dict.task_config()["schema"] == TOY.to_dict()
    assert "architecture" not in by_dict.task_config()
