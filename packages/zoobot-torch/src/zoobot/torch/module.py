"""The LightningModule every Zoobot model shares: encoder + head, partial freezing, schedule, MC passes."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import os

import pytorch_lightning as pl
import torch
from torch import nn

from zoobot.data.fast_paths import choose
from zoobot.torch.blocks import block_parameters, encoder_blocks, matches
from zoobot.torch.depthwise import fast_depthwise
from zoobot.torch.encoders import load_encoder
from zoobot.torch.inference import reused_memory

logger = logging.getLogger(__name__)

# Constructor arguments that choose the encoder, which the Hub layout stores in its own right.
ENCODER_ARGUMENTS = ("architecture", "name", "channels")


def resolve_encoder(
    name: str | os.PathLike | None, encoder: nn.Module | None, channels: int
) -> nn.Module:
    """The encoder given, or the one `load_encoder(name, channels)` builds: exactly one of the two."""
    if (name is None) == (encoder is None):
        raise ValueError("pass exactly one of name= (architecture, hf_hub: or folder) and encoder=")
    return encoder if encoder is not None else load_encoder(name, channels)


class WarmupCosine:
    """Learning-rate factor per step: linear warmup to 1, then a cosine to 0 (or constant)."""

    def __init__(self, warmup_steps: int, total_steps: float, cosine: bool = True):
        self.warmup_steps, self.total_steps, self.cosine = warmup_steps, total_steps, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class FastCPUTraining(pl.Callback):
    """While fitting on CPU: activations reuse freed memory and depthwise convolutions
    back-propagate fast; everything is as it was when fitting ends or fails.

    `zoobot.torch.inference.reused_memory`: each step's activations otherwise come from fresh
    `mmap`s that page-fault in again. `zoobot.torch.depthwise.fast_depthwise`: torch's depthwise
    convolution backward is 5-15x slower than its forward on CPU; with the fast one a convnext_nano
    training step at batch 16 takes 7% less CPU time in fp32 and 19% less in bf16, same numbers.
    """

    def __init__(self):
        self._active: contextlib.ExitStack | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.strategy.root_device.type == "cpu" and self._active is None:
            self._active = contextlib.ExitStack()
            self._active.enter_context(reused_memory())
            self._active.enter_context(fast_depthwise(pl_module))

    def _release(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception) -> None:
        self._release()


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A block with autocast off on `device_type` (nothing to turn off where autocast is unknown)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


@functools.cache
def fused_adamw(device_type: str) -> tuple[bool, str]:
    """(whether torch's fused AdamW kernel runs on this device type and steps as the per-tensor
    loop does, why), tried once on a tiny parameter."""
    steps = []
    for fused in (True, False):
        parameter = nn.Parameter(torch.linspace(-1, 1, 8, device=device_type))
        parameter.grad = torch.linspace(0.5, -0.3, 8, device=device_type)
        try:
            torch.optim.AdamW([parameter], lr=0.1, fused=fused or None).step()
        except (RuntimeError, TypeError, ValueError) as err:
            return False, f"no fused AdamW for {device_type}: {str(err).splitlines()[0]}"
        steps.append(parameter.detach().cpu())
    # One float32 step: both compute lr * m / (sqrt(v) + eps) from the same inputs, a few roundings.
    if not torch.allclose(*steps, rtol=1e-6, atol=1e-7):
        return False, "the fused AdamW steps differently from the per-tensor loop"
    return True, f"torch has a fused AdamW kernel for {device_type}"


def adamw(param_groups: list[dict], fused: bool = True, **options) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the parameters' device (CPU from torch
    2.4, CUDA): one pass over the weights, 6x faster than the default per-tensor loop on CPU.

    `fused=False` keeps the per-tensor loop: Lightning refuses to clip the gradients of a fused
    optimizer under mixed precision (such an optimizer unscales gradients itself), so
    `configure_optimizers` asks for it only then. Off with `ZOOBOT_DISABLE=fused_adamw`.
    """
    first = next((p for group in param_groups for p in group["params"]), None)
    device_type = "cpu" if first is None else first.device.type
    if fused and choose("fused_adamw", *fused_adamw(device_type)):
        return torch.optim.AdamW(param_groups, fused=True, **options)
    return torch.optim.AdamW(param_groups, **options)


