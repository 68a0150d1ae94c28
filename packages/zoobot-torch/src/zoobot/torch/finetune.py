"""Finetune a pretrained encoder for a new task: classes, continuous targets, or a new decision tree.

Each model takes `name=` (anything `load_encoder` reads: `hf_hub:owner/repo`, a folder in the Hub
layout, a timm architecture) or `encoder=`, and trains the head plus the last `n_blocks` encoder
blocks with layer-wise learning-rate decay `lr_decay`: the training settings of
`zoobot.models.settings.TrainingSettings`, as keyword arguments (defaults `FINETUNING`: a linear
probe, `n_blocks=0`, at `learning_rate=1e-4`, head dropout 0.5). Train them with
`get_trainer(save_dir).fit(model, datamodule)`, or start from a published encoder with
`FinetuneableZoobotClassifier.from_pretrained("hf_hub:...", num_classes=2)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from zoobot.models.settings import FINETUNING
from zoobot.models.tasks import classifier_args, resolve_encoder
from zoobot.shared import Schema
from zoobot.torch.backend import BACKEND
from zoobot.torch.encoders import encoder_dim
from zoobot.torch.module import ZoobotModule
from zoobot.torch.training import get_trainer
from zoobot.torch.tree import STAGES, ZoobotTree

__all__ = [
    "FinetuneableZoobotClassifier",
    "FinetuneableZoobotRegressor",
    "FinetuneableZoobotTree",
    "get_trainer",
]


def _linear_head(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    """Dropout then a linear layer: logits or values from the pooled features."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))


class _StageMetrics(nn.Module):
    """One copy of some torchmetrics per stage, logged at each epoch's end by Lightning."""

    def __init__(self, **metrics: torchmetrics.Metric):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.ModuleDict({k: m.clone() for k, m in metrics.items()}) for _ in STAGES
        )

    def __getitem__(self, stage: str) -> nn.ModuleDict:
        return self.stages[STAGES.index(stage)]


class _SupervisedSteps:
    """Training, validation and test steps for a loss on (images, labels) plus stage metrics."""

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        output = self(images)
        loss, target = self.loss_and_target(output, labels)
        options = {"batch_size": len(labels), "sync_dist": stage != "train"}
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, **options)
        for name, metric in self.metrics[stage].items():
            metric(self.prediction(output.detach()), target)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, **options)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "validation")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")


@BACKEND.tasks.register
class FinetuneableZoobotClassifier(_SupervisedSteps, ZoobotModule):
    """Classify galaxies into `num_classes` classes; labels are class indices 0..num_classes-1.

    Cross-entropy with optional `label_smoothing` and per-class `class_weights`; accuracy is logged.
    Predictions are softmax probabilities, `(batch, num_classes, n_samples)`, ready for calibration.
    `class_names` (one per class, in index order) are kept in the task config, so a saved model
    says what its outputs are (`model.class_names`; None if not given).
    """

    task = "classifier"
    default_settings = FINETUNING

    def __init__(
        self,
        num_classes: int,
        name: str | os.PathLike | None = None,
        encoder: nn.Module | None = None,
        channels: int = 3,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        **settings,
    ):
        settings = self.default_settings.replace(**settings)
        task_args = classifier_args(num_classes, label_smoothing, class_weights, class_names)
        encoder = resolve_encoder(BACKEND, name, encoder, channels)
        head = _linear_head(encoder_dim(encoder), num_classes, settings.dropout)
        super().__init__(encoder, head, settings, task_args)
        self.class_names = task_args.get("class_names")
        weights = task_args["class_weights"]
        self.register_buffer(
            "class_weights", None if weights is None else torch.tensor(weights), persistent=False
        )
        self.label_smoothing = label_smoothing
        accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.metrics = _StageMetrics(accuracy=accuracy)

    def loss_and_target(
        self, output: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the logits against the class index labels (one label column)."""
        target = labels.reshape(-1).long()
        loss = F.cross_entropy(
            output.float(), target, self.class_weights, label_smoothing=self.label_smoothing
        )
        return loss, target

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        return output.float().softmax(dim=1)


@BACKEND.tasks.register
class FinetuneableZoobotRegressor(_SupervisedSteps, ZoobotModule):
    """Predict `num_outputs` continuous values per galaxy with a mean squared or absolute error loss.

    `unit_interval=True` squashes outputs into (0, 1) with a sigmoid, for fractions. MAE and MSE are
    logged. Predictions are `(batch, num_outputs, n_samples)`.
    """

    task = "regressor"
    default_settings = FINETUNING

    def __init__(
        self,
        name: str | os.PathLike | None = None,
        encoder: nn.Module | None = None,
        channels: int = 3,
        loss: str = "mse",
        unit_interval: bool = False,
        num_outputs: int = 1,
        **settings,
    ):
        if loss not in ("mse", "mae"):
            raise ValueError(f"loss must be 'mse' or 'mae', got {loss!r}")
        settings = self.default_settings.replace(**settings)
        encoder = resolve_encoder(BACKEND, name, encoder, channels)
        head = _linear_head(encoder_dim(encoder), num_outputs, settings.dropout)
        if unit_interval:
            head.append(nn.Sigmoid())
        task_args = {"loss": loss, "unit_interval": unit_interval, "num_outputs": num_outputs}
        super().__init__(encoder, head, settings, task_args)
        self.loss_fn = F.mse_loss if loss == "mse" else F.l1_loss
        self.metrics = _StageMetrics(
            mae=torchmetrics.MeanAbsoluteError(), mse=torchmetrics.MeanSquaredError()
        )

    def loss_and_target(
        self, output: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen error of the outputs against the label columns."""
        target = labels.reshape(output.shape).float()
        return self.loss_fn(output.float(), target), target


@BACKEND.tasks.register
class FinetuneableZoobotTree(ZoobotTree):
    """Finetune on votes for a (new) decision tree `schema`, as `ZoobotTree` does for pretraining.

    Only the encoder source (`name=` or `encoder=`) and the finetuning defaults differ.
    """

    task = "finetuneable_tree"
    default_settings = FINETUNING

    def __init__(
        self,
        schema: Schema | str | Mapping,
        name: str | os.PathLike | None = None,
        encoder: nn.Module | None = None,
        channels: int = 3,
        **settings,
    ):
        super().__init__(
            schema, encoder=resolve_encoder(BACKEND, name, encoder, channels), **settings
        )
