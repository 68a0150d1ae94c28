"""Finetuning in Keras: blocks per family, layer-wise learning rates, true freezing (BatchNorm
included), the classifier and regressor heads, and the Hub round trip of every finetuned model.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from zoobot.shared import get_schema
from zoobot.tf.blocks import block_variables, encoder_blocks
from zoobot.tf.encoders import load_encoder
from zoobot.tf.finetune import (
    FinetuneableZoobotClassifier,
    FinetuneableZoobotRegressor,
    FinetuneableZoobotTree,
    cross_entropy,
)
from zoobot.tf.optimizers import LayerwiseAdamW, WarmupCosine
from zoobot.tf.pretrained import from_pretrained, save_pretrained

FIXTURES = Path(__file__).parent / "fixtures" / "timm"

# architecture or folder -> (number of blocks, a layer of the stem, a layer of the block nearest
# the head)
FAMILIES = {
    "test_convnext": (5, "stem.0", "head.norm"),
    "resnet10t": (5, "conv1.0", "layer4.0.conv1"),
    "efficientnet_b0": (8, "conv_stem", "conv_head"),
    str(FIXTURES / "tf_efficientnetv2_s_small"): (7, "conv_stem", "conv_head"),
    str(FIXTURES / "maxvit_rmlp_tiny"): (5, "stem.conv1", "norm"),
    str(FIXTURES / "maxvit_large_tf"): (5, "stem.conv1", "head.pre_logits.fc"),
}


def labelled_arrays(n: int = 8, n_classes: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, n_classes, (n, 1)).astype(np.float32)
    return images, labels


def snapshot(variables) -> list[np.ndarray]:
    return [np.asarray(v).copy() for v in variables]


def changed(before, variables) -> list[bool]:
    return [not np.array_equal(b, np.asarray(v)) for b, v in zip(before, variables, strict=True)]


def one_step(model, images, labels) -> None:
    """One optimizer step, eagerly (no tracing: fast for tests)."""
    model.compile(run_eagerly=True)
    model.fit(images, labels, batch_size=len(images), epochs=1, verbose=0)


@pytest.mark.parametrize("architecture", list(FAMILIES), ids=lambda name: Path(name).name)
def test_blocks_cover_every_weight_once_head_first_stem_last(architecture):
    n_blocks, stem, last = FAMILIES[architecture]
    encoder = load_encoder(architecture)
    blocks = encoder_blocks(encoder)
    assert len(blocks) == n_blocks
    ids = [id(v) for block in blocks for v in block_variables(block)]
    assert len(ids) == len(set(ids)), "no weight in two blocks"
    assert set(ids) == {id(v) for v in encoder.weights}, "every weight in a block"
    assert stem in [layer.name for layer in blocks[-1]]
    assert last in [layer.name for layer in blocks[0]]


def test_lr_decay_gives_each_trained_block_its_learning_rate():
    """Adam's first step moves each weight by about its learning rate: lr * lr_decay**block."""
    lr, decay = 1e-3, 0.5
    model = FinetuneableZoobotClassifier(
        2,
        "test_convnext",
        n_blocks=3,
        lr_decay=decay,
        learning_rate=lr,
        weight_decay=0.0,
        dropout=0.0,
    )
    groups = model.param_groups()
    assert [g["lr"] for g in groups] == [lr, lr, lr * decay, lr * decay**2]
    blocks = [model.head.layers, *model.trained_blocks, *model.frozen_blocks]
    variables = [block_variables(block) for block in blocks]
    before = [snapshot(vs) for vs in variables]
    one_step(model, *labelled_arrays())
    optimizer = model.optimizer
    assert isinstance(optimizer, LayerwiseAdamW)
    steps = [
        max(float(np.abs(np.asarray(v) - b).max()) for v, b in zip(vs, bs, strict=True))
        for vs, bs in zip(variables, before, strict=True)
    ]
    expected = [lr, lr, lr * decay, lr * decay**2, 0.0, 0.0]
    np.testing.assert_allclose(steps, expected, rtol=2e-3, atol=1e-9)
    for i, block in enumerate(model.trained_blocks):
        for v in block_variables(block):
            if v.trainable:
                assert optimizer.multiplier_of(v) == decay**i