class ZoobotModule(pl.LightningModule):
    """An encoder and a head, training the head and the last `n_blocks` encoder blocks.

    `n_blocks=-1` trains the whole encoder, 0 none (a linear probe on frozen features). Block `i`
    (0 nearest the head, see `zoobot.torch.blocks`) learns at `learning_rate * lr_decay**i`, the head
    at `learning_rate`. Frozen blocks get no gradients and stay in eval mode, so their BatchNorm
    statistics never move. AdamW (fused where torch has the kernel); the learning rate warms up
    linearly for `warmup_epochs` + `warmup_steps` steps, then follows a cosine to 0 over the rest of
    training (`cosine=False`: flat). Fitting on CPU is sped up by `FastCPUTraining`.
    `predict_step` makes `n_samples` passes per batch, with the head's dropout on if `mc_dropout`
    (attributes: set them before `trainer.predict`).
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        n_blocks: int = -1,
        lr_decay: float = 1.0,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
        cosine: bool = True,
    ):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.lr_decay, self.learning_rate, self.weight_decay = lr_decay, learning_rate, weight_decay
        self.warmup_epochs, self.warmup_steps, self.cosine = warmup_epochs, warmup_steps, cosine
        self.n_samples, self.mc_dropout = 1, False
        blocks = encoder_blocks(encoder)
        n_trained = len(blocks) if n_blocks < 0 else min(n_blocks, len(blocks))
        self.trained_blocks = blocks[:n_trained]
        self.frozen_prefixes = [p for block in blocks[n_trained:] for p in block]
        for name, parameter in encoder.named_parameters():
            parameter.requires_grad_(not matches(name, self.frozen_prefixes))
        self.train(self.training)

    def _save_hyperparameters(self, *ignore: str) -> None:
        """Record the calling constructor's arguments, paths as text, except the encoder and `ignore`."""
        frame = inspect.currentframe().f_back
        self.save_hyperparameters(ignore=["encoder", *ignore], frame=frame)
        for key, value in self.hparams.items():
            if isinstance(value, os.PathLike):
                self.hparams[key] = os.fspath(value)

    def task_config(self) -> dict:
        """The arguments that rebuild this model around an encoder (`zoobot.torch.hub` protocol)."""
        return {k: v for k, v in self.hparams.items() if k not in ENCODER_ARGUMENTS}

    @classmethod
    def from_task_config(cls, config: dict, encoder: nn.Module) -> ZoobotModule:
        """The model `task_config()` describes, around `encoder`, with a fresh head."""
        return cls(encoder=encoder, **config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Head output for a batch of images (concentrations, logits or values), float32."""
        return self.head_output(self.encoder(images))

    def head_output(self, features: torch.Tensor) -> torch.Tensor:
        """The head on the encoder's features in float32 with autocast off, even under bf16/fp16
        autocast, which would round Dirichlet concentrations (up to 101) to steps of up to 0.5."""
        with _autocast_off(features.device.type):
            return self.head(features.float())

    def train(self, mode: bool = True) -> ZoobotModule:
        """Set the training mode, keeping frozen encoder blocks in eval mode."""
        super().train(mode)
        for name, module in self.encoder.named_modules():
            if matches(name, self.frozen_prefixes):
                module.eval()
        return self

    def param_groups(self) -> list[dict]:
        """Optimiser groups: the head at `learning_rate`, then each trained block, decaying."""
        groups = [{"params": list(self.head.parameters()), "lr": self.learning_rate}]
        for i, block in enumerate(self.trained_blocks):
            lr = self.learning_rate * self.lr_decay**i
            groups.append({"params": list(block_parameters(self.encoder, block)), "lr": lr})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> dict:
        """AdamW over `param_groups()` with the warmup + cosine schedule, stepped every batch."""
        optimizer = adamw(
            self.param_groups(),
            fused=not ("mixed" in str(self.trainer.precision) and self.trainer.gradient_clip_val),
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
        )
        total = self.trainer.estimated_stepping_batches
        batches = self.trainer.num_training_batches
        if math.isinf(batches):
            if self.warmup_epochs:
                logger.warning("epoch length unknown (max_steps training): warmup_epochs ignored")
            batches = 0
        per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
        warmup = self.warmup_steps + round(self.warmup_epochs * per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(warmup, total, self.cosine)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_callbacks(self) -> list[pl.Callback]:
        """`FastCPUTraining`, whatever Trainer fits this module."""
        return [FastCPUTraining()]

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """What one pass predicts from the head output (probabilities for a classifier)."""
        return output

    def predict_samples(
        self, images: torch.Tensor, n_samples: int = 1, mc_dropout: bool = False
    ) -> torch.Tensor:
        """(batch, output, n_samples) predictions; with `mc_dropout` each pass draws new dropout.

        The head runs in float32 outside autocast (`head_output`): only the encoder uses bf16.
        """
        dropouts = [m for m in self.head.modules() if isinstance(m, nn.Dropout)]
        modes = [m.training for m in dropouts]
        for m in dropouts:
            m.train(mc_dropout)
        try:
            features = self.encoder(images)
            passes = [self.prediction(self.head_output(features)) for _ in range(n_samples)]
        finally:
            for m, mode in zip(dropouts, modes, strict=True):
                m.train(mode)
        return torch.stack(passes, dim=-1)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """`predict_samples` of the batch's images with the `n_samples` and `mc_dropout` set."""
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self.predict_samples(images, self.n_samples, self.mc_dropout)
