"""Check 3: every architecture offered in both frameworks, full size, through the Hub-layout folder.

torch -> TF: a timm encoder (`zoobot.torch.load_encoder`, 3 channels) with random weights, every
constant-initialised tensor (norm scales, biases, layer scales, zero-initialised last BatchNorms)
and every BatchNorm statistic randomised too (`parity.randomise_torch`; their defaults would hide
a swapped or transposed mapping), inside a `zoobot.torch.ZoobotTree`, saved with
`zoobot.torch.pretrained.save_pretrained`; TF loads the folder twice: `zoobot.tf.encoders.load_encoder`
(pooled features) and `zoobot.tf.pretrained.from_pretrained` (the tree's concentrations).

TF -> torch: a `zoobot.tf.FinetuneableZoobotClassifier` on a randomly initialised 1-channel Keras
encoder (randomised the same way, `parity.randomise_keras`), saved with `zoobot.tf.pretrained.
save_pretrained`; torch loads it with `zoobot.torch.pretrained.from_pretrained` (features and logits).

Inputs: 2 random images of 64 px. Tolerance (issue 8): 1e-4 relative to the scale of the
reference (max|a-b| / max|reference|). Which architectures: zoobot.tf's registry intersected with
timm's; the CI tier below by default (the whole session must fit CI's time limit on 2 cores),
`PARITY_ARCHITECTURES=all` for every one, or `PARITY_ARCHITECTURES=a,b` for a list. The report
names the architectures not run.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest
from parity import compare, randomise_keras, randomise_torch

IMAGE_SIZE = 64
BATCH = 2
TOLERANCE = 1e-4
SCHEMA = "decals_dr5"


# The CI tier: the Zoobot encoders' architectures (issue 7's list) and one architecture per other
# code path (TF-ported EfficientNet with SAME padding, ConvNeXt overlapping stem / head norm first,
# ResNet deep stems with average-pool downsampling, tiered stems, grouped convolutions) and timm's
# tiny test networks. Every other registered architecture runs with PARITY_ARCHITECTURES=all.
CI_ARCHITECTURES = (
    "efficientnet_b0",
    "tf_efficientnet_b0",
    "convnext_pico",
    "convnext_nano",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_atto_ols",
    "convnext_tiny_hnf",
    "resnet18",
    "resnet50",
    "resnet50d",
    "resnet10t",
    "resnext50_32x4d",
    "test_convnext",
    "test_efficientnet",
    "test_resnet",
)


def offered_architectures() -> tuple[list[str], list[str]]:
    """(checked, not checked here): zoobot.tf's registry intersected with timm's, split by tier.

    `PARITY_ARCHITECTURES` = `all`, or a comma-separated list; default the CI tier.
    """
    try:
        from zoobot.tf.architectures import supported_architectures
    except ImportError:
        return [], []
    import timm

    names = [a for a in supported_architectures() if timm.is_model(a)]
    wanted = os.environ.get("PARITY_ARCHITECTURES", "ci").strip()
    if wanted == "all":
        chosen = set(names)
    elif wanted == "ci":
        chosen = set(CI_ARCHITECTURES)
    else:
        chosen = {w.strip() for w in wanted.split(",")}
    return [a for a in names if a in chosen], [a for a in names if a not in chosen]


CHECKED, NOT_CHECKED = offered_architectures()
ARCHITECTURES = CHECKED
assert ARCHITECTURES, f"no architecture offered in both frameworks is selected ({NOT_CHECKED})"


def test_every_offered_architecture_is_accounted_for(recorder):
    """A report row naming the architectures offered in both frameworks but not run this session."""
    missing = sorted(set(CI_ARCHITECTURES) - set(CHECKED) - set(NOT_CHECKED))
    if NOT_CHECKED:
        recorder.note_outcome(
            "encoders",
            f"{len(NOT_CHECKED)} of {len(CHECKED) + len(NOT_CHECKED)} offered architectures "
            "not run",
            "not run",
            "outside the CI tier; PARITY_ARCHITECTURES=all runs them: " + ", ".join(NOT_CHECKED),
            recorder.current_test,
        )
    assert not missing or os.environ.get("PARITY_ARCHITECTURES"), (
        f"CI-tier architectures no longer offered by zoobot.tf: {missing}"
    )


def register_tf_tasks() -> None:
    """Import the TF task models so `zoobot.tf.pretrained.from_pretrained` can rebuild saved ones."""
    importlib.import_module("zoobot.tf.tree")
    importlib.import_module("zoobot.tf.finetune")


def _images(channels: int, seed: int) -> np.ndarray:
    """(B, H, W, C) float32 images, roughly what the evaluation transform gives."""
    return np.random.default_rng(seed).uniform(0, 1, (BATCH, IMAGE_SIZE, IMAGE_SIZE, channels))


def _nchw(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32))


def _nhwc(images: np.ndarray):
    import tensorflow as tf

    return tf.constant(images, tf.float32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_torch_saved_model_loads_in_tf(recorder, tmp_path, architecture):
    import torch

    import zoobot.torch
    from zoobot.torch.pretrained import save_pretrained

    tf_encoders = importlib.import_module("zoobot.tf.encoders")
    tf_hub = importlib.import_module("zoobot.tf.pretrained")
    register_tf_tasks()

    torch.manual_seed(0)
    encoder = randomise_torch(zoobot.torch.load_encoder(architecture, channels=3), seed=1)
    model = zoobot.torch.ZoobotTree(SCHEMA, encoder=encoder, dropout=0.0).eval()
    folder = save_pretrained(model, tmp_path / "torch-saved")
    images = _images(3, seed=2)
    with torch.no_grad():
        features = encoder(_nchw(images)).numpy()
        concentrations = model(_nchw(images)).numpy()

    tf_encoder = tf_encoders.load_encoder(folder)
    tf_features = np.asarray(tf_encoder(_nhwc(images), training=False))
    tf_model = tf_hub.from_pretrained(folder)
    tf_concentrations = np.asarray(tf_model(_nhwc(images), training=False))
    label = f"{architecture} torch->tf"
    recorder.record(
        compare(f"{label} features", tf_features, features, TOLERANCE, group="encoders",
                note=f"pooled features, {BATCH}x{IMAGE_SIZE}px 3ch, load_encoder(folder)"),
        compare(f"{label} tree concentrations", tf_concentrations, concentrations, TOLERANCE,
                group="encoders", note=f"ZoobotTree({SCHEMA}) head, from_pretrained(folder)"),
    )  # fmt: skip


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_tf_saved_model_loads_in_torch(recorder, tmp_path, architecture):
    import tensorflow as tf
    import torch

    from zoobot.torch.pretrained import from_pretrained

    tf_finetune = importlib.import_module("zoobot.tf.finetune")
    tf_hub = importlib.import_module("zoobot.tf.pretrained")

    tf.keras.utils.set_random_seed(3)
    model = tf_finetune.FinetuneableZoobotClassifier(
        num_classes=5, name=architecture, channels=1, dropout=0.0
    )
    randomise_keras(model.encoder, seed=4)
    randomise_keras(model.head, seed=5)
    folder = tf_hub.save_pretrained(model, tmp_path / "tf-saved")
    images = _images(1, seed=6)
    tf_features = np.asarray(model.encoder(_nhwc(images), training=False))
    tf_logits = np.asarray(model(_nhwc(images), training=False))

    torch_model = from_pretrained(folder).eval()
    with torch.no_grad():
        features = torch_model.encoder(_nchw(images)).numpy()
        logits = torch_model(_nchw(images)).numpy()
    label = f"{architecture} tf->torch"
    recorder.record(
        compare(f"{label} features", features, tf_features, TOLERANCE, group="encoders",
                note=f"pooled features, {BATCH}x{IMAGE_SIZE}px 1ch, reference = TF"),
        compare(f"{label} classifier logits", logits, tf_logits, TOLERANCE, group="encoders",
                note="FinetuneableZoobotClassifier(5) head, from_pretrained(folder)"),
    )  # fmt: skip


def test_classifier_class_names_survive_either_direction(tmp_path):
    """A classifier saved with class names (as `finetune --task classifier` does) loads in the
    other framework with them, and names its prediction columns by them."""
    from zoobot.torch import FinetuneableZoobotClassifier
    from zoobot.torch.pretrained import from_pretrained, save_pretrained

    tf_finetune = importlib.import_module("zoobot.tf.finetune")
    tf_hub = importlib.import_module("zoobot.tf.pretrained")
    register_tf_tasks()
    names = ["ring", "no ring"]

    saved = save_pretrained(
        FinetuneableZoobotClassifier(2, name="test_resnet", class_names=names), tmp_path / "torch"
    )
    assert list(tf_hub.from_pretrained(saved).class_names) == names
    tf_model = tf_finetune.FinetuneableZoobotClassifier(2, name="test_resnet", class_names=names)
    saved = tf_hub.save_pretrained(tf_model, tmp_path / "tf")
    assert from_pretrained(saved).class_names == names
