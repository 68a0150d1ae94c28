"""AdamW with per-variable learning rates, and the warmup + cosine schedule of zoobot.torch.

Keras 3 optimizers take one learning rate for every variable, and scaling gradients per block is no
substitute under Adam (its update does not depend on the gradient's scale). `LayerwiseAdamW` instead
multiplies the learning rate itself, variable by variable, in both the Adam update and the decoupled
weight decay, which is exactly what PyTorch parameter groups with different `lr` do. Its update is
PyTorch's AdamW formula (epsilon added to the bias-corrected root of the second moment, eps 1e-8),
not Keras's (epsilon before bias correction), so one step from the same weights and gradients
matches `torch.optim.AdamW`. Gradient clipping by global norm (`gradient_clip_norm`, as Lightning's
`gradient_clip_val`) runs on the whole batch's gradients (after the sum across `tf.distribute`
replicas on TensorFlow; on JAX a Keras distribution computes them on the global batch), with
PyTorch's `clip_grad_norm_` coefficient `max_norm / (norm + 1e-6)`. The arithmetic is `keras.ops`,
the same on TensorFlow and JAX.

That needs Keras internals (the optimizer's `_backend_update_step`, the Adam slots and variable
index every Keras optimizer keeps; on TensorFlow also its `_all_reduce_sum_gradients` and
`_distributed_tf_update_step` and `tf.__internal__`'s `maybe_merge_call`), so `layerwise_adamw`
steps one on a tiny variable against the formula in NumPy (`probe`) and otherwise builds Keras's own
`AdamW`: one learning rate for every variable (no layer-wise decay), Keras's epsilon, the global
norm clipped per replica. Off with `ZOOBOT_DISABLE=keras_optimizer_internals`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from zoobot.models.fast_paths import choose
from zoobot.models.settings import warmup_cosine
from zoobot.tf.runtime import on_jax

__all__ = ["LayerwiseAdamW", "WarmupCosine", "layerwise_adamw", "probe"]


@keras.saving.register_keras_serializable(package="zoobot")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate` times zoobot.torch's factor: linear warmup to 1, then a cosine to 0 (or flat).

    At optimizer step `s` (0 for the first update) the factor is `(s + 1) / warmup_steps` during the
    warmup, then `0.5 (1 + cos(pi * min(1, (s - warmup) / max(1, total - warmup))))`, or 1 with
    `cosine=False` or while `total_steps` is unknown (None).
    """

    def __init__(
        self,
        learning_rate: float,
        warmup_steps: int = 0,
        total_steps: float | None = None,
        cosine: bool = True,
    ):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = total_steps
        self.cosine = bool(cosine)

    def factor(self, step: int) -> float:
        """The factor at `step`, in Python: `zoobot.models.settings.warmup_cosine`."""
        cosine = self.cosine and self.total_steps is not None
        return warmup_cosine(step, self.warmup_steps, self.total_steps or 0, cosine)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        if not self.cosine or self.total_steps is None:
            after = ops.ones((), "float32")
        else:
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.minimum(1.0, (step - warmup) / span)
            after = 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            factor = ops.where(step < warmup, (step + 1.0) / warmup, after)
        else:
            factor = after
        return self.learning_rate * factor

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "cosine": self.cosine,
        }


