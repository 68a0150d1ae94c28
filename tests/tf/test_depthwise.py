"""Depthwise convolutions as shifted sums (the path Keras on JAX takes on a CPU): the same outputs
and gradients as Keras's depthwise convolution, and the layer takes that path only on JAX's CPU."""

import logging

import keras
import numpy as np
import pytest
from keras_backend import ON_JAX, float64, value_and_grad

from zoobot.models import fast_paths
from zoobot.tf.depthwise import DepthwiseConv2D, shifted_depthwise

CASES = [(7, 1, "same"), (3, 2, "same"), (5, 2, "valid"), (3, 1, "valid"), (4, 2, "same")]
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(fast_paths, "_announced", set())
    monkeypatch.delenv(fast_paths.DISABLE, raising=False)


def numpy_depthwise(x, kernel, stride: int, padding: str) -> np.ndarray:
    """The definition, in float64: out[n, i, j, c] = sum_ab x[n, i*s + a, j*s + b, c] k[a, b, c]
    over TensorFlow's "same" padding (the extra row/column after, as Keras pads)."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        pads = []
        for size, k in zip(x.shape[1:3], (kh, kw), strict=True):
            total = max((-(-size // stride) - 1) * stride + k - size, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, [(0, 0), *pads, (0, 0)])
    out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for a in range(kh):
        for b in range(kw):
            window = x[:, a : a + (out_h - 1) * stride + 1 : stride, b::stride][:, :, :out_w]
            out += window * kernel[a, b, :, 0]
    return out


@pytest.mark.parametrize("kernel_size,stride,padding", CASES)
def test_shifted_sums_are_the_depthwise_convolution(kernel_size, stride, padding):
    """In float64 both sum the same products: agreement to float64 rounding (1e-12 on values of
    order 10)."""
    rng = np.random.default_rng(kernel_size * 10 + stride)
    x = rng.standard_normal((2, 13, 11, 6))
    kernel = rng.standard_normal((kernel_size, kernel_size, 6, 1))
    expected = numpy_depthwise(x, kernel, stride, padding)
    with float64():
        got = shifted_depthwise(
            keras.ops.convert_to_tensor(x, "float64"),
            keras.ops.convert_to_tensor(kernel, "float64"),
            (stride, stride),
            padding,
        )
        keras_out = keras.ops.depthwise_conv(x, kernel, stride, padding)
        got, keras_out = np.asarray(got), np.asarray(keras_out)
    np.testing.assert_allclose(keras_out, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel_size,stride,padding", CASES[:3])
def test_shifted_sums_have_the_convolution_s_input_gradient(kernel_size, stride, padding):
    """float32: each output sums k*k products in another order, so outputs and input gradients
    differ by at most k*k rounding steps of the largest partial sum (bounded by sum |x||k|)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 12, 12, 4)).astype(np.float32)
    kernel = rng.standard_normal((kernel_size, kernel_size, 4, 1)).astype(np.float32)
    strides = (stride, stride)
    fast, fast_grad = value_and_grad(lambda a: shifted_depthwise(a, kernel, strides, padding), x)
    plain, plain_grad = value_and_grad(
        lambda a: keras.ops.depthwise_conv(a, kernel, stride, padding), x
    )
    bound = kernel_size**2 * EPS32 * np.abs(kernel).sum(axis=(0, 1)).max() * np.abs(x).max()
    np.testing.assert_allclose(fast, plain, rtol=0, atol=bound)
    grad_bound = kernel_size**2 * EPS32 * np.abs(kernel).sum(axis=(0, 1)).max()
    np.testing.assert_allclose(fast_grad, plain_grad, rtol=0, atol=grad_bound)


def twins(kernel_size=3, strides=2, padding="same"):
    """Keras's layer and ours, built alike, with the same weights."""
    options = {"strides": strides, "padding": padding, "use_bias": True, "activation": "relu"}
    plain = keras.layers.DepthwiseConv2D(kernel_size, **options)
    ours = DepthwiseConv2D(kernel_size, **options)
    plain.build((None, 16, 16, 5))
    ours.build((None, 16, 16, 5))
    rng = np.random.default_rng(2)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in plain.get_weights()]
    plain.set_weights(weights)
    ours.set_weights(weights)
    return plain, ours


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("zoobot")]