@pytest.mark.parametrize("n_blocks", [0, 1, 3])
def test_exactly_the_last_blocks_and_head_change_and_frozen_batchnorm_stays_put(n_blocks):
    model = FinetuneableZoobotClassifier(2, "resnet10t", n_blocks=n_blocks, dropout=0.0)
    blocks = encoder_blocks(model.encoder)
    assert len(model.trained_blocks) == n_blocks
    variables = [block_variables(block) for block in blocks]
    before = [snapshot(vs) for vs in variables]
    head_before = snapshot(model.head.weights)
    one_step(model, *labelled_arrays())
    assert all(changed(head_before, model.head.weights))
    for i, (vs, bs) in enumerate(zip(variables, before, strict=True)):
        moved = changed(bs, vs)
        if i < n_blocks:
            # kernels and BatchNorm statistics all move (a zero-initialised BatchNorm shift behind
            # a zero-initialised residual scale gets no gradient on the first step, as in torch)
            kernels_and_statistics = [
                m for m, v in zip(moved, vs, strict=True) if not v.trainable or "kernel" in v.path
            ]
            assert all(kernels_and_statistics), f"trained block {i} moves, BatchNorm statistics too"
            assert any(not v.trainable for v in vs)
        else:
            assert not any(moved), f"frozen block {i} (weights and BatchNorm statistics) stays put"
    trained = {id(v) for vs in variables[:n_blocks] for v in vs if v.trainable}
    trained |= {id(v) for v in model.head.trainable_weights}
    assert {id(v) for v in model.trainable_weights} == trained


def test_all_blocks_train_with_n_blocks_minus_one_and_unknown_families_are_one_block(caplog):
    everything = FinetuneableZoobotClassifier(2, "test_convnext", n_blocks=-1)
    assert len(everything.trained_blocks) == 5 and not everything.frozen_blocks
    inputs = keras.Input((None, None, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    plain = keras.Model(inputs, features)
    with caplog.at_level(logging.WARNING, logger="zoobot.tf.blocks"):
        model = FinetuneableZoobotClassifier(2, encoder=plain, n_blocks=1)
    assert "one block" in caplog.text
    assert len(model.trained_blocks) == 1
    assert len(model.trainable_weights) == 4  # conv kernel + bias, head kernel + bias


def test_exactly_one_of_name_and_encoder():
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneableZoobotClassifier(2)
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneableZoobotClassifier(2, "test_convnext", encoder=load_encoder("test_convnext"))


def torch_cross_entropy(logits, target, weights, smoothing):
    """NumPy transcription of torch.nn.functional.cross_entropy (mean, weights, label smoothing)."""
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    weights = np.ones(logits.shape[1]) if weights is None else np.asarray(weights, float)
    target_weight = weights[target]
    nll = -(log_p[np.arange(len(target)), target] * target_weight).sum() / target_weight.sum()
    smooth = -(log_p * weights).sum(1).sum() / target_weight.sum()
    return (1 - smoothing) * nll + smoothing * smooth / logits.shape[1]


@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 0.5]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_is_torchs(weights, smoothing):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(7, 3)) * 3
    target = rng.integers(0, 3, 7)
    loss = cross_entropy(logits.astype(np.float32), target[:, None], weights, smoothing)
    assert float(loss) == pytest.approx(
        torch_cross_entropy(logits, target, weights, smoothing), rel=1e-5
    )


def test_classifier_probabilities_accuracy_and_class_weights():
    model = FinetuneableZoobotClassifier(
        3, "test_convnext", class_weights=[1, 2, 3], label_smoothing=0.1
    )
    images, labels = labelled_arrays(n_classes=3)
    output = model(images)
    loss = model.compute_loss(y=labels, y_pred=output)
    expected = torch_cross_entropy(
        np.asarray(output).astype(float), labels[:, 0].astype(int), [1, 2, 3], 0.1
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    probabilities = np.asarray(model.predict_samples(images, n_samples=2))
    assert probabilities.shape == (8, 3, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-6)
    model.compile(run_eagerly=True)
    history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0).history
    assert 0 <= history["accuracy"][0] <= 1
    assert model.task_config()["class_weights"] == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="class_weights"):
        FinetuneableZoobotClassifier(2, encoder=model.encoder, class_weights=[1.0])


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_regressor_loss_and_unit_interval(loss):
    model = FinetuneableZoobotRegressor(
        "test_convnext", loss=loss, unit_interval=True, num_outputs=2
    )
    images = labelled_arrays()[0]
    targets = np.random.default_rng(3).random((8, 2)).astype(np.float32)
    output = np.asarray(model(images))
    assert ((output > 0) & (output < 1)).all()
    error = output - targets
    expected = (error**2).mean() if loss == "mse" else np.abs(error).mean()
    assert float(model.compute_loss(y=targets, y_pred=output)) == pytest.approx(expected, rel=1e-6)
    model.compile(run_eagerly=True)
    history = model.fit(images, targets, batch_size=4, epochs=1, verbose=0).history
    assert {"loss", "mae", "mse"} <= set(history)
    with pytest.raises(ValueError, match="mse"):
        FinetuneableZoobotRegressor(encoder=model.encoder, loss="huber")