@keras.saving.register_keras_serializable(package="zoobot")
class LayerwiseAdamW(keras.optimizers.AdamW):
    """AdamW (PyTorch's update) whose learning rate is scaled per variable by `lr_multiplier(var)`.

    `lr_multiplier` maps each trainable variable to a factor (1 if None): a variable with factor `f`
    learns and decays at `f * learning_rate`, like a PyTorch parameter group with `lr = f * lr`. The
    multipliers are read when the optimizer is built on its variables. `gradient_clip_norm` clips the
    global gradient norm after the cross-replica sum. The multiplier is not part of `get_config`.
    """

    def __init__(
        self,
        learning_rate=1e-3,
        weight_decay: float = 0.05,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        lr_multiplier: Callable[[keras.Variable], float] | None = None,
        gradient_clip_norm: float | None = None,
        name: str = "layerwise_adamw",
        **kwargs,
    ):
        for unsupported in ("amsgrad", "clipnorm", "clipvalue", "global_clipnorm"):
            if kwargs.get(unsupported):
                raise ValueError(
                    f"LayerwiseAdamW does not support {unsupported}; use gradient_clip_norm"
                )
            kwargs.pop(unsupported, None)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            name=name,
            **kwargs,
        )
        self.lr_multiplier = lr_multiplier
        self.gradient_clip_norm = gradient_clip_norm
        self.warmup_schedule = learning_rate if isinstance(learning_rate, WarmupCosine) else None
        self._multipliers: list[float] = []

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        multiplier = self.lr_multiplier or (lambda variable: 1.0)
        self._multipliers = [float(multiplier(v)) for v in var_list]

    def multiplier_of(self, variable) -> float:
        """The learning-rate factor of a variable the optimizer was built on."""
        return self._multipliers[self._get_variable_index(variable)]

    def _step_scalars(self, learning_rate) -> tuple:
        """(lr, lr / bias_correction1, sqrt(bias_correction2)) of this step, computed once."""
        lr = ops.cast(learning_rate, "float32")
        step = ops.cast(self.iterations + 1, "float32")
        bias_correction1 = 1 - ops.power(ops.cast(self.beta_1, "float32"), step)
        bias_correction2 = 1 - ops.power(ops.cast(self.beta_2, "float32"), step)
        return lr, lr / bias_correction1, ops.sqrt(bias_correction2)

    def update_step(self, gradient, variable, learning_rate):
        """Decoupled weight decay, then PyTorch's Adam update, at this variable's learning rate.

        `learning_rate` is the tuple of `_step_scalars` (shared by every variable of the step).
        """
        if not isinstance(learning_rate, tuple | list):
            learning_rate = self._step_scalars(learning_rate)
        lr, step_size, root_bias_correction2 = learning_rate
        index = self._get_variable_index(variable)
        factor = self._multipliers[index]
        dtype = variable.dtype
        if self.weight_decay and self._use_weight_decay(variable):
            decay = ops.cast(lr * (factor * self.weight_decay), dtype)
            self.assign_sub(variable, variable * decay)
        gradient = ops.cast(gradient, dtype)
        m = self._momentums[index]
        v = self._velocities[index]
        self.assign_add(m, (gradient - m) * (1 - self.beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - self.beta_2))
        denominator = ops.sqrt(v) / ops.cast(root_bias_correction2, dtype) + self.epsilon
        self.assign_sub(variable, m * ops.cast(step_size * factor, dtype) / denominator)

    def _apply_weight_decay(self, variables):
        """Weight decay runs in `update_step`, per variable at its own learning rate."""

    def _clipped(self, grads: list) -> list:
        """The gradients scaled to global norm `gradient_clip_norm` at most (PyTorch's coefficient)."""
        if not self.gradient_clip_norm:
            return list(grads)
        norm = ops.sqrt(sum(ops.sum(ops.square(ops.cast(g, "float32"))) for g in grads))
        coefficient = ops.minimum(1.0, self.gradient_clip_norm / (norm + 1e-6))
        return [g * ops.cast(coefficient, g.dtype) for g in grads]

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Clip the whole batch's gradients' global norm, then update every variable; on TensorFlow
        the gradients are first summed across `tf.distribute` replicas."""
        if on_jax():
            scalars = self._step_scalars(learning_rate)
            for gradient, variable in zip(self._clipped(grads), trainable_variables, strict=True):
                self.update_step(gradient, variable, scalars)
            return
        import tensorflow as tf

        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, variables, strict=True)))
        grads = self._clipped([g for g, _ in grads_and_vars])
        grads_and_vars = list(zip(grads, [v for _, v in grads_and_vars], strict=True))
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step,
            self._distribution_strategy,
            grads_and_vars,
            self._step_scalars(learning_rate),
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("amsgrad", None)
        for key in ("clipnorm", "clipvalue", "global_clipnorm"):
            config.pop(key, None)
        return {**config, "gradient_clip_norm": self.gradient_clip_norm}


def _reference_steps(weight, gradients, multiplier, lr, weight_decay, clip, eps=1e-8):
    """PyTorch's AdamW (betas 0.9, 0.999) after `clip_grad_norm_`, one step per gradient, in
    float64: what `LayerwiseAdamW` must compute."""
    m, v = np.zeros_like(weight), np.zeros_like(weight)
    lr = lr * multiplier
    for step, gradient in enumerate(gradients, start=1):
        gradient = gradient * min(1.0, clip / (np.sqrt(np.sum(gradient**2)) + 1e-6))
        weight = weight * (1 - lr * weight_decay)
        m = 0.9 * m + 0.1 * gradient
        v = 0.999 * v + 0.001 * gradient**2
        denominator = np.sqrt(v / (1 - 0.999**step)) + eps
        weight = weight - lr * m / (1 - 0.9**step) / denominator
    return weight


@functools.cache
def probe() -> tuple[bool, str]:
    """(whether `LayerwiseAdamW` steps as PyTorch's AdamW with this Keras and TensorFlow, why):
    one eager step on a tiny variable with a multiplier, weight decay and clipping, in a thread of
    its own so the caller's `tf.distribute` scope and dtype policy (both per thread) stay out."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_probe).result()


def _probe() -> tuple[bool, str]:
    start = np.array([0.5, -1.0, 2.0], np.float32)
    # The first step's norm (5.02) is clipped to 1, the second's (0.54) is not: Adam's second
    # step depends on the ratio of the two, so it shows whether clipping happened.
    gradients = [np.array(g, np.float32) for g in ([3.0, -4.0, 0.5], [0.3, 0.4, -0.2])]
    try:
        variable = keras.Variable(start)
        optimizer = LayerwiseAdamW(
            0.1, weight_decay=0.05, lr_multiplier=lambda v: 0.5, gradient_clip_norm=1.0
        )
        for gradient in gradients:
            optimizer.apply_gradients([(ops.convert_to_tensor(gradient), variable)])
        got = np.asarray(variable.numpy(), np.float64)
    except Exception as err:  # any failure inside Keras means the internals changed
        return False, f"Keras's optimizer internals changed: {type(err).__name__}: {err}"
    expected = _reference_steps(start.astype(np.float64), gradients, 0.5, 0.1, 0.05, 1.0)
    # float32 arithmetic of a handful of operations on values of order 1: a few 2**-24 roundings.
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        return False, "LayerwiseAdamW no longer steps as PyTorch's AdamW with this Keras"
    return True, "Keras's optimizer internals are as verified"


def layerwise_adamw(
    learning_rate,
    weight_decay: float,
    lr_multiplier: Callable[[keras.Variable], float] | None,
    gradient_clip_norm: float | None,
) -> keras.optimizers.Optimizer:
    """`LayerwiseAdamW` where its `probe` passes, else Keras's `AdamW` (one learning rate for every
    variable, Keras's epsilon placement, clipping per replica), with one log line saying which."""
    if choose("keras_optimizer_internals", *probe()):
        return LayerwiseAdamW(
            learning_rate,
            weight_decay=weight_decay,
            lr_multiplier=lr_multiplier,
            gradient_clip_norm=gradient_clip_norm,
        )
    optimizer = keras.optimizers.AdamW(
        learning_rate, weight_decay=weight_decay, epsilon=1e-8, global_clipnorm=gradient_clip_norm
    )
    optimizer.warmup_schedule = learning_rate if isinstance(learning_rate, WarmupCosine) else None
    return optimizer
