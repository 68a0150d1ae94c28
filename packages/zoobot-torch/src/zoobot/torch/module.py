"""The LightningModule every Zoobot model shares: encoder + head, partial freezing, schedule, MC passes."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from zoobot.models.blocks import n_trained
from zoobot.models.pretrained import PretrainedMixin
from zoobot.models.settings import FINETUNING, TrainingSettings
from zoobot.models.tasks import HeadSpec, log_concentration_scale
from zoobot.models.training import NonFiniteLossError, nonfinite_loss_message
from zoobot.torch.backend import BACKEND
from zoobot.torch.blocks import block_parameters, encoder_blocks, matches
from zoobot.torch.cpu import reused_memory
from zoobot.torch.depthwise import fast_depthwise
from zoobot.torch.optimizers import WarmupCosine, adamw

logger = logging.getLogger(__name__)


class FastCPUTraining(pl.Callback):
    """While fitting on CPU: activations reuse freed memory and depthwise convolutions
    back-propagate fast; everything is as it was when fitting ends or fails.

    `zoobot.torch.cpu.reused_memory`: each step's activations otherwise come from fresh
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


class ScaledSigmoid(nn.Module):
    """1 + 100 sigmoid(x): Dirichlet concentrations in (1, 101), never too peaked nor too flat."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1 + 100 * torch.sigmoid(x)


class LogScaledSigmoid(nn.Module):
    """Concentrations in (low, high), spread evenly in log: low (high / low)^sigmoid(x).

    A range reaching below 1 lets a rare answer's concentration be small while its question's total
    stays low, as split votes need (a Dirichlet whose every concentration is >= 1 cannot say "a few
    volunteers, unsure, might pick this").
    """

    def __init__(self, low: float, high: float):
        super().__init__()
        self.log_low, self.log_span = log_concentration_scale((low, high))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_low + self.log_span * torch.sigmoid(x))


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A block with autocast off on `device_type` (nothing to turn off where autocast is unknown)."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


class ZoobotModule(PretrainedMixin, pl.LightningModule):
    """An encoder and a head, training the head and the last `n_blocks` encoder blocks.

    `settings` (`zoobot.models.settings.TrainingSettings`) choose what trains and how: block `i`
    (0 nearest the head, see `zoobot.torch.blocks`) learns at `learning_rate * lr_decay**i`, the
    head at `learning_rate`; frozen blocks get no gradients and stay in eval mode, so their
    BatchNorm statistics never move. AdamW (fused where torch has the kernel); the learning rate
    warms up linearly, then follows a cosine to 0 over the rest of training. `task_args` are the
    task's own arguments, saved with the settings as the task config. Fitting on CPU is sped up by
    `FastCPUTraining`. A training step whose loss is NaN or infinite stops the fit before its
    gradients reach the weights (`NonFiniteLossError` names the step and, from a `GalaxyDataModule`,
    the batch's galaxies). `predict_step` makes `n_samples` passes per batch, with the head's
    dropout on if `mc_dropout` (attributes: set them before `trainer.predict`). Models save,
    reload and publish themselves (`save_pretrained`, `from_pretrained`, `push_to_hub`).
    """

    backend = BACKEND
    default_settings: ClassVar[TrainingSettings] = FINETUNING

    def __init__(
        self, encoder: nn.Module, head: nn.Module, settings: TrainingSettings, task_args: dict
    ):
        super().__init__()
        self.encoder, self.head, self.settings = encoder, head, settings
        self.task_args = dict(task_args)
        self.hparams.update(self.task_config())  # what Lightning logs and checkpoints
        self.n_samples, self.mc_dropout = 1, False
        blocks = encoder_blocks(encoder)
        count = n_trained(settings.n_blocks, len(blocks))
        self.trained_blocks = blocks[:count]
        self.frozen_prefixes = [p for block in blocks[count:] for p in block]
        for name, parameter in encoder.named_parameters():
            parameter.requires_grad_(not matches(name, self.frozen_prefixes))
        self.train(self.training)

    @classmethod
    def settings_and_rest(cls, kwargs: dict) -> tuple[TrainingSettings, dict]:
        """The `TrainingSettings` of keyword arguments (defaults `default_settings`); an unknown
        name is an error (`zoobot.models.tasks.TaskModel`)."""
        return cls.default_settings.replace(**kwargs), {}

    @staticmethod
    def build_head(spec: HeadSpec, in_features: int) -> nn.Sequential:
        """Dropout, a linear layer, then the activation `spec` names (`zoobot.models.tasks`)."""
        layers = [nn.Dropout(spec.dropout), nn.Linear(in_features, spec.outputs)]
        if spec.activation == "sigmoid":
            layers.append(nn.Sigmoid())
        elif spec.activation == "concentration":
            low_high = spec.concentration
            layers.append(ScaledSigmoid() if low_high is None else LogScaledSigmoid(*low_high))
        return nn.Sequential(*layers)

    def task_config(self) -> dict:
        """The arguments that rebuild this model around an encoder (`zoobot.models.tasks`)."""
        return {**self.task_args, **self.settings.as_dict()}

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
        rate, decay = self.settings.learning_rate, self.settings.lr_decay
        groups = [{"params": list(self.head.parameters()), "lr": rate}]
        for i, block in enumerate(self.trained_blocks):
            lr = rate * decay**i
            groups.append({"params": list(block_parameters(self.encoder, block)), "lr": lr})
        return [g for g in groups if g["params"]]

    def configure_optimizers(self) -> dict:
        """AdamW over `param_groups()` with the warmup + cosine schedule, stepped every batch."""
        settings = self.settings
        optimizer = adamw(
            self.param_groups(),
            fused=not ("mixed" in str(self.trainer.precision) and self.trainer.gradient_clip_val),
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
        )
        total = self.trainer.estimated_stepping_batches
        batches = self.trainer.num_training_batches
        if math.isinf(batches):
            if settings.warmup_epochs:
                logger.warning("epoch length unknown (max_steps training): warmup_epochs ignored")
            batches = 0
        per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
        warmup = settings.warmup_steps + round(settings.warmup_epochs * per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(warmup, total, settings.cosine)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _step(self, batch, stage: str) -> torch.Tensor:
        """The loss of a batch of stage `train`, `validation` or `test`, logged (the task's)."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "validation")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop before a non-finite loss's gradients reach the weights, naming the batch."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        from zoobot.torch.data.datamodule import batch_ids

        batch = getattr(self, "_batch_idx", -1)
        ids = batch_ids(self.trainer.train_dataloader, batch)
        weights = "The weights are those before this step"
        message = nonfinite_loss_message(
            float(loss.detach().float().mean()),
            self.global_step,
            self.current_epoch,
            batch,
            ids,
            weights,
        )
        raise NonFiniteLossError(message)

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
