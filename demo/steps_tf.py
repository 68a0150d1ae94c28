"""TensorFlow steps (zoobot.tf), run in their own process without PyTorch, as a user would; with
Keras on TensorFlow, or on JAX (`run_demo.py --backend jax`, TensorFlow then only reads the data).

- `finetune`: the same binary classifiers as the torch step (from the published encoder, which
  was trained and saved by zoobot.torch, and from scratch), trained with Keras `fit` on `tf.data`
  pipelines for the first seed's labels at one learning rate, scored on the same held-out test
  galaxies: zoobot.tf finetunes a torch-trained encoder (the few-label comparison over seeds and
  a learning-rate grid is the torch step's);
- `predict`: the torch-trained tree model reloaded in TensorFlow (`zoobot.tf.predictions` reads the
  same folder) predicting vote fractions with MC dropout for the test galaxies;
- `pretrain` (the science preset's): the same tree model trained by zoobot.tf on the same votes and
  splits with `train`'s defaults, then its MC-dropout predictions for the test galaxies.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd
from common import (
    ENCODER,
    SURVEY,
    TF_TREE,
    TORCH_TREE,
    Run,
    Timer,
    balanced_class_weights,
    labels_file,
    say,
)

CLASS_NAMES = ("absent", "present")


def quiet() -> None:
    """TensorFlow's C++ logs and Python warnings off; one compute thread."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    import tensorflow as tf

    # One thread for the model's ops (tf.data decodes on its own threads): on a shared 2-core
    # machine more threads than free cores slow training down.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def finetune(run: Run) -> dict:
    """Finetune the published encoder and train the same classifier from scratch, in Keras, on
    the first seed's labels at `finetune_learning_rate`."""
    quiet()
    import keras

    from zoobot.shared import classifier_metrics
    from zoobot.tf import runtime
    from zoobot.tf.data import eval_dataset, train_dataset
    from zoobot.tf.finetune import FinetuneableZoobotClassifier
    from zoobot.tf.predictions import predict
    from zoobot.tf.training import fit

    s = run.settings
    seed, lr = s.finetune_seeds[0], s.finetune_learning_rate
    table = pd.read_csv(run.path(labels_file(seed)), dtype={"id_str": str})
    test = table[table["split"] == "test"]
    train_labels = table[table["split"] == "train"]["label"]
    results: dict = {"framework": runtime.name(), "runs": []}
    starts = {"pretrained": str(run.path(ENCODER)), "scratch": s.architecture}
    for start, name in starts.items():
        timer = Timer()
        keras.utils.set_random_seed(seed)
        train = train_dataset(
            table,
            ["label"],
            image_size=s.image_size,
            batch_size=s.finetune_batch_size,
            seed=seed,
            split="train",
        )
        validation = eval_dataset(
            table,
            image_size=s.image_size,
            batch_size=128,
            label_cols=["label"],
            split="validation",
            as_tuples=True,
        )
        model = FinetuneableZoobotClassifier(
            num_classes=2,
            name=name,
            n_blocks=-1,
            lr_decay=1.0,
            learning_rate=lr,
            dropout=0.2,
            # The feature is rare: weight the classes so that missing it costs as much as a false alarm.
            class_weights=balanced_class_weights(train_labels),
        )
        save_dir = run.path(f"tf/finetune/{start}-seed{seed}")
        shutil.rmtree(save_dir, ignore_errors=True)
        fit(
            model,
            train,
            validation,
            save_dir=save_dir,
            epochs=s.finetune_epochs,
            patience=s.finetune_epochs,
            tensorboard=False,
            verbose=0,
        )
        files = predict(
            test,
            save_dir / "best",
            save_dir / "test_predictions.parquet",
            label_cols=list(CLASS_NAMES),
            image_size=s.image_size,
            progress=False,
            resume=False,
            overwrite=True,
        )
        predictions = pd.read_parquet(files.predictions)
        truth = test.set_index("id_str").loc[predictions["id_str"], "label"]
        metrics = classifier_metrics(truth.to_numpy(), predictions["present_probability"])
        record = {
            "start": start,
            "seed": seed,
            "learning_rate": lr,
            "train_positives": int(train_labels.sum()),
            "train_negatives": int(len(train_labels) - train_labels.sum()),
            "seconds": timer(),
            **metrics,
        }
        results["runs"].append(record)
        say(
            f"  TF    {start:>10} seed {seed}: lr {lr:g}, test ROC AUC {metrics['roc_auc']:.3f}, "
            f"balanced accuracy {metrics['balanced_accuracy']:.3f}, predicted positive "
            f"{metrics['predicted_positive_rate']:.0%} ({timer():.0f}s)"
        )
    return results


def predict_test(run: Run, model, save_loc) -> dict:
    """MC-dropout vote fractions of the survey's test galaxies from the tree model folder `model`."""
    from zoobot.tf.predictions import predict

    s = run.settings
    catalog = pd.read_parquet(run.path(SURVEY) / "catalog_with_splits.parquet")
    timer = Timer()
    files = predict(
        catalog[catalog["split"] == "test"],
        model,
        save_loc,
        n_samples=s.mc_samples,
        image_size=s.image_size,
        progress=False,
        resume=False,
        overwrite=True,
        seed=s.seed,
    )
    return {
        "galaxies": files.n_predicted,
        "failed": files.n_failed,
        "predictions": str(files.predictions),
        "friendly": str(files.friendly),
        "seconds": timer(),
    }


def predict_votes(run: Run) -> dict:
    """The torch-trained tree model, reloaded in TensorFlow, predicting the test galaxies."""
    quiet()
    test = predict_test(run, run.path(TORCH_TREE) / "best", run.path("tf/predictions/test.parquet"))
    say(
        f"  TF predictions (torch-trained model loaded in Keras) for {test['galaxies']} test "
        f"galaxies, {run.settings.mc_samples} MC-dropout passes: "
        f"{Path(test['friendly']).name} ({test['seconds']:.1f}s)"
    )
    return {"test": test}


def pretrain(run: Run) -> dict:
    """Train the tree model on the votes with zoobot.tf (the torch step's settings and splits) and
    predict the test galaxies with MC dropout."""
    quiet()
    import keras

    from zoobot.tf import runtime, train

    s = run.settings
    keras.utils.set_random_seed(s.seed)
    catalog = pd.read_parquet(run.path(SURVEY) / "catalog_with_splits.parquet")
    save_dir = run.path(TF_TREE)
    shutil.rmtree(save_dir, ignore_errors=True)
    say(
        f"  pretraining {s.architecture} on the votes with zoobot.tf (Keras on {runtime.name()}): "
        f"{s.pretrain_epochs} epochs, {(catalog['split'] == 'train').sum()} training galaxies at "
        f"{s.image_size} px"
    )
    timer = Timer()
    train(
        catalog,
        s.schema,
        save_dir,
        architecture=s.architecture,
        epochs=s.pretrain_epochs,
        batch_size=s.pretrain_batch_size,
        image_size=s.image_size,
        patience=s.pretrain_epochs,
        seed=s.seed,
        progress=False,
        verbose=0,
    )
    seconds = timer()
    say(f"  pretrained in {seconds:.0f}s; predicting the test galaxies")
    test = predict_test(run, save_dir / "best", save_dir / "predictions" / "test.parquet")
    return {
        "framework": runtime.name(),
        "architecture": s.architecture,
        "epochs": s.pretrain_epochs,
        "seconds": seconds,
        "tree_folder": str(save_dir / "best"),
        "test": test,
    }
