"""PyTorch steps (zoobot.torch), each run in its own process without TensorFlow, as a user would.

- `pretrain`: a `ZoobotTree` trained on the survey's vote counts (`train`'s loss and defaults)
  (`zoobot.torch.train`), its encoder published to a local Hub-layout folder with a model card;
- `finetune`: binary classifiers for the rare feature from a few hundred labels, from the published
  encoder and from scratch with the same budget (class-balanced loss, the same learning-rate grid
  picked by validation loss, the same epochs and augmentation), over several seeds, scored on the
  held-out test galaxies;
- `predict`: vote fractions with MC-dropout uncertainty for the test galaxies and the Hubble Deep
  Field cutouts (`zoobot.torch.predictions`), written as full and friendly tables.
"""

from __future__ import annotations

import logging
import shutil
import warnings

import numpy as np
import pandas as pd
from common import (
    ENCODER,
    HUBBLE,
    SURVEY,
    TORCH_TREE,
    Run,
    Timer,
    balanced_class_weights,
    labels_file,
    say,
)

CLASS_NAMES = ("absent", "present")


def quiet() -> None:
    """Keep Lightning's banners and known harmless warnings out of the demo's output."""
    import torch

    # One compute thread, and one DataLoader worker decoding and augmenting: two cores busy.
    # More threads than free cores make PyTorch's OpenMP threads spin against each other (on a
    # shared 2-core machine training ran ten times slower with two threads).
    torch.set_num_threads(1)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*(LeafSpec|treespec|TreeSpec).*")
    warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")


TRAINER_OPTIONS = dict(
    accelerator="cpu",
    devices=1,
    enable_progress_bar=False,
    enable_model_summary=False,
    log_every_n_steps=5,
)


def survey_catalog(run: Run) -> pd.DataFrame:
    """The survey catalog with its `split` column and absolute image paths."""
    catalog = pd.read_parquet(run.path(SURVEY) / "catalog_with_splits.parquet")
    return catalog


def last_metrics(save_dir) -> dict:
    """The last logged value of every metric of a Lightning CSV log (epoch-level rows)."""
    files = sorted(save_dir.glob("logs/version_*/metrics.csv"))
    if not files:
        return {}
    table = pd.read_csv(files[-1])
    return {c: float(table[c].dropna().iloc[-1]) for c in table.columns if table[c].notna().any()}


def pretrain(run: Run) -> dict:
    """Train a ZoobotTree on the votes and publish its encoder in the timm Hub layout."""
    quiet()
    import torch

    from zoobot.shared import get_schema
    from zoobot.torch import save_pretrained, train

    s = run.settings
    torch.manual_seed(s.seed)
    schema = get_schema(s.schema)
    catalog = survey_catalog(run)
    save_dir = run.path(TORCH_TREE)
    shutil.rmtree(save_dir, ignore_errors=True)
    say(
        f"  pretraining timm {s.architecture} on {s.schema} votes ({len(schema.label_cols)} "
        f"answers, Dirichlet-multinomial likelihood + vote-fraction KL, quarter turns and flips): "
        f"{s.pretrain_epochs} epochs, {(catalog['split'] == 'train').sum()} training galaxies at "
        f"{s.image_size} px"
    )
    timer = Timer()
    model = train(
        catalog,
        schema,
        save_dir,
        architecture=s.architecture,
        epochs=s.pretrain_epochs,
        batch_size=s.pretrain_batch_size,
        image_size=s.image_size,
        num_workers=1,
        patience=s.pretrain_epochs,
        seed=s.seed,
        **TRAINER_OPTIONS,
    )
    seconds = timer()
    metrics = last_metrics(save_dir)
    best = float(model.trainer.checkpoint_callback.best_model_score)
    say(
        f"  pretrained in {seconds:.0f}s: best validation loss {best:.2f} (sum over questions), "
        f"validation vote-fraction error {metrics.get('validation/vote_fraction_error', np.nan):.3f}"
    )
    card = {
        "description": (
            f"A small Zoobot encoder ({s.architecture}) pretrained by the Zoobot demo on the votes "
            f"of a synthetic Galaxy Zoo survey ({s.schema} decision tree)."
        ),
        "training_data": (
            f"{(catalog['split'] == 'train').sum()} synthetic galaxies (zoobot.data.synthetic, "
            f"seed {s.seed}, {s.image_size} px) with simulated volunteer votes."
        ),
        "metrics": {"validation/loss": round(best, 4)},
        "license": "cc-by-4.0",
    }
    folder = save_pretrained(model.encoder, run.path(ENCODER), card=card)
    say(f"  published the encoder to {ENCODER}/ (config.json, model.safetensors, README.md)")
    return {
        "architecture": s.architecture,
        "epochs": s.pretrain_epochs,
        "seconds": seconds,
        "best_validation_loss": best,
        "final_metrics": metrics,
        "encoder_folder": str(folder),
        "tree_folder": str(save_dir / "best"),
        "parameters": int(sum(p.numel() for p in model.encoder.parameters())),
    }


