"""What the zoobot.tf tests need of the backend Keras runs on (TensorFlow or JAX) beyond Keras:
gradients of a function, float64 (JAX computes it only with `jax_enable_x64`), and a mark for the
tests of TensorFlow-only features (`tf.distribute`)."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

ON_JAX = keras.backend.backend() == "jax"

tensorflow_only = pytest.mark.skipif(
    ON_JAX, reason="a TensorFlow-only feature (tf.distribute); tests-tf runs it"
)
jax_only = pytest.mark.skipif(not ON_JAX, reason="Keras on JAX only; tests-jax runs it")


def float64():
    """A context in which the backend computes float64: JAX's `enable_x64`; TensorFlow always."""
    if ON_JAX:
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def value_and_grad(function, x, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(function(x), d sum(function(x)) / dx) as NumPy, `x` (NumPy) converted to `dtype`."""
    if ON_JAX:
        import jax
        import jax.numpy as jnp

        def total(a):
            value = function(a)
            return jnp.sum(value), value

        (_, value), grad = jax.value_and_grad(total, has_aux=True)(jnp.asarray(x, dtype))
        return np.asarray(value), np.asarray(grad)
    import tensorflow as tf

    x = tf.Variable(tf.constant(x, dtype))
    with tf.GradientTape() as tape:
        value = function(x)
        total = tf.reduce_sum(value)
    return np.asarray(value), np.asarray(tape.gradient(total, x))


def dtype_of(tensor) -> str:
    """A tensor's dtype as Keras names it ("float32")."""
    return keras.backend.standardize_dtype(tensor.dtype)


def compiled(function):
    """`function` compiled by the backend: `jax.jit`, or a `tf.function` with XLA."""
    if ON_JAX:
        import jax

        return jax.jit(function)
    import tensorflow as tf

    return tf.function(function, jit_compile=True)


def weight_gradients(model, reduce, x, training: bool = False) -> list:
    """d reduce(model(x)) / d each trainable variable of `model`, as NumPy (None: no gradient)."""
    if ON_JAX:
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss(trainable):
            out, _ = model.stateless_call(trainable, non_trainable, x, training=training)
            return reduce(out)

        grads = jax.grad(loss)([v.value for v in model.trainable_variables])
        return [np.asarray(g) for g in grads]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = reduce(model(x, training=training))
    grads = tape.gradient(loss, model.trainable_variables)
    return [None if g is None else np.asarray(g) for g in grads]
