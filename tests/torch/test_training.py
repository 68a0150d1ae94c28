"""Training on votes end to end, the Trainer setup, mixed precision, torch.compile and DDP on CPU.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import importlib.util
import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import timm
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from tensorboardX.proto.event_pb2 import Event
from timm.layers import BatchNormAct2d, SyncBatchNormAct

from zoobot.data.shards.tfrecord import read_records
from zoobot.data.synthetic import make_survey
from zoobot.models import fast_paths
from zoobot.shared import get_schema
from zoobot.torch import (
    FinetuneableZoobotClassifier,
    GalaxyDataModule,
    ZoobotTree,
    from_pretrained,
    get_trainer,
    train,
)
from zoobot.torch.training import TensorBoardLogger, TimmSyncBatchNorm, resolve_precision
from zoobot.torch.tree import VoteFractionError

SCHEMA = get_schema("decals_dr5")
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> pd.DataFrame:
    """500 synthetic DECaLS DR5 galaxies of 32 px with simulated volunteer votes."""
    out = tmp_path_factory.mktemp("survey")
    return make_survey(500, out, schema=SCHEMA, image_size=32, seed=3, workers=1, progress=False)


def constant_mean_error(model: ZoobotTree, datamodule: GalaxyDataModule) -> tuple[float, float]:
    """Validation vote-fraction error of the model and of the training set's mean fractions."""
    counts = datamodule.splits["train"].labels
    mean = torch.zeros(len(SCHEMA.label_cols))
    for start, end in SCHEMA.question_index_groups:
        asked = counts[:, start : end + 1][counts[:, start : end + 1].sum(1) > 0]
        mean[start : end + 1] = (asked / asked.sum(1, keepdim=True)).mean(0)
    errors = VoteFractionError(SCHEMA), VoteFractionError(SCHEMA)
    with torch.no_grad():
        for images, votes in datamodule.val_dataloader():
            errors[0].update(model(images), votes)
            errors[1].update(mean.expand(len(votes), -1), votes)
    return tuple(float(e.compute().nanmean()) for e in errors)


