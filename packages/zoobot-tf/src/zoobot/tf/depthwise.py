"""Depthwise convolutions that run fast with Keras on JAX on a CPU: the same layer, another kernel.

XLA:CPU (JAX's CPU compiler) has no grouped-convolution kernel: it rewrites a depthwise
convolution of C channels into a dense one with a block-diagonal C x C kernel, C times the work.
A 7x7 depthwise layer of convnext_nano's first stage (80 channels, batch 32 at 56x56 px) takes ~2 s
there against 25 ms in TensorFlow's oneDNN kernel. The same convolution written as a sum of
kernel-size shifted slices of the input, each scaled per channel, is plain elementwise work that
XLA fuses into one loop, ~10x faster, with the same gradients.

`DepthwiseConv2D` is `keras.layers.DepthwiseConv2D` (same weights, config and serialisation) that
takes that path when Keras runs on JAX on a CPU (`fast_paths` name `xla_cpu_depthwise`, one log
line; off with `ZOOBOT_DISABLE=xla_cpu_depthwise`) and Keras's own `ops.depthwise_conv` otherwise
(TensorFlow, GPUs, dilation or a depth multiplier). Both sum the same products in float32 in
another order, so they agree to float32 rounding.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from zoobot.tf import runtime

__all__ = ["DepthwiseConv2D", "shifted_depthwise", "xla_cpu"]


def xla_cpu() -> bool:
    """Whether depthwise convolutions take the shifted-sum path (JAX on a CPU), logged once."""
    return runtime.xla_cpu_path(
        "xla_cpu_depthwise",
        "XLA:CPU runs depthwise convolutions as dense ones; shifted sums instead",
    )


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's (and Keras's) "same" padding of one spatial axis: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def shifted_depthwise(x, kernel, strides: tuple[int, int], padding: str):
    """`ops.depthwise_conv(x, kernel, strides, padding)` of channels-last `x` (static height and
    width) and a (kh, kw, C, 1) kernel, as a sum over the kernel of shifted, strided slices."""
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    sh, sw = strides
    if padding == "same":
        top, bottom = _same_padding(int(x.shape[1]), kh, sh)
        left, right = _same_padding(int(x.shape[2]), kw, sw)
        if top or bottom or left or right:
            x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    if runtime.on_jax():
        return _jax_shifted_sums(x, kernel[:, :, :, 0], strides)
    return _shifted_sums(x, ops.cast(kernel[:, :, :, 0], x.dtype), strides)


def _shifted_sums(x, kernel, strides: tuple[int, int]):
    """The "valid" depthwise convolution of (already padded) `x` with a (kh, kw, C) kernel."""
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    sh, sw = strides
    out_h, out_w = (int(x.shape[1]) - kh) // sh + 1, (int(x.shape[2]) - kw) // sw + 1
    total = None
    for i in range(kh):
        for j in range(kw):
            window = x[:, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw, :]
            term = window * kernel[i, j]
            total = term if total is None else total + term
    return total


def _jax_shifted_sums(x, kernel, strides: tuple[int, int]):
    """`_shifted_sums` on JAX with a hand-written gradient (same values, float32 rounding).

    JAX's own gradient of the shifted sums takes the kernel's gradient as kh * kw separate
    reductions over the whole batch, which XLA:CPU runs ~3x slower than the forward pass of the
    layer, and the input's as a sum of padded slices. Here the input's gradient (stride 1) is the
    shifted sums of the padded output gradient with the flipped kernel, and the kernel's is summed
    one image at a time (a loop over the batch whose kh * kw reductions stay in cache).
    """
    import jax
    import jax.numpy as jnp

    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    sh, sw = strides
    out_h, out_w = (int(x.shape[1]) - kh) // sh + 1, (int(x.shape[2]) - kw) // sw + 1

    @jax.custom_vjp
    def sums(x, kernel):
        return _shifted_sums(x, kernel.astype(x.dtype), strides)

    def forward(x, kernel):
        return sums(x, kernel), (x, kernel)

    def backward(residuals, grad):
        x, kernel = residuals
        if (sh, sw) == (1, 1):
            padded = jnp.pad(grad, [(0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)])
            dx = _shifted_sums(padded, kernel[::-1, ::-1].astype(grad.dtype), (1, 1))
        else:
            dx = jax.vjp(lambda x: _shifted_sums(x, kernel.astype(x.dtype), strides), x)[1](grad)[0]

        def image(n, total):
            xn = jax.lax.dynamic_index_in_dim(x, n, keepdims=False)
            gn = jax.lax.dynamic_index_in_dim(grad, n, keepdims=False)
            terms = [
                jnp.sum(
                    xn[i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw] * gn,
                    axis=(0, 1),
                )
                for i in range(kh)
                for j in range(kw)
            ]
            return total + jnp.stack(terms).astype(total.dtype)

        start = jnp.zeros((kh * kw, kernel.shape[-1]), grad.dtype)
        dk = jax.lax.fori_loop(0, x.shape[0], image, start)
        return dx, dk.reshape(kernel.shape).astype(kernel.dtype)

    sums.defvjp(forward, backward)
    return sums(x, kernel)


@keras.saving.register_keras_serializable(package="zoobot")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D`, computed by `shifted_depthwise` where `xla_cpu()`."""

    def call(self, inputs):
        plain = (
            isinstance(inputs, keras.KerasTensor)  # building: shapes only, the same either way
            or self.data_format != "channels_last"
            or self.depth_multiplier != 1
            or tuple(self.dilation_rate) != (1, 1)
            or inputs.shape[1] is None
            or inputs.shape[2] is None
        )
        if plain or not xla_cpu():
            return super().call(inputs)
        outputs = shifted_depthwise(inputs, self.kernel, tuple(self.strides), self.padding)
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        return outputs if self.activation is None else self.activation(outputs)
