"""ZoobotTree: learn a whole Galaxy Zoo decision tree from volunteer vote counts (DESIGN.md 1-2)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torchmetrics
from torch import nn

from zoobot.models.settings import PRETRAINING
from zoobot.models.tasks import (
    DEFAULT_CONCENTRATION,
    log_concentration_scale,
    saved_tree_args,
    tree_args,
)
from zoobot.shared import Schema, as_schema
from zoobot.torch.backend import BACKEND
from zoobot.torch.encoders import encoder_dim, load_encoder
from zoobot.torch.loss import DirichletMultinomialLoss
from zoobot.torch.module import ZoobotModule

STAGES = ("train", "validation", "test")


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


def dirichlet_head(
    in_features: int,
    n_answers: int,
    dropout: float,
    concentration: Sequence[float] | None = None,
) -> nn.Sequential:
    """Dropout, a linear layer, and one concentration per answer column: in the log-spaced
    `concentration` range (low, high), or 1 + 100 sigmoid without one."""
    scale = ScaledSigmoid() if concentration is None else LogScaledSigmoid(*concentration)
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n_answers), scale)


def _per_question_sum(values: torch.Tensor, index: torch.Tensor, n_questions: int) -> torch.Tensor:
    """(batch, answer) -> (batch, question) sums, vectorised with one scatter-add."""
    out = values.new_zeros(values.shape[0], n_questions)
    return out.index_add_(1, index, values)


class VoteFractionError(torchmetrics.Metric):
    """Per question: mean absolute error of the expected vote fractions, over galaxies asked it.

    The expected fraction of an answer is its concentration over the question's total; the observed
    fraction is its count over the question's total count. Answers are averaged within a question;
    galaxies where nobody answered the question are skipped (the value is NaN if none was asked).
    """

    full_state_update = False

    def __init__(self, schema: Schema):
        super().__init__()
        index = torch.as_tensor(schema.answer_question_index)
        self.register_buffer("index", index, persistent=False)
        sizes = torch.bincount(index).float()
        self.register_buffer("sizes", sizes, persistent=False)
        self.add_state("error", torch.zeros(len(schema.questions)), dist_reduce_fx="sum")
        self.add_state("asked", torch.zeros(len(schema.questions)), dist_reduce_fx="sum")

    def update(self, concentrations: torch.Tensor, counts: torch.Tensor) -> None:
        n = len(self.sizes)
        alpha_total = _per_question_sum(concentrations, self.index, n)
        count_total = _per_question_sum(counts, self.index, n)
        observed = counts / count_total.clamp_min(1e-12)[:, self.index]
        abs_error = (concentrations / alpha_total[:, self.index] - observed).abs()
        per_question = _per_question_sum(abs_error, self.index, n) / self.sizes
        asked = count_total > 0
        self.error += torch.where(asked, per_question, 0.0).sum(0)
        self.asked += asked.sum(0)

    def compute(self) -> torch.Tensor:
        return self.error / self.asked


class TreeSteps:
    """Loss and metrics of a model whose head predicts Dirichlet concentrations for a schema."""

    def _init_tree(self, schema: Schema) -> None:
        """Set up the loss and metrics of `schema`."""
        self.schema = schema
        self.loss = DirichletMultinomialLoss(schema)
        campaigns = schema.campaigns
        names = [q.name for q in schema.questions]
        membership = torch.tensor([[float(n in qs) for qs in campaigns.values()] for n in names])
        self.register_buffer("campaign_membership", membership, persistent=False)
        self.campaign_names = list(campaigns)
        self.vote_fraction_errors = nn.ModuleList(VoteFractionError(schema) for _ in STAGES)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, counts = batch
        counts = torch.nan_to_num(counts.float())
        concentrations = self(images).float()
        objective, per_question = self.loss(counts, concentrations, return_per_question=True)
        per_question = per_question.detach().mean(0)
        logged = {
            f"{stage}/loss/{q.name}": v
            for q, v in zip(self.schema.questions, per_question, strict=True)
        }
        campaign_losses = per_question @ self.campaign_membership
        logged |= {
            f"{stage}/campaign_loss/{c}": v
            for c, v in zip(self.campaign_names, campaign_losses, strict=True)
        }
        options = {"batch_size": len(counts), "sync_dist": stage != "train"}
        self.log(f"{stage}/loss", objective, on_step=stage == "train", on_epoch=True, **options)
        self.log_dict(logged, on_step=False, on_epoch=True, **options)
        self.vote_fraction_errors[STAGES.index(stage)].update(concentrations.detach(), counts)
        return objective

    def _log_vote_fraction_error(self, stage: str) -> None:
        metric = self.vote_fraction_errors[STAGES.index(stage)]
        errors = metric.compute()
        metric.reset()
        logged = {
            f"{stage}/vote_fraction_error/{q.name}": e
            for q, e in zip(self.schema.questions, errors, strict=True)
        }
        logged[f"{stage}/vote_fraction_error"] = errors.nanmean()
        self.log_dict({k: v for k, v in logged.items() if not torch.isnan(v)})

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "validation")

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_vote_fraction_error("train")

    def on_validation_epoch_end(self) -> None:
        self._log_vote_fraction_error("validation")

    def on_test_epoch_end(self) -> None:
        self._log_vote_fraction_error("test")


@BACKEND.tasks.register
class ZoobotTree(TreeSteps, ZoobotModule):
    """Pretrain an encoder on Galaxy Zoo votes: Dirichlet concentrations for every answer of `schema`.

    The loss is the Dirichlet-multinomial negative log-likelihood of the votes (`zoobot.torch.loss`),
    summed over questions and averaged over the batch; it is logged per question and per campaign,
    with the vote-fraction error of each question. `architecture` is any name `load_encoder` takes;
    `encoder=` uses a module instead. `settings` are `zoobot.models.settings.TrainingSettings`
    (defaults `PRETRAINING`: the whole encoder trains at `learning_rate=1e-3` after a one-epoch
    warmup, head dropout 0.2). `concentration` is the head's log-spaced (low, high) range (None:
    1 + 100 sigmoid, the head of models saved before the option). Predictions are concentrations,
    `(batch, answer, n_samples)`.
    """

    task = "tree"
    default_settings = PRETRAINING

    def __init__(
        self,
        schema: Schema | str | Mapping,
        architecture: str | os.PathLike = "convnext_nano",
        encoder: nn.Module | None = None,
        channels: int = 3,
        concentration: Sequence[float] | None = DEFAULT_CONCENTRATION,
        **settings,
    ):
        schema = as_schema(schema)
        settings = self.default_settings.replace(**settings)
        encoder = encoder if encoder is not None else load_encoder(architecture, channels)
        task_args = tree_args(schema, concentration)
        head = dirichlet_head(
            encoder_dim(encoder),
            len(schema.label_cols),
            settings.dropout,
            task_args["concentration"],
        )
        super().__init__(encoder, head, settings, task_args)
        self._init_tree(schema)

    @classmethod
    def from_task_config(cls, config: dict, encoder: nn.Module) -> ZoobotTree:
        return super().from_task_config(saved_tree_args(config), encoder)
