"""ZoobotTree: Dirichlet head, loss and metrics per question and campaign, MC dropout, Hub round trip.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from zoobot.models.tasks import DEFAULT_FRACTION_WEIGHT
from zoobot.shared import Schema, get_schema
from zoobot.shared.loss import training_objective
from zoobot.torch import DirichletMultinomialLoss, ZoobotTree, from_pretrained, save_pretrained
from zoobot.torch.module import FastCPUTraining
from zoobot.torch.tree import VoteFractionError

TOY = Schema(
    {"smooth-or-featured-dr5": ["smooth", "featured"], "bar-dr8": ["yes", "no"]},
    {"bar-dr8": "smooth-or-featured-dr5_featured"},
    name="toy",
)


def tiny_tree(schema=TOY, **kwargs) -> ZoobotTree:
    torch.manual_seed(0)
    return ZoobotTree(schema, encoder=timm.create_model("resnet10t", num_classes=0), **kwargs)


def vote_batches(schema: Schema, n: int = 16, seed: int = 0) -> DataLoader:
    """Random 32 px images with random vote counts, some questions unasked."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=generator)
    counts = torch.randint(0, 10, (n, len(schema.label_cols)), generator=generator).float()
    start, end = schema.question_index_groups[-1]
    counts[: n // 2, start : end + 1] = 0
    return DataLoader(TensorDataset(images, counts), batch_size=8)


def quiet_trainer(**kwargs) -> pl.Trainer:
    options = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**(options | kwargs))


def test_concentrations_lie_in_1_to_101():
    model = tiny_tree(concentration=None).eval()
    model.head[1].weight.data.mul_(1e3)
    out = model(torch.rand(4, 3, 32, 32) * 100)
    assert out.shape == (4, len(TOY.label_cols))
    assert (out >= 1).all() and (out <= 101).all()
    assert out.min() < 1.01 and out.max() > 100.99, "saturated logits reach both ends"
    torch.testing.assert_close(model.head[2](torch.zeros(1)), torch.tensor([51.0]))


def test_log_spaced_concentrations_span_their_range():
    model = tiny_tree(concentration=(0.01, 1000.0)).eval()
    model.head[1].weight.data.mul_(1e3)
    out = model(torch.rand(4, 3, 32, 32) * 100)
    # float32 exp of log-spaced values: a few ulp of relative error at each end.
    assert (out >= 0.01 * (1 - 1e-6)).all() and (out <= 1000 * (1 + 1e-6)).all()
    assert out.min() < 0.0101 and out.max() > 990, "saturated logits reach both ends"
    scale = model.head[2]
    # The midpoint is the geometric mean, sqrt(0.01 * 1000) = sqrt(10).
    torch.testing.assert_close(scale(torch.zeros(1)), torch.tensor([10**0.5]))
    with pytest.raises(ValueError, match="0 < low < high"):
        tiny_tree(concentration=(1.0, 1.0))


def test_concentration_range_is_saved_with_the_model(tmp_path):
    model = tiny_tree(concentration=(0.1, 100.0)).eval()
    save_pretrained(model, tmp_path / "tree")
    reloaded = from_pretrained(tmp_path / "tree").eval()
    assert list(reloaded.hparams["concentration"]) == [0.1, 100.0]
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(images), model(images), rtol=0, atol=0)


@pytest.mark.parametrize("fraction_weight", [DEFAULT_FRACTION_WEIGHT, 0.0])
def test_step_loss_is_the_training_objective_with_nan_as_unasked(fraction_weight):
    model = tiny_tree(fraction_weight=fraction_weight).eval()
    images, counts = next(iter(vote_batches(TOY)))
    with_nan = counts.clone()
    with_nan[counts == 0] = float("nan")
    concentrations = model(images)
    with pytest.warns(UserWarning, match="self.log"):  # logging outside a Trainer only warns
        step_loss = model.training_step((images, with_nan), 0)
    alpha = concentrations.detach().double().numpy()
    oracle = training_objective(counts.double().numpy(), alpha, TOY, fraction_weight)
    # float32 concentrations and KL terms, float64 likelihood sums: float32 rounding of ~30
    assert float(step_loss.detach()) == pytest.approx(oracle, rel=1e-6)
    if not fraction_weight:  # the likelihood alone, as trees saved before the option trained
        torch.testing.assert_close(step_loss, DirichletMultinomialLoss(TOY)(counts, concentrations))


def test_vote_fraction_error_matches_numpy_and_skips_unasked_questions():
    rng = np.random.default_rng(0)
    concentrations = rng.uniform(1, 101, (6, 4))
    counts = rng.integers(0, 8, (6, 4)).astype(float)
    counts[:3, 2:] = 0
    counts[0, :2] = 0
    metric = VoteFractionError(TOY)
    metric.update(torch.tensor(concentrations[:2]), torch.tensor(counts[:2]))
    metric.update(torch.tensor(concentrations[2:]), torch.tensor(counts[2:]))
    expected = []
    for start, end in TOY.question_index_groups:
        alpha, votes = concentrations[:, start : end + 1], counts[:, start : end + 1]
        asked = votes.sum(1) > 0
        predicted = alpha[asked] / alpha[asked].sum(1, keepdims=True)
        observed = votes[asked] / votes[asked].sum(1, keepdims=True)
        expected.append(np.abs(predicted - observed).mean())
    np.testing.assert_allclose(metric.compute().numpy(), expected, rtol=1e-6)


