"""Train with a Lightning Trainer set up for what users need: `train` (on votes), `get_trainer`, and
`fit_catalog` (any Zoobot model on a catalog, what `train` and the command line use)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import timm.layers
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.plugins import LayerSync
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn

from zoobot.data.splits import Splits
from zoobot.models import fast_paths, training
from zoobot.models.backend import bind
from zoobot.models.layout import check_replaceable
from zoobot.models.preprocessing import Preprocessing, attach
from zoobot.models.tasks import label_rule, training_augmentation
from zoobot.torch.cpu import input_channels
from zoobot.torch.data.datamodule import Data, GalaxyDataModule
from zoobot.torch.data.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    augmentation_transform,
    eval_transform,
)
from zoobot.torch.module import ZoobotModule

BEST_FOLDER = "best"


class TensorBoardLogger(Logger):
    """Metrics and hyper-parameters as TensorBoard event files in `<save_dir>/<name>/version_<n>/`.

    Written with tensorboardX, which needs no TensorFlow. Lightning's own TensorBoardLogger writes
    through `torch.utils.tensorboard`, whose file layer imports TensorFlow whenever it is installed
    (seconds at the start of every training run and TensorFlow's start-up messages), so this
    small logger on Lightning's public `Logger` interface replaces it.
    """

    def __init__(self, save_dir: str | os.PathLike, name: str = "tensorboard"):
        super().__init__()
        self._root = Path(save_dir) / name
        self._name = name
        self._version: int | None = None
        self._writer = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        """The first `version_<n>` folder not taken when the logger first needed one."""
        if self._version is None:
            taken = [
                int(p.name.removeprefix("version_"))
                for p in self._root.glob("version_*")
                if p.name.removeprefix("version_").isdigit()
            ]
            self._version = max(taken, default=-1) + 1
        return self._version

    @property
    def save_dir(self) -> str:
        return str(self._root.parent)

    @property
    def log_dir(self) -> str:
        return str(self._root / f"version_{self.version}")

    @property
    @rank_zero_experiment
    def experiment(self):
        """The tensorboardX `SummaryWriter` (made on first use, by rank 0 only: two ranks making
        the same folder race; the others get Lightning's no-op experiment)."""
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.log_dir)
        return self._writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.experiment.add_scalar(key, float(value), step)

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        params = vars(params) if isinstance(params, argparse.Namespace) else dict(params or {})
        rows = "".join(f"| {key} | {value} |\n" for key, value in params.items())
        self.experiment.add_text("hyperparameters", "| name | value |\n|---|---|\n" + rows)

    @rank_zero_only
    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def load_checkpoint_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning checkpoint, read with `weights_only=True` (no code runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


class ExportBest(pl.Callback):
    """When fitting ends, write the best checkpoint's weights to `folder` in the Hub layout (rank 0).

    The module keeps the weights it had; without a checkpoint, its current weights are written.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        checkpoint = trainer.checkpoint_callback
        current = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        card = {}
        if checkpoint is not None and checkpoint.best_model_path:
            pl_module.load_state_dict(load_checkpoint_weights(checkpoint.best_model_path))
            card["metrics"] = {checkpoint.monitor: float(checkpoint.best_model_score)}
        try:
            pl_module.save_pretrained(self.folder, card=card)
        finally:
            pl_module.load_state_dict(current)


class TimmSyncBatchNorm(LayerSync):
    """Synchronise BatchNorm across processes, timm's fused BatchNormAct included, and undo it after.

    Lightning's own `sync_batchnorm=True` turns timm's `BatchNormAct2d` into a plain `SyncBatchNorm`
    that drops the activation; `timm.layers.convert_sync_batchnorm` keeps it. `revert` puts the
    original layers back with the trained weights and statistics.
    """

    def __init__(self):
        self.originals: dict[str, nn.Module] = {}

    def apply(self, model: nn.Module) -> nn.Module:
        self.originals = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
        }
        return timm.layers.convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        for name, original in self.originals.items():
            synced = model.get_submodule(name)
            state = synced.state_dict()
            original.to(next(iter(state.values())).device)
            original.load_state_dict(state)
            original.train(synced.training)
            model.set_submodule(name, original)
        self.originals = {}
        return model


def uses_gpu(accelerator: str) -> bool:
    """Whether a Trainer with this accelerator setting trains on CUDA GPUs."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """`mixed` becomes `16-mixed` on GPU and `bf16-mixed` on CPU; on a CPU without native bf16
    (or fp16: `zoobot.models.fast_paths.cpu_runs`) a bf16 (fp16) precision becomes `32-true`, faster
    than the emulated one. Other values pass through."""
    precision = str(precision)
    if uses_gpu(accelerator):
        return "16-mixed" if precision == "mixed" else precision
    if precision == "mixed":
        precision = "bf16-mixed"
    reduced = (
        "bf16" if precision.startswith("bf16") else "fp16" if precision.startswith("16") else None
    )
    if reduced and not fast_paths.cpu_runs(reduced):
        return "32-true"
    return precision


def get_trainer(
    save_dir: str | os.PathLike,
    epochs: int = 100,
    accelerator: str = "auto",
    devices: int | str = "auto",
    nodes: int = 1,
    precision: str = "32",
    strategy: str = "auto",
    patience: int = 8,
    monitor: str = "validation/loss",
    gradient_clip_val: float | None = 1.0,
    wandb: bool = False,
    export_best: bool = True,
    callbacks: list[pl.Callback] | None = None,
    **trainer_kwargs,
) -> pl.Trainer:
    """A Trainer that keeps the best checkpoint by `monitor`, stops early and logs to CSV/TensorBoard.

    In `save_dir`: `checkpoints/` (`best.ckpt`, `last.ckpt`), `best/` (the best weights in the Hub
    layout, written when fitting ends), `logs/` (CSV) and `tensorboard/`; W&B too with `wandb=True`
    (needs `wandb` installed). `precision` is `32`, `bf16-mixed`, `16-mixed` or `mixed` (bf16 on CPU,
    fp16 on GPU). Several devices or nodes train with DDP; on GPUs BatchNorm statistics are
    synchronised across all of them (torch's SyncBatchNorm needs CUDA; on CPU, DDP broadcasts rank
    0's statistics at each forward pass instead). Gradients are
    clipped to norm `gradient_clip_val`. `callbacks` are added to these; other keyword arguments go
    to `pl.Trainer`.
    """
    save_dir = Path(save_dir)
    loggers = [CSVLogger(save_dir, name="logs"), TensorBoardLogger(save_dir, name="tensorboard")]
    if wandb:
        if importlib.util.find_spec("wandb") is None:
            raise ImportError("wandb=True needs the wandb package: pip install wandb")
        loggers.append(WandbLogger(save_dir=save_dir))
    callbacks = [
        *(callbacks or []),
        ModelCheckpoint(
            str(save_dir / "checkpoints"),
            filename="best",
            monitor=monitor,
            mode="min",
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
        ),
        EarlyStopping(monitor, patience=patience, mode="min"),
        LearningRateMonitor(logging_interval="step"),
    ]
    if export_best:
        callbacks.append(ExportBest(save_dir / BEST_FOLDER))
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=nodes,
        precision=resolve_precision(precision, accelerator),
        strategy=strategy,
        plugins=[TimmSyncBatchNorm()] if uses_gpu(accelerator) else None,
        gradient_clip_val=gradient_clip_val,
        logger=loggers,
        callbacks=callbacks,
        **trainer_kwargs,
    )


def fit_catalog(
    build: Callable[[], ZoobotModule],
    data: Data | GalaxyDataModule,
    label_cols: Sequence[str],
    save_dir: str | os.PathLike,
    *,
    epochs: int = 100,
    batch_size: int = 128,
    image_size: int = 224,
    precision: str = "32",
    accelerator: str = "auto",
    devices: int | str = "auto",
    nodes: int = 1,
    strategy: str = "auto",
    num_workers: int = 4,
    patience: int = 8,
    seed: int = 42,
    progress: bool = True,
    splits: Splits = None,
    compile: bool | str = False,
    wandb: bool = False,
    augment: str | None = None,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    **trainer_kwargs,
) -> ZoobotModule:
    """Seed everything, build the model with `build()`, fit it on `data` and return it holding the
    best validation weights (also in `save_dir/best/`, Hub layout).

    `data` is a catalog, a Hugging Face dataset, a mapping/`DatasetDict` of splits (see
    `GalaxyDataModule`, which gets `label_cols`, `image_size`, `batch_size`, `num_workers`, `splits`
    and `seed`, the model's input channels and the training transform of `augment`,
    `zoobot.models.tasks.training_augmentation`), or a ready `GalaxyDataModule` (with its own
    transforms). Images are normalised as `(x - mean) / std`; the model records its `image_size`,
    channels and normalisation (`zoobot.models.preprocessing`) so `predict` shows it the same.
    Trainer settings and the `save_dir` layout are those of `get_trainer`, which gets
    the remaining keyword arguments.
    `compile=True` compiles the model with `torch.compile` (inductor); a string names another
    `torch.compile` backend. The labels are checked first, by the rule of the model's task
    (`zoobot.models.tasks.label_rule`: vote counts, class indices or targets), naming the column
    and rows; a step whose loss is not finite stops the fit (`NonFiniteLossError`).
    """
    check_replaceable(Path(save_dir) / BEST_FOLDER)  # ExportBest writes there: refuse now, not then
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"accelerator={accelerator!r}, but torch sees no CUDA GPU; use cpu or auto"
        )
    pl.seed_everything(seed, workers=True)
    model = build()
    rule = label_rule(model, label_cols)
    augment = training_augmentation(model, augment)
    channels = input_channels(model.encoder)
    if isinstance(data, GalaxyDataModule):
        datamodule = data
        datamodule.check_labels(rule)
        image_size = datamodule.image_size
    else:
        datamodule = GalaxyDataModule(
            data,
            label_cols,
            image_size=image_size,
            channels=channels,
            batch_size=batch_size,
            num_workers=num_workers,
            splits=splits,
            seed=seed,
            train_transform=augmentation_transform(augment, image_size, channels, mean, std),
            eval_transform=eval_transform(channels, mean, std),
            label_rule=rule,
        )
    attach(model, Preprocessing(image_size, channels, tuple(mean), tuple(std)))
    if compile:
        model.compile(**({} if compile is True else {"backend": compile}))
    try:
        trainer = get_trainer(
            save_dir,
            epochs=epochs,
            accelerator=accelerator,
            devices=devices,
            nodes=nodes,
            precision=precision,
            strategy=strategy,
            patience=patience,
            wandb=wandb,
            **{"enable_progress_bar": progress, **trainer_kwargs},
        )
    except MisconfigurationException as err:  # Lightning's word for bad trainer settings
        raise ValueError(f"cannot set up training: {err}") from err
    trainer.fit(model, datamodule)
    best = trainer.checkpoint_callback.best_model_path
    if best and trainer.is_global_zero:
        model.load_state_dict(load_checkpoint_weights(best))
    return model


train = bind(training.train, "zoobot.torch.backend")