def test_pretrain_on_votes_export_reload_and_finetune(survey, tmp_path):
    model = train(
        survey,
        SCHEMA,
        tmp_path / "pretrain",
        architecture="resnet10t",
        epochs=6,
        batch_size=32,
        image_size=32,
        accelerator="cpu",
        num_workers=0,
        model_kwargs={"learning_rate": 1e-3},
        **QUIET,
    ).eval()
    logs = pd.read_csv(tmp_path / "pretrain/logs/version_0/metrics.csv")
    train_loss = logs.groupby("epoch")["train/loss_epoch"].mean()
    assert train_loss.iloc[-1] < 0.75 * train_loss.iloc[0]
    model_error, baseline_error = constant_mean_error(model, model.trainer.datamodule)
    assert model_error < 0.95 * baseline_error

    best = tmp_path / "pretrain/best"
    assert {"config.json", "model.safetensors", "head.safetensors", "README.md"} <= {
        p.name for p in best.iterdir()
    }
    config = json.loads((best / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["zoobot"]["task"] == "tree"
    reloaded = from_pretrained(best).eval()
    images = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(reloaded(images), model(images), rtol=0, atol=0)

    fractions = survey["smooth-or-featured-dr5_smooth"] / survey.filter(
        like="smooth-or-featured-dr5_"
    ).sum(axis=1)
    labelled = survey.assign(smooth=(fractions > fractions.median()).astype(int))
    datamodule = GalaxyDataModule(
        labelled,
        ["smooth"],
        image_size=32,
        batch_size=32,
        num_workers=0,
        splits={"train": 0.6, "validation": 0.2, "test": 0.2},
    )
    classifier = FinetuneableZoobotClassifier(2, name=best, n_blocks=0, learning_rate=1e-3)
    trainer = get_trainer(tmp_path / "finetune", epochs=5, accelerator="cpu", **QUIET)
    trainer.fit(classifier, datamodule)
    (result,) = trainer.test(classifier, datamodule, ckpt_path="best", verbose=False)
    assert result["test/accuracy"] > 0.75, "well above chance (0.5) on held-out galaxies"
    assert (tmp_path / "finetune/best/head.safetensors").is_file()


def test_get_trainer_checkpoints_stops_early_and_logs(tmp_path):
    trainer = get_trainer(tmp_path, epochs=3, patience=2, accelerator="cpu")
    checkpoint = trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor == "validation/loss"
    assert checkpoint.dirpath == str(tmp_path / "checkpoints")
    stopping = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
    assert stopping.patience == 2
    assert {type(lg) for lg in trainer.loggers} == {CSVLogger, TensorBoardLogger}
    assert trainer.gradient_clip_val == 1.0 and trainer.max_epochs == 3


def test_tensorboard_logger_writes_scalars_and_hyperparameters(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tensorboard")
    logger.log_hyperparams({"learning_rate": 0.001})
    logger.log_metrics({"train/loss": torch.tensor(1.5)}, step=3)
    logger.finalize("success")
    assert logger.log_dir == str(tmp_path / "tensorboard" / "version_0")
    assert TensorBoardLogger(tmp_path).version == 1, "a second run gets a new folder"
    (events,) = (tmp_path / "tensorboard" / "version_0").glob("events.out.tfevents.*")
    values = [Event.FromString(record).summary.value for record in read_records(events)]
    scalars = {
        (v.tag, v.simple_value) for value in values for v in value if v.HasField("simple_value")
    }
    assert ("train/loss", 1.5) in scalars
    texts = [
        v.tensor.string_val[0].decode() for value in values for v in value if v.tensor.string_val
    ]
    assert any("| learning_rate | 0.001 |" in text for text in texts)


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_and_batchnorm_sync_follow_the_accelerator(tmp_path, monkeypatch, native):
    """On a CPU without native bf16 (fp16) a bf16 (fp16) precision trains in float32."""
    monkeypatch.setattr(fast_paths, "native", lambda kind: (native, "test"))
    cpu_bf16 = "bf16-mixed" if native else "32-true"
    assert resolve_precision("mixed", "cpu") == cpu_bf16
    assert resolve_precision("bf16-mixed", "cpu") == cpu_bf16
    assert resolve_precision("16-mixed", "cpu") == ("16-mixed" if native else "32-true")
    assert resolve_precision("mixed", "gpu") == "16-mixed"
    assert resolve_precision("32", "gpu") == "32"
    trainer = get_trainer(tmp_path, accelerator="cpu", devices=2, strategy="ddp")
    assert trainer.strategy._layer_sync is None


def test_wandb_without_its_package_fails_before_training(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install wandb"):
        get_trainer(tmp_path, wandb=True)


@pytest.mark.parametrize(
    ("options", "precision"),
    [({"precision": "mixed"}, "bf16-mixed"), ({"compile": "aot_eager"}, "32-true")],
    ids=["bf16-mixed", "compiled"],
)
def test_bf16_mixed_and_compiled_training_run(survey, tmp_path, monkeypatch, options, precision):
    """bf16 as on a CPU with native bf16 (elsewhere emulated, slower, but the same code path)."""
    monkeypatch.setattr(fast_paths, "native", lambda kind: (True, "the test asks for bf16"))
    model = train(
        survey.iloc[:40],
        SCHEMA,
        tmp_path,
        architecture="test_resnet",
        epochs=1,
        batch_size=8,
        image_size=32,
        accelerator="cpu",
        num_workers=0,
        limit_train_batches=2,
        limit_val_batches=1,
        **options,
        **QUIET,
    )
    assert model.trainer.precision == precision
    assert torch.isfinite(model.trainer.logged_metrics["train/loss_epoch"])
    assert (tmp_path / "best/model.safetensors").is_file()


def test_timm_sync_batchnorm_keeps_fused_activations_and_reverts():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=0).eval()
    images = torch.rand(2, 3, 32, 32)
    expected = model(images)
    sync = TimmSyncBatchNorm()
    synced = sync.apply(model)
    assert isinstance(synced.bn1, SyncBatchNormAct)
    torch.testing.assert_close(synced(images), expected)
    reverted = sync.revert(synced)
    assert type(reverted.bn1) is BatchNormAct2d and not reverted.bn1.training
    torch.testing.assert_close(reverted(images), expected)


DDP_SCRIPT = """
import sys

import pandas as pd
import pytorch_lightning as pl
import torch

from zoobot.torch import train


class SaveRankState(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "backend": torch.distributed.get_backend(),
                "world_size": trainer.world_size,
                "norms": sorted({type(m).__name__ for m in pl_module.modules() if "Norm" in type(m).__name__}),
            },
            f"{sys.argv[2]}/rank{trainer.global_rank}.pt",
        )


if __name__ == "__main__":
    torch.set_num_threads(1)  # two ranks on two cores: more threads only contend
    train(
        pd.read_parquet(sys.argv[1]),
        "decals_dr5",
        sys.argv[2],
        architecture="test_resnet",
        epochs=2,
        batch_size=8,
        image_size=32,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        num_workers=0,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[SaveRankState()],
        enable_progress_bar=False,
    )
"""


def test_ddp_on_cpu_two_processes_stay_in_sync(survey, tmp_path):
    catalog = tmp_path / "catalog.parquet"
    survey.iloc[:64].to_parquet(catalog)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    run = subprocess.run(
        [sys.executable, str(script), str(catalog), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"run/rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert {r["backend"] for r in ranks} == {"gloo"}
    assert ranks[0]["norms"] == ["BatchNorm2d"], (
        "SyncBatchNorm needs CUDA: CPU DDP broadcasts stats"
    )
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert isinstance(from_pretrained(tmp_path / "run/best"), ZoobotTree)
