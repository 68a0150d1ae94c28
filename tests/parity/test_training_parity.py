"""Check 5: one optimiser step from identical weights, and a short finetune in each backend.

One step: a `zoobot.torch.ZoobotTree` (dropout 0, the last 2 encoder blocks trained with
`lr_decay=0.5`, the rest frozen; AdamW lr 1e-3, weight decay 0.05, no warmup) with randomised
weights is saved in the Hub layout; `zoobot.tf.pretrained.from_pretrained` rebuilds the same model (its
task config carries every optimiser setting). torch takes one step with `torch.optim.AdamW` over
`param_groups()` (what `configure_optimizers` builds, at the schedule's first factor, 1); TF takes
one step with `fit` on the same batch, with the optimizer its `compile()` builds. Compared after
the step (timm / torch names via `zoobot.tf.architectures.timm_state` and `zoobot.tf.pretrained.
head_state`): the trained weights (1e-4 absolute, issue 8; gradient elements at float32 noise
level, whose first Adam update is +-lr of random sign in either backend, are left out and counted),
the frozen ones (exactly unchanged in both), the BatchNorm running statistics of trained blocks (1e-4 relative to scale), and the loss
of the batch (1e-4 relative). Architectures: resnet18 (BatchNorm) and convnext_pico (LayerNorm).

Finetune: one randomised `test_convnext` encoder is saved once in the Hub layout by zoobot.torch;
each backend builds a `FinetuneableZoobotClassifier` from that folder (a linear probe, `n_blocks=0`,
dropout 0, AdamW lr 0.1, weight decay 0.05, cosine schedule, gradients clipped to norm 1, batch 16,
10 epochs, 32 px, its own data pipeline, no augmentations: the
random-crop zoom shifts the frozen features between training and validation and made the probe's
bias flip in one backend and not the other) and trains it with its package's trainer
(`zoobot.torch.get_trainer` / Keras `fit` after `compile(gradient_clip_val=1.0)`) to tell disks
from smooth galaxies (`true_kind`; artifacts left out) of the synthetic survey, on the same
train / validation rows (157 / 77). Comparable means validation cross-entropies within 0.1 of
each other (the steady measure), accuracies within three standard deviations of the difference of
two accuracies on 77 galaxies (about 0.19 at an accuracy of 0.8; `accuracy_gap_tolerance`), and
both accuracies above the majority-class rate (0.636) by `FINETUNE_MARGIN`.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from parity import compare, randomise_torch

SCHEMA = "decals_dr5"
IMAGE_SIZE = 64
BATCH = 4
STEP_TOLERANCE = 1e-4
# Gradient elements below this fraction of their tensor's largest are float32 noise (~1e-7 of it):
# Adam's first update, lr * g / (|g| + eps), turns them into +-lr of random sign in either backend.
NOISE = 1e-5
FINETUNE_ARCHITECTURE = "test_convnext"
FINETUNE_SIZE = 32
FINETUNE_BATCH = 16
FINETUNE_EPOCHS = 10
FINETUNE_OPTIMISER = {"learning_rate": 0.1, "weight_decay": 0.05, "cosine": True}
FINETUNE_LOSS_GAP = 0.1  # cross-entropy
# Above the majority-class rate: 2 of the 77 validation galaxies. One binomial standard deviation
# of an accuracy near 0.7 on 77 galaxies is 0.05, so a floor that high fails by chance.
FINETUNE_MARGIN = 0.025


def accuracy_gap_tolerance(accuracies: tuple[float, float], n: int) -> float:
    """Three standard deviations of the difference of two accuracies on the same `n` galaxies.

    The two frameworks shuffle their batches differently, so their short finetunes are two runs of
    the same recipe, not one computation: treated as independent binomial estimates of an accuracy
    p (their mean), the gap has standard deviation sqrt(2 p (1 - p) / n), 0.062 at p = 0.82 on 77
    galaxies; a gap beyond three of them (0.19 there) is not chance.
    """
    p = sum(accuracies) / 2
    return 3 * math.sqrt(2 * p * (1 - p) / n)


def _tf_modules():
    tf_hub = importlib.import_module("zoobot.tf.pretrained")
    importlib.import_module("zoobot.tf.tree")
    importlib.import_module("zoobot.tf.finetune")
    architectures = importlib.import_module("zoobot.tf.architectures")
    return tf_hub, architectures


def _stack(state: dict, names: list[str], mask: dict | None = None) -> np.ndarray:
    """The named tensors flattened into one float64 vector (only the `mask`ed elements)."""
    parts = [np.asarray(state[n], np.float64) for n in names]
    if mask is not None:
        parts = [p[mask[n]] for p, n in zip(parts, names, strict=True)]
    return np.concatenate([p.ravel() for p in parts]) if parts else np.zeros(0)


@pytest.mark.parametrize("architecture", ["resnet18", "convnext_pico"])
def test_one_optimiser_step_leaves_the_same_weights(recorder, rng, tmp_path, architecture):
    import torch

    import zoobot.torch
    from zoobot.torch.pretrained import save_pretrained

    tf_hub, architectures = _tf_modules()
    encoder = randomise_torch(zoobot.torch.load_encoder(architecture), seed=7)
    settings = {"learning_rate": 1e-3, "weight_decay": 0.05, "n_blocks": 2, "lr_decay": 0.5}
    model = zoobot.torch.ZoobotTree(
        SCHEMA, encoder=encoder, dropout=0.0, warmup_epochs=0.0, cosine=False, **settings
    )
    folder = save_pretrained(model, tmp_path / "start")
    tf_model = tf_hub.from_pretrained(folder)

    images = rng.uniform(0, 1, (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    counts = rng.integers(0, 40, (BATCH, len(model.schema.label_cols))).astype(np.float32)
    before = {f"encoder.{k}": v.numpy().copy() for k, v in encoder.state_dict().items()}
    before |= {f"head.{k}": v.numpy().copy() for k, v in model.head.state_dict().items()}

    model.train()
    optimizer = torch.optim.AdamW(
        model.param_groups(), lr=settings["learning_rate"], weight_decay=settings["weight_decay"]
    )
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    loss = model.task_loss(torch.from_numpy(counts), model(x))  # what `fit` minimises
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    after = {f"encoder.{k}": v.numpy() for k, v in encoder.state_dict().items()}
    after |= {f"head.{k}": v.numpy() for k, v in model.head.state_dict().items()}

    tf_model.compile()
    history = tf_model.fit(images, counts, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    tf_after = {f"encoder.{k}": v for k, v in architectures.timm_state(tf_model.encoder).items()}
    tf_after |= {f"head.{k}": v for k, v in tf_model.backend.head_state(tf_model.head).items()}

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    trained = sorted(n for n in after if n in trainable)
    frozen = sorted(
        n for n in after if n not in trainable and "running" not in n and "num_" not in n
    )
    frozen_params = [n for n in frozen if n in dict(model.named_parameters())]
    running = sorted(n for n in after if "running" in n and not np.array_equal(after[n], before[n]))
    mask = {n: np.abs(grads[n]) >= NOISE * np.abs(grads[n]).max() for n in trained}
    n_trained = sum(m.size for m in mask.values())
    n_masked = n_trained - sum(int(m.sum()) for m in mask.values())
    label = f"{architecture} one step"
    recorder.record(
        compare(f"{label}: loss of the batch", history.history["loss"][0], loss.item(),
                STEP_TOLERANCE, group="training", note="train mode, before the update"),
        compare(f"{label}: trained weights", _stack(tf_after, trained, mask),
                _stack(after, trained, mask), STEP_TOLERANCE, relative="abs", group="training",
                note=f"{len(trained)} tensors (head + 2 blocks at lr 1e-3, 5e-4, 1e-3 x 0.5^i); "
                     f"{n_masked} of {n_trained} elements left out: |grad| < {NOISE:.0e} x their "
                     "tensor's max, float32 noise that Adam's first step scales up to +-lr"),
        compare(f"{label}: frozen weights unchanged", _stack(tf_after, frozen_params),
                _stack(before, frozen_params), 0.0, relative="abs", group="training",
                note=f"{len(frozen_params)} tensors; torch's too: "
                     f"{np.array_equal(_stack(after, frozen_params), _stack(before, frozen_params))}"),
        compare(f"{label}: BatchNorm running statistics", _stack(tf_after, running),
                _stack(after, running), STEP_TOLERANCE, group="training",
                note=f"{len(running)} tensors updated by the train-mode forward pass"),
    )  # fmt: skip


def test_short_finetune_reaches_comparable_accuracy(recorder, survey, tmp_path):
    import keras
    import torch

    import zoobot.torch
    from zoobot.torch.data.datamodule import GalaxyDataModule
    from zoobot.torch.data.transforms import eval_transform
    from zoobot.torch.pretrained import save_pretrained

    _tf_modules()
    tf_data = importlib.import_module("zoobot.tf.data")
    tf_finetune = importlib.import_module("zoobot.tf.finetune")

    # One encoder folder, written once by zoobot.torch and read by both backends.
    torch.manual_seed(0)  # timm's random init of the kernels, whatever ran before
    encoder = randomise_torch(zoobot.torch.load_encoder(FINETUNE_ARCHITECTURE), seed=11)
    folder = save_pretrained(encoder, tmp_path / "encoder")
    catalog = survey.loc[survey["true_kind"] != "artifact", ["id_str", "file_loc", "split"]]
    catalog = catalog.assign(disk=(survey["true_kind"] == "disk").astype(np.int64))
    validation_labels = catalog.loc[catalog["split"] == "validation", "disk"]
    majority = float(max(validation_labels.mean(), 1 - validation_labels.mean()))
    options = {"num_classes": 2, "n_blocks": 0, "dropout": 0.0, **FINETUNE_OPTIMISER}

    # torch: Lightning with the package's trainer and data module.
    torch.manual_seed(0)
    torch_model = zoobot.torch.FinetuneableZoobotClassifier(name=folder, **options)
    datamodule = GalaxyDataModule(
        catalog, ["disk"], FINETUNE_SIZE, batch_size=FINETUNE_BATCH, num_workers=0,
        train_transform=eval_transform(3),
    )  # fmt: skip
    trainer = zoobot.torch.get_trainer(
        tmp_path / "torch-run", epochs=FINETUNE_EPOCHS, accelerator="cpu",
        patience=FINETUNE_EPOCHS, gradient_clip_val=1.0, export_best=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(torch_model, datamodule)
    torch_metrics = trainer.validate(torch_model, datamodule, verbose=False)[0]
    torch_accuracy = float(torch_metrics["validation/accuracy"])
    torch_loss = float(torch_metrics["validation/loss"])

    # TF: Keras fit on the package's tf.data pipelines, same rows and optimiser settings.
    keras.utils.set_random_seed(0)
    tf_model = tf_finetune.FinetuneableZoobotClassifier(name=folder, **options)
    train = tf_data.train_dataset(
        catalog, ["disk"], FINETUNE_SIZE, batch_size=FINETUNE_BATCH, augment=False, seed=0
    )
    validation = tf_data.eval_dataset(
        catalog, FINETUNE_SIZE, batch_size=FINETUNE_BATCH, label_cols=["disk"],
        split="validation", as_tuples=True,
    )  # fmt: skip
    tf_model.compile(gradient_clip_val=1.0)
    tf_model.fit(train, epochs=FINETUNE_EPOCHS, verbose=0)
    tf_metrics = tf_model.evaluate(validation, verbose=0, return_dict=True)
    tf_accuracy, tf_loss = float(tf_metrics["accuracy"]), float(tf_metrics["loss"])

    floor = majority + FINETUNE_MARGIN
    n_val = len(validation_labels)
    gap = accuracy_gap_tolerance((torch_accuracy, tf_accuracy), n_val)
    note = (
        f"validation accuracy torch {torch_accuracy:.3f}, tf {tf_accuracy:.3f} "
        f"(loss torch {torch_loss:.3f}, tf {tf_loss:.3f}); {n_val} galaxies, majority class "
        f"{majority:.3f}"
    )
    recorder.record(
        compare("finetune: validation accuracy", tf_accuracy, torch_accuracy, gap,
                relative="abs", group="training",
                note=note + f"; tolerance = 3 s.d. of the gap of two accuracies, {gap:.3f}"),
        compare("finetune: validation loss", tf_loss, torch_loss, FINETUNE_LOSS_GAP,
                relative="abs", group="training",
                note=f"cross-entropy; tolerance = max gap {FINETUNE_LOSS_GAP}"),
        compare(f"finetune: worse accuracy above majority + {FINETUNE_MARGIN}", 0.0,
                max(0.0, floor - min(torch_accuracy, tf_accuracy)), 0.0,
                relative="abs", group="training",
                note=f"shortfall of min(accuracies) below {floor:.3f} (majority class "
                     f"{majority:.3f} + {FINETUNE_MARGIN})"),
    )  # fmt: skip
