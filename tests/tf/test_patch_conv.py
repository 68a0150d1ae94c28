"""Non-overlapping convolutions (1x1, kernel == stride) as matrix products (the path Keras on JAX
takes on a CPU): the same outputs and gradients as Keras's convolution, and the layer takes that
path only on JAX's CPU and only where its windows do not overlap."""

import logging

import keras
import numpy as np
import pytest
from keras_backend import ON_JAX
from test_depthwise import EPS32, gradients, messages

from zoobot.models import fast_paths
from zoobot.tf.patch_conv import Conv2D, patch_matmul

CASES = [(1, (2, 9, 7, 5)), (2, (2, 13, 11, 5)), (4, (1, 16, 18, 3))]


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(fast_paths, "_announced", set())
    monkeypatch.delenv(fast_paths.DISABLE, raising=False)


@pytest.mark.parametrize("stride,shape", CASES)
def test_the_matmul_is_the_convolution_with_its_gradients(stride, shape):
    """float32, random output gradient: outputs and input gradients sum s*s*C products in another
    order, the kernel's n*h*w of them."""
    rng = np.random.default_rng(stride)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((stride, stride, shape[3], 6)).astype(np.float32)

    def plain(a, k):
        return keras.ops.conv(a, k, stride, "valid")

    value, _, _ = gradients(plain, x, kernel, 0.0)
    cotangent = rng.standard_normal(value.shape).astype(np.float32)
    got = gradients(lambda a, k: patch_matmul(a, k, stride), x, kernel, cotangent)
    want = gradients(plain, x, kernel, cotangent)
    products = stride * stride * shape[3]
    bound = products * EPS32 * np.abs(kernel).max() * np.abs(x).max()
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=bound)
    dx_bound = 6 * EPS32 * np.abs(kernel).max() * np.abs(cotangent).max()
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=dx_bound)
    terms = cotangent.size // 6
    dk_bound = terms * EPS32 * np.abs(x).max() * np.abs(cotangent).max()
    np.testing.assert_allclose(got[2], want[2], rtol=0, atol=dk_bound)


def twins(kernel_size, padding="valid", channels=5):
    """Keras's layer and ours, built alike, with the same weights."""
    options = {"strides": kernel_size, "padding": padding, "use_bias": True, "activation": "relu"}
    plain = keras.layers.Conv2D(4, kernel_size, **options)
    ours = Conv2D(4, kernel_size, **options)
    plain.build((None, 16, 16, channels))
    ours.build((None, 16, 16, channels))
    rng = np.random.default_rng(2)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in plain.get_weights()]
    plain.set_weights(weights)
    ours.set_weights(weights)
    return plain, ours


@pytest.mark.parametrize("off", [False, True])
def test_the_layer_is_keras_s_and_says_which_path(off, monkeypatch, caplog):
    """Same config and weights as keras.layers.Conv2D; on JAX's CPU the matmul (unless
    ZOOBOT_DISABLE names it), elsewhere Keras's own call, silently."""
    if off:
        monkeypatch.setenv(fast_paths.DISABLE, "xla_cpu_patch_conv")
    plain, ours = twins(2)
    x = np.random.default_rng(3).standard_normal((2, 16, 16, 5)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="zoobot"):
        got = np.asarray(ours(x))
    want = np.asarray(plain(x))
    config = {k: v for k, v in ours.get_config().items() if k != "name"}
    assert config == {k: v for k, v in plain.get_config().items() if k != "name"}
    if ON_JAX and not off:
        assert messages(caplog) == [
            "xla_cpu_patch_conv: on (XLA:CPU runs 1x1 and patchify convolutions' gradients as "
            "large convolutions)"
        ]
        kernel = np.abs(plain.get_weights()[0]).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=20 * EPS32 * kernel * np.abs(x).max())
    else:
        expected = ["xla_cpu_patch_conv: off (turned off by ZOOBOT_DISABLE)"] if ON_JAX else []
        assert messages(caplog) == expected
        np.testing.assert_array_equal(got, want)  # the same Keras call on the same input


@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv2D(4, 3, padding="same"),  # overlapping windows
        lambda: Conv2D(4, 2, strides=1),  # overlapping windows
        lambda: Conv2D(4, 2, strides=2, padding="same"),  # 15 px: "same" pads a row and a column
        lambda: Conv2D(10, 1, groups=5),
        lambda: Conv2D(4, 1, dilation_rate=2),
    ],
)
def test_other_convolutions_take_keras_s_call(make, caplog):
    layer = make()
    layer.build((None, 15, 15, 20 if layer.groups != 1 else 5))
    x = np.random.default_rng(4).standard_normal((1, 15, 15, layer.input_spec.axes[-1]))
    with caplog.at_level(logging.INFO, logger="zoobot"):
        got = np.asarray(layer(x.astype(np.float32)))
    want = np.asarray(keras.layers.Conv2D.call(layer, x.astype(np.float32)))
    np.testing.assert_array_equal(got, want)
    assert not [m for m in messages(caplog) if m.startswith("xla_cpu_patch_conv")]


def test_a_model_with_the_layer_saves_and_loads(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = Conv2D(5, 2, strides=2, name="patch")(inputs)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("patch")) is Conv2D
    x = np.ones((1, 8, 8, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
