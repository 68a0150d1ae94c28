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

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from zoobot.models.tasks import ClassifierTask, FinetuneableTreeTask, RegressorTask
from zoobot.torch.backend import BACKEND
from zoobot.torch.module import ZoobotModule
from zoobot.torch.training import get_trainer
from zoobot.torch.tree import STAGES, ZoobotTree

__all__ = [
    "FinetuneableZoobotClassifier",
    "FinetuneableZoobotRegressor",
    "FinetuneableZoobotTree",
    "get_trainer",
]


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


@BACKEND.tasks.register
class FinetuneableZoobotClassifier(ClassifierTask, _SupervisedSteps, ZoobotModule):
    """`zoobot.models.tasks.ClassifierTask` with PyTorch: cross-entropy and torchmetrics accuracy."""

    def setup_task(self) -> None:
        weights = self.task_args["class_weights"]
        self.register_buffer(
            "class_weights", None if weights is None else torch.tensor(weights), persistent=False
        )
        accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=self.num_classes)
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
class FinetuneableZoobotRegressor(RegressorTask, _SupervisedSteps, ZoobotModule):
    """`zoobot.models.tasks.RegressorTask` with PyTorch: the error and torchmetrics MAE / MSE."""

    def setup_task(self) -> None:
        self.loss_fn = F.mse_loss if self.loss_name == "mse" else F.l1_loss
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
class FinetuneableZoobotTree(FinetuneableTreeTask, ZoobotTree):
    """`zoobot.models.tasks.FinetuneableTreeTask` with PyTorch: `ZoobotTree` from a given encoder."""
