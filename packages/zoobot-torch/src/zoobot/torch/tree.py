"""ZoobotTree: learn a whole Galaxy Zoo decision tree from volunteer vote counts (DESIGN.md 1-2)."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn

from zoobot.models.tasks import TreeTask
from zoobot.shared import Schema
from zoobot.torch.backend import BACKEND
from zoobot.torch.loss import DirichletMultinomialLoss, question_sums, vote_fraction_kl
from zoobot.torch.module import LogScaledSigmoid, ScaledSigmoid, ZoobotModule

__all__ = ["LogScaledSigmoid", "ScaledSigmoid", "TreeSteps", "VoteFractionError", "ZoobotTree"]

STAGES = ("train", "validation", "test")


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
        alpha_total = question_sums(concentrations, self.index, n)
        count_total = question_sums(counts, self.index, n)
        observed = counts / count_total.clamp_min(1e-12)[:, self.index]
        abs_error = (concentrations / alpha_total[:, self.index] - observed).abs()
        per_question = question_sums(abs_error, self.index, n) / self.sizes
        asked = count_total > 0
        self.error += torch.where(asked, per_question, 0.0).sum(0)
        self.asked += asked.sum(0)

    def compute(self) -> torch.Tensor:
        return self.error / self.asked


class TreeSteps:
    """Loss and metrics of a model whose head predicts Dirichlet concentrations for a schema: the
    Dirichlet-multinomial likelihood (logged per question and campaign) plus `fraction_weight`
    times the vote-fraction KL (logged as `fraction_kl`)."""

    def setup_task(self) -> None:
        """Set up the loss and metrics of the model's `schema`."""
        schema = self.schema
        self.loss = DirichletMultinomialLoss(schema)
        campaigns = schema.campaigns
        names = [q.name for q in schema.questions]
        membership = torch.tensor([[float(n in qs) for qs in campaigns.values()] for n in names])
        self.register_buffer("campaign_membership", membership, persistent=False)
        self.campaign_names = list(campaigns)
        self.vote_fraction_errors = nn.ModuleList(VoteFractionError(schema) for _ in STAGES)

    def objective_terms(self, counts: torch.Tensor, concentrations: torch.Tensor):
        """(training objective, (batch, question) likelihood, vote-fraction KL) of vote `counts`
        (0 where unasked); the KL is summed over questions and averaged over the batch, and is
        logged whatever its weight, as zoobot.tf's `TreeMetrics` does."""
        objective, per_question = self.loss(counts, concentrations, return_per_question=True)
        kl = vote_fraction_kl(counts, concentrations, self.loss.layout).sum(1).mean()
        if self.fraction_weight:
            objective = objective + self.fraction_weight * kl
        return objective, per_question, kl

    def task_loss(self, counts: torch.Tensor, concentrations: torch.Tensor) -> torch.Tensor:
        """The training objective: summed over questions, mean over the batch."""
        return self.objective_terms(counts, concentrations)[0]

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, counts = batch
        counts = torch.nan_to_num(counts.float())
        concentrations = self(images).float()
        objective, per_question, kl = self.objective_terms(counts, concentrations)
        options = {"batch_size": len(counts), "sync_dist": stage != "train"}
        self.log(f"{stage}/fraction_kl", kl.detach(), on_step=False, on_epoch=True, **options)
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

    def on_train_epoch_end(self) -> None:
        self._log_vote_fraction_error("train")

    def on_validation_epoch_end(self) -> None:
        self._log_vote_fraction_error("validation")

    def on_test_epoch_end(self) -> None:
        self._log_vote_fraction_error("test")


@BACKEND.tasks.register
class ZoobotTree(TreeTask, TreeSteps, ZoobotModule):
    """`zoobot.models.tasks.TreeTask` with PyTorch: the loss of `zoobot.torch.loss`, logged per
    question and per campaign with the vote-fraction error of each question."""