@pytest.mark.parametrize("off", [False, True])
def test_the_layer_is_keras_s_and_says_which_path(off, monkeypatch, caplog):
    """Same config and weights as keras.layers.DepthwiseConv2D; on JAX's CPU the shifted sums
    (unless ZOOBOT_DISABLE names them), elsewhere Keras's own call, silently."""
    if off:
        monkeypatch.setenv(fast_paths.DISABLE, "xla_cpu_depthwise")
    plain, ours = twins()
    x = np.random.default_rng(3).standard_normal((2, 16, 16, 5)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="zoobot"):
        got = np.asarray(ours(x))
    want = np.asarray(plain(x))
    config = {k: v for k, v in ours.get_config().items() if k != "name"}
    assert config == {k: v for k, v in plain.get_config().items() if k != "name"}
    if ON_JAX and not off:
        assert messages(caplog) == [
            "xla_cpu_depthwise: on (XLA:CPU runs depthwise convolutions as dense ones; "
            "shifted sums instead)"
        ]
        # 9 products summed in another order (relu and the bias add no further difference).
        kernel = np.abs(plain.get_weights()[0]).sum(axis=(0, 1)).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=9 * EPS32 * kernel * np.abs(x).max())
    else:
        expected = ["xla_cpu_depthwise: off (turned off by ZOOBOT_DISABLE)"] if ON_JAX else []
        assert messages(caplog) == expected
        np.testing.assert_array_equal(got, want)  # the same Keras call on the same input


def test_a_model_with_the_layer_saves_and_loads(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = DepthwiseConv2D(3, padding="same", name="dw")(inputs)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("dw")) is DepthwiseConv2D
    x = np.ones((1, 8, 8, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def gradients(function, x, kernel, cotangent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(function(x, kernel), and the gradients of sum(cotangent * function) by x and kernel)."""
    if ON_JAX:
        import jax
        import jax.numpy as jnp

        value, pullback = jax.vjp(function, jnp.asarray(x), jnp.asarray(kernel))
        dx, dk = pullback(jnp.broadcast_to(jnp.asarray(cotangent, value.dtype), value.shape))
        return np.asarray(value), np.asarray(dx), np.asarray(dk)
    import tensorflow as tf

    x, kernel = tf.Variable(x), tf.Variable(kernel)
    with tf.GradientTape() as tape:
        value = function(x, kernel)
        total = tf.reduce_sum(value * cotangent)
    dx, dk = tape.gradient(total, [x, kernel])
    return np.asarray(value), np.asarray(dx), np.asarray(dk)


@pytest.mark.parametrize("kernel_size,stride,padding", CASES)
def test_shifted_sums_have_the_convolution_s_gradients(kernel_size, stride, padding):
    """Input and kernel gradients under a random output gradient (on JAX the hand-written ones),
    float32 against Keras's depthwise convolution: the kernel's sums n*h*w products, so its bound
    is that many rounding steps of the sum of |x * g|."""
    rng = np.random.default_rng(kernel_size + 7 * stride)
    x = rng.standard_normal((3, 13, 11, 4)).astype(np.float32)
    kernel = rng.standard_normal((kernel_size, kernel_size, 4, 1)).astype(np.float32)
    value, _, _ = gradients(
        lambda a, k: keras.ops.depthwise_conv(a, k, stride, padding), x, kernel, 0.0
    )
    cotangent = rng.standard_normal(value.shape).astype(np.float32)
    strides = (stride, stride)
    got = gradients(lambda a, k: shifted_depthwise(a, k, strides, padding), x, kernel, cotangent)
    want = gradients(
        lambda a, k: keras.ops.depthwise_conv(a, k, stride, padding), x, kernel, cotangent
    )
    k_sum = np.abs(kernel).sum(axis=(0, 1)).max()
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=kernel_size**2 * EPS32 * k_sum * 5)
    dx_bound = kernel_size**2 * EPS32 * k_sum * np.abs(cotangent).max()
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=dx_bound)
    terms = cotangent.size // 4
    dk_bound = terms * EPS32 * np.abs(x).max() * np.abs(cotangent).max()
    np.testing.assert_allclose(got[2], want[2], rtol=0, atol=dk_bound)
    assert got[1].shape == x.shape and got[2].shape == kernel.shape
