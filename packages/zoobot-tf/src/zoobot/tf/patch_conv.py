"""Convolutions whose windows do not overlap (1x1, and kernel == stride) as matrix products on JAX's CPU.

A 1x1 convolution (ConvNeXt's `conv_mlp` layers, EfficientNet's expand, project and squeeze-excite
layers) or a patchify convolution whose stride equals its kernel (ConvNeXt's 4x4 stem and 2x2
downsampling) is a matrix product of the channels of each pixel (of each patch, laid out as one
vector) with the kernel reshaped to (kh * kw * C_in, C_out). XLA:CPU runs them as convolutions, and
their kernel gradients as convolutions with a window the size of the whole image: in a convnext_nano
training step these took about half the time (benchmarks/jax_vs_tf_torch.py, issue 19). As a
reshape and `ops.matmul` they become dot products, and the gradients too.

`Conv2D` is `keras.layers.Conv2D` (same weights, config and serialisation) that takes that path when
Keras runs on JAX on a CPU (`fast_paths` name `xla_cpu_patch_conv`, one log line; off with
`ZOOBOT_DISABLE=xla_cpu_patch_conv`) and Keras's own convolution otherwise (TensorFlow, GPUs, groups,
dilation, overlapping windows, padding). Both sum the same products in float32 in another order, so
they agree to float32 rounding.
"""

from __future__ import annotations

import keras
from keras import ops

from zoobot.tf import runtime
from zoobot.tf.depthwise import _same_padding

__all__ = ["Conv2D", "patch_matmul", "xla_cpu"]


def xla_cpu() -> bool:
    """Whether non-overlapping convolutions take the matmul path (JAX on a CPU), logged once."""
    return runtime.xla_cpu_path(
        "xla_cpu_patch_conv",
        "XLA:CPU runs 1x1 and patchify convolutions' gradients as large convolutions",
    )


def patch_matmul(x, kernel, stride: int):
    """`ops.conv(x, kernel, stride, "valid")` of channels-last `x` (static height and width) and a
    (s, s, C_in, C_out) kernel with stride s: rows and columns beyond the last whole patch dropped,
    each s x s patch flattened (row, column, channel), times the kernel as (s * s * C_in, C_out)."""
    s = int(stride)
    kernel = ops.cast(kernel, x.dtype)
    if s == 1:
        return ops.matmul(x, kernel[0, 0])
    channels = int(x.shape[3])
    out_h, out_w = int(x.shape[1]) // s, int(x.shape[2]) // s
    x = x[:, : out_h * s, : out_w * s, :]
    x = ops.reshape(x, (-1, out_h, s, out_w, s, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    x = ops.reshape(x, (-1, out_h, out_w, s * s * channels))
    return ops.matmul(x, ops.reshape(kernel, (s * s * channels, int(kernel.shape[3]))))


@keras.saving.register_keras_serializable(package="zoobot")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D`, computed by `patch_matmul` where its windows do not overlap and
    `xla_cpu()`."""

    def _patch_stride(self, inputs) -> int | None:
        """The stride of a non-overlapping, unpadded convolution of `inputs`, else None."""
        kh, kw = self.kernel_size
        if (
            isinstance(inputs, keras.KerasTensor)  # building: shapes only, the same either way
            or self.data_format != "channels_last"
            or self.groups != 1
            or tuple(self.dilation_rate) != (1, 1)
            or kh != kw
            or tuple(self.strides) != (kh, kh)
            or inputs.shape[1] is None
            or inputs.shape[2] is None
        ):
            return None
        if self.padding == "same" and any(
            _same_padding(int(size), kh, kh) != (0, 0) for size in inputs.shape[1:3]
        ):
            return None
        return kh

    def call(self, inputs):
        stride = self._patch_stride(inputs)
        if stride is None or not xla_cpu():
            return super().call(inputs)
        outputs = patch_matmul(inputs, self.kernel, stride)
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, outputs.dtype)
        return outputs if self.activation is None else self.activation(outputs)