def finetune_labels(run: Run, seed: int) -> dict[str, pd.DataFrame]:
    """The labelled train/validation galaxies drawn for `seed` and the held-out test galaxies."""
    table = pd.read_csv(run.path(labels_file(seed)), dtype={"id_str": str})
    return {split: table[table["split"] == split] for split in ("train", "validation", "test")}


def fit_classifier(run: Run, tables: dict, name: str, seed: int, lr: float, save_dir) -> float:
    """Train a classifier from `name` (a published encoder or a timm architecture) on the train
    labels with a class-balanced loss; return its best validation loss (also class-balanced)."""
    import pytorch_lightning as pl

    from zoobot.torch import FinetuneableZoobotClassifier, GalaxyDataModule, get_trainer

    s = run.settings
    pl.seed_everything(seed, workers=True)
    datamodule = GalaxyDataModule(
        {"train": tables["train"], "validation": tables["validation"]},
        label_cols=["label"],
        image_size=s.image_size,
        batch_size=s.finetune_batch_size,
        num_workers=1,
        seed=seed,
    )
    model = FinetuneableZoobotClassifier(
        num_classes=2,
        name=name,
        n_blocks=-1,
        lr_decay=1.0,
        learning_rate=lr,
        dropout=0.2,
        # The feature is rare: weight the classes so that missing it costs as much as a false alarm.
        class_weights=balanced_class_weights(tables["train"]["label"]),
    )
    shutil.rmtree(save_dir, ignore_errors=True)
    trainer = get_trainer(
        save_dir, epochs=s.finetune_epochs, patience=s.finetune_epochs, **TRAINER_OPTIONS
    )
    trainer.fit(model, datamodule)
    return float(trainer.checkpoint_callback.best_model_score)


def finetune(run: Run) -> dict:
    """Finetune the published encoder and train the same classifier from scratch, with the same
    learning-rate grid, for every seed; score the pick of each on the test galaxies."""
    quiet()
    from zoobot.shared import classifier_metrics
    from zoobot.torch.predictions import predict

    s = run.settings
    results: dict = {"framework": "torch", "runs": []}
    starts = {"pretrained": str(run.path(ENCODER)), "scratch": s.architecture}
    for seed in s.finetune_seeds:
        tables = finetune_labels(run, seed)
        for start, name in starts.items():
            timer = Timer()
            losses = {}
            for lr in s.finetune_learning_rates:
                save_dir = run.path(f"torch/finetune/{start}-seed{seed}/lr{lr:g}")
                losses[lr] = fit_classifier(run, tables, name, seed, lr, save_dir)
            lr = min(losses, key=losses.get)
            save_dir = run.path(f"torch/finetune/{start}-seed{seed}/lr{lr:g}")
            files = predict(
                tables["test"],
                save_dir / "best",
                save_dir / "test_predictions.parquet",
                label_cols=list(CLASS_NAMES),
                image_size=s.image_size,
                num_workers=0,
                progress=False,
                resume=False,
                overwrite=True,
            )
            predictions = pd.read_parquet(files.predictions)
            truth = tables["test"].set_index("id_str").loc[predictions["id_str"], "label"]
            metrics = classifier_metrics(truth.to_numpy(), predictions["present_probability"])
            train = tables["train"]["label"]
            record = {
                "start": start,
                "seed": seed,
                "learning_rate": lr,
                "validation_losses": {f"{k:g}": v for k, v in losses.items()},
                "train_positives": int(train.sum()),
                "train_negatives": int(len(train) - train.sum()),
                "seconds": timer(),
                **metrics,
            }
            results["runs"].append(record)
            say(
                f"  torch {start:>10} seed {seed}: lr {lr:g} (of {len(losses)}), test ROC AUC "
                f"{metrics['roc_auc']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f}, "
                f"predicted positive {metrics['predicted_positive_rate']:.0%} ({timer():.0f}s)"
            )
    return results


def predict_votes(run: Run) -> dict:
    """Vote fractions with MC-dropout uncertainty for the test galaxies and the Hubble cutouts."""
    quiet()
    from zoobot.torch.predictions import predict

    s = run.settings
    catalog = survey_catalog(run)
    test = catalog[catalog["split"] == "test"]
    model = run.path(TORCH_TREE) / "best"
    results = {}
    targets = {"test": test}
    hubble = run.path(HUBBLE) / "catalog.csv"
    if hubble.exists():
        targets["hubble"] = pd.read_csv(hubble, dtype={"id_str": str})
    for name, table in targets.items():
        timer = Timer()
        files = predict(
            table,
            model,
            run.path(f"torch/predictions/{name}.parquet"),
            n_samples=s.mc_samples,
            image_size=s.image_size,
            num_workers=0,
            progress=False,
            resume=False,
            overwrite=True,
            seed=s.seed,
        )
        results[name] = {
            "galaxies": files.n_predicted,
            "failed": files.n_failed,
            "predictions": str(files.predictions),
            "friendly": str(files.friendly),
            "seconds": timer(),
        }
        say(
            f"  torch predictions for {files.n_predicted} {name} galaxies, {s.mc_samples} MC-dropout "
            f"passes each: {files.friendly.name} ({timer():.1f}s)"
        )
    return results