def test_finetune_from_a_hub_layout_folder(tmp_path):
    encoder = load_encoder("test_convnext")
    folder = save_pretrained(encoder, tmp_path / "encoder")
    model = FinetuneableZoobotClassifier(2, name=folder, n_blocks=1)
    images = labelled_arrays()[0]
    np.testing.assert_array_equal(np.asarray(model.encoder(images)), np.asarray(encoder(images)))
    assert "name" not in model.task_config()


@pytest.mark.parametrize(
    ("cls", "kwargs", "task"),
    [
        (
            FinetuneableZoobotClassifier,
            {"num_classes": 3, "class_weights": [1, 2, 1]},
            "classifier",
        ),
        (
            FinetuneableZoobotClassifier,
            {"num_classes": 2, "class_names": ["ring", "no ring"]},
            "classifier",
        ),
        (FinetuneableZoobotRegressor, {"unit_interval": True, "num_outputs": 2}, "regressor"),
        (FinetuneableZoobotTree, {"schema": get_schema("gz_rings")}, "finetuneable_tree"),
    ],
)
def test_save_pretrained_round_trip(tmp_path, cls, kwargs, task):
    model = cls(name="resnet10t", n_blocks=2, lr_decay=0.5, learning_rate=3e-4, **kwargs)
    dense = model.head.layers[1]
    dense.bias.assign(np.linspace(-1, 1, dense.bias.shape[0]).astype("float32"))
    folder = save_pretrained(model, tmp_path / task)
    reloaded = from_pretrained(folder)
    assert type(reloaded) is cls and reloaded.task == task
    assert reloaded.task_config() == model.task_config()
    assert len(reloaded.trained_blocks) == 2
    images = labelled_arrays(n=4)[0]
    np.testing.assert_array_equal(np.asarray(reloaded(images)), np.asarray(model(images)))


def test_classifier_class_names_are_kept_only_when_given():
    named = FinetuneableZoobotClassifier(2, name="resnet10t", class_names=["ring", "no ring"])
    assert list(named.class_names) == ["ring", "no ring"]
    assert named.task_config()["class_names"] == ["ring", "no ring"]
    unnamed = FinetuneableZoobotClassifier(2, name="resnet10t")
    assert unnamed.class_names is None and "class_names" not in unnamed.task_config()
    for wrong in (["ring"], ["ring", "ring"]):
        with pytest.raises(ValueError, match="2 distinct names"):
            FinetuneableZoobotClassifier(2, name="resnet10t", class_names=wrong)


def test_warmup_then_cosine_matches_zoobot_torch_and_fit_sizes_it():
    schedule = WarmupCosine(1e-3, warmup_steps=3, total_steps=10)
    factors = [schedule.factor(step) for step in range(12)]
    np.testing.assert_allclose(
        [float(schedule(step)) / 1e-3 for step in range(12)], factors, rtol=1e-6
    )
    assert factors[:3] == [1 / 3, 2 / 3, 1.0] and factors[3] == 1.0 and factors[10] == 0.0
    assert WarmupCosine(1e-3, 0, None).factor(100) == 1.0
    assert WarmupCosine(1e-3, 2, 10, cosine=False).factor(9) == 1.0
    model = FinetuneableZoobotClassifier(2, "test_convnext", warmup_epochs=0.5, warmup_steps=1)
    images, labels = labelled_arrays(n=8)
    model.compile(run_eagerly=True)
    model.fit(images, labels, batch_size=4, epochs=2, verbose=0)
    schedule = model.optimizer.warmup_schedule
    assert (schedule.warmup_steps, schedule.total_steps) == (1 + 1, 4)
    assert int(model.optimizer.iterations) == 4
    model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(8), epochs=3, verbose=0)
    assert (schedule.warmup_steps, schedule.total_steps) == (1 + 0, 3), "resized for the new run"