def test_fit_logs_loss_per_question_and_campaign_and_vote_fraction_error():
    schema = get_schema("decals_all_campaigns")
    model = tiny_tree(schema)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, vote_batches(schema), vote_batches(schema, seed=1))
    logged = trainer.logged_metrics
    for stage in ("train", "validation"):
        assert torch.isfinite(logged[f"{stage}/vote_fraction_error"])
        for question in schema.questions:
            assert f"{stage}/loss/{question.name}" in logged
        campaigns = sum(logged[f"{stage}/campaign_loss/{c}"] for c in ("dr5", "dr8", "dr12"))
        objective = campaigns + model.fraction_weight * logged[f"{stage}/fraction_kl"]
        torch.testing.assert_close(
            objective, logged[f"{stage}/loss_epoch" if stage == "train" else f"{stage}/loss"]
        )
    assert f"validation/vote_fraction_error/{schema.questions[0].name}" in logged


def test_mc_dropout_passes_differ_only_when_dropout_is_on():
    model = tiny_tree(dropout=0.5).eval()
    images = torch.rand(3, 3, 32, 32)
    fixed = model.predict_samples(images, n_samples=4)
    assert fixed.shape == (3, len(TOY.label_cols), 4)
    assert torch.equal(fixed[..., 0], fixed[..., 3])
    model.n_samples, model.mc_dropout = 4, True
    sampled = model.predict_step((images, torch.empty(3, 0)), 0)
    assert sampled.shape == (3, len(TOY.label_cols), 4)
    assert not torch.equal(sampled[..., 0], sampled[..., 1])
    assert not model.head[0].training, "prediction leaves dropout as it found it"


def test_trainer_predict_returns_monte_carlo_samples():
    model = tiny_tree()
    model.n_samples, model.mc_dropout = 2, True
    batches = quiet_trainer().predict(model, vote_batches(TOY, n=8))
    assert batches[0].shape == (8, len(TOY.label_cols), 2)


def test_bf16_mixed_precision_on_cpu_runs_a_step():
    model = tiny_tree()
    before = model.head[1].weight.detach().clone()
    trainer = quiet_trainer(max_steps=1, precision="bf16-mixed", limit_val_batches=0)
    trainer.fit(model, vote_batches(TOY))
    assert torch.isfinite(trainer.logged_metrics["train/loss_step"])
    assert not torch.equal(before, model.head[1].weight)


def test_head_runs_in_float32_under_bf16_autocast():
    """Only the encoder runs in bf16: the concentrations are not rounded to bf16's 3 digits."""
    model = tiny_tree().eval()
    images = torch.rand(3, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        samples = model.predict_samples(images)
        features = model.encoder(images)
        rounded = model.head(features)
    assert features.dtype == torch.bfloat16 and samples.dtype == torch.float32
    float32_head = model.head(features.float())
    torch.testing.assert_close(samples[..., 0], float32_head, rtol=0, atol=0)
    assert not torch.equal(rounded.float(), float32_head)


def test_fit_on_cpu_uses_fused_adamw_and_the_cpu_speedups_until_it_ends():
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            reused = [c for c in trainer.callbacks if isinstance(c, FastCPUTraining)]
            seen.append(len(reused) == 1 and reused[0]._active is not None)

    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, callbacks=[Spy()])
    trainer.fit(tiny_tree(), vote_batches(TOY))
    assert seen == [True, True]
    assert all(c._active is None for c in trainer.callbacks if isinstance(c, FastCPUTraining))
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4):  # fused CPU kernel
        assert trainer.optimizers[0].defaults["fused"]


@pytest.mark.skipif(
    tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 4), reason="no fused CPU AdamW"
)
def test_mixed_precision_uses_fused_adamw_unless_gradients_are_clipped():
    """Lightning cannot clip the gradients of a fused optimizer under mixed precision."""
    for clip, fused in ((None, True), (1.0, False)):
        trainer = quiet_trainer(
            max_steps=1, precision="bf16-mixed", limit_val_batches=0, gradient_clip_val=clip
        )
        trainer.fit(tiny_tree(), vote_batches(TOY))
        assert bool(trainer.optimizers[0].defaults["fused"]) is fused


def test_save_pretrained_reloads_identical_outputs(tmp_path):
    model = tiny_tree(dropout=0.3, learning_rate=3e-4)
    quiet_trainer(max_steps=2, limit_val_batches=0).fit(model, vote_batches(TOY))
    save_pretrained(model.eval(), tmp_path / "tree")
    reloaded = from_pretrained(tmp_path / "tree").eval()
    assert type(reloaded) is ZoobotTree
    assert reloaded.schema == TOY
    assert reloaded.task_config() == model.task_config()
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(images), model(images), rtol=0, atol=0)


def test_schema_by_name_or_dict_and_architecture_by_name():
    model = ZoobotTree("decals_dr5", architecture="resnet10t", dropout=0.1)
    assert model.schema == get_schema("decals_dr5")
    assert ZoobotTree(TOY.to_dict(), encoder=model.encoder).schema == TOY
    assert model.head[1].out_features == 34
