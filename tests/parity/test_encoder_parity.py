"""Check 3: every architecture offered in both frameworks, full size, through the Hub-layout folder.

torch -> TF: a timm encoder (`zoobot.torch.load_encoder`, 3 channels) with random weights, every
constant-initialised tensor (norm scales, biases, layer scales, zero-initialised last BatchNorms)
randomised too (`parity.randomise_torch`; their defaults would hide a swapped or transposed
mapping) and the BatchNorm statistics set from the test images (`parity.calibrate_batchnorm_torch`:
random ones blow a deep network's activations up), inside a `zoobot.torch.ZoobotTree`, saved with
`zoobot.torch.save_pretrained`; TF loads the folder twice: `zoobot.tf.encoders.load_encoder`
(pooled features) and `zoobot.tf.from_pretrained` (the tree's concentrations).

TF -> torch: a `zoobot.tf.FinetuneableZoobotClassifier` on a randomly initialised 1-channel Keras
encoder (randomised and calibrated the same way), saved with `zoobot.tf.save_pretrained`; torch
loads it with `zoobot.torch.from_pretrained` (features and logits).

By name: each published Zoobot encoder (`zoobot.models.catalogue`), full size, randomised and
calibrated the same way, laid out in an offline Hugging Face cache as its Hub repo holds it; both
frameworks' `load_encoder(name)` against timm's own Hub loader.

Inputs: 2 random images of 64 px (224 px for the deep EfficientNetV2s, see `LARGER_DEFAULT`), or of
the model's own size for fixed-size models (MaxViT); the published Zoobot encoders' architectures
(`PUBLISHED`, from the catalogue) at the Hub input size, 224 px, and EfficientNetV2-S also at its
timm `test_input_size`. Tolerance (issue 8): 1e-4 relative to the scale of the reference
(max|a-b| / max|reference|). Which cases: the CI tier below by default (the whole session must fit
CI's time limit on 2 cores), `PARITY_ARCHITECTURES=all` for every architecture in zoobot.tf's
registry and timm's plus every published one at its Hub sizes and by name, `published` for those
only, or `PARITY_ARCHITECTURES=a,b` for a list (a published architecture at its Hub sizes; a
published encoder's name or architecture by name). The report names the architectures not run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from parity import (
    calibrate_batchnorm_keras,
    calibrate_batchnorm_torch,
    compare,
    compare_equal,
    randomise_keras,
    randomise_torch,
)

from zoobot.models.catalogue import published_encoders

# tests/contract's stand-ins of the published repos (their config.json as published)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))

import published  # noqa: E402

IMAGE_SIZE = 64
BATCH = 2
TOLERANCE = 1e-4
SCHEMA = "decals_dr5"


class Case(NamedTuple):
    """One parity case: a timm architecture, its model arguments, the image size to compare at."""

    architecture: str
    model_args: dict
    size: int

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.model_args.items())
        return f"{self.architecture}{f'[{args}]' if args else ''}-{self.size}px"


# timm's test_input_size of the published EfficientNetV2-S, checked beside its Hub input size.
TEST_SIZES = {"tf_efficientnetv2_s": (384,)}


def _published() -> dict[str, tuple[dict, tuple[int, ...]]]:
    """The published Zoobot encoders' architectures (`zoobot.models.catalogue`) -> (model_args,
    image sizes): the Hub input size (224 px), and timm's test_input_size for EfficientNetV2-S.
    Each is full size, randomly initialised."""
    table: dict[str, tuple[dict, tuple[int, ...]]] = {}
    for entry in published_encoders():
        sizes = (entry.input_size, *TEST_SIZES.get(entry.architecture, ()))
        row = table.setdefault(entry.architecture, (dict(entry.model_args), sizes))
        assert row == (entry.model_args, sizes), f"{entry.architecture}: two published variants"
    return table


PUBLISHED = _published()

# The CI tier: one architecture per code path at 64 px (TF-ported EfficientNet with SAME padding,
# ConvNeXt overlapping stem / head norm first, ResNet deep stems with average-pool downsampling,
# tiered stems, grouped convolutions, timm's tiny test networks), the Zoobot encoders' ConvNeXt,
# ResNet and EfficientNet architectures at 64 px, and of the published MaxViT / EfficientNetV2
# encoders MaxViT-Tiny (RelPosMlp) and EfficientNetV2-S at 224 px. MaxViT-Small/-Base, the TF
# MaxViT-Large and EfficientNetV2-S at 384 px take 20-70 s a direction on 2 cores: they run with
# `published` or `all`.
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
CI_PUBLISHED = {"maxvit_rmlp_tiny_rw_256": (224,), "tf_efficientnetv2_s": (224,)}


# EfficientNetV2 at 64 px ends in 2x2 maps after 15-40 blocks: BatchNorm statistics of 8 values per
# channel make the random network so ill-conditioned that timm's own float32 features differ from
# float64 by 2e-4 (efficientnetv2_s) to 2e-3 (efficientnetv2_rw_t); at 224 px by 8e-6.
LARGER_DEFAULT = {"efficientnetv2_": 224, "tf_efficientnetv2_": 224}


def _default_case(architecture: str) -> Case:
    """The architecture as its name builds it: 64 px (224 px for EfficientNetV2), or its own size
    if that is fixed."""
    from zoobot.tf.architectures import fixed_input_size, maxvit

    if fixed_input_size(architecture):  # MaxViT: square, the size in its name
        return Case(architecture, {}, int(maxvit.ARCHITECTURES[architecture]["img_size"]))
    sizes = [size for prefix, size in LARGER_DEFAULT.items() if architecture.startswith(prefix)]
    return Case(architecture, {}, sizes[0] if sizes else IMAGE_SIZE)


def _published_cases(architecture: str, ci: bool = False) -> list[Case]:
    model_args, sizes = PUBLISHED[architecture]
    if ci:
        sizes = CI_PUBLISHED[architecture]
    return [Case(architecture, model_args, size) for size in sizes]


def offered_cases() -> tuple[list[Case], list[str]]:
    """(cases checked, architectures not checked here), from zoobot.tf's registry and timm's.

    `PARITY_ARCHITECTURES` = `all`, `published`, or a comma-separated list; default the CI tier.
    """
    try:
        from zoobot.tf.architectures import supported_architectures
    except ImportError:
        return [], []
    import timm

    names = [a for a in supported_architectures() if timm.is_model(a)]
    wanted = os.environ.get("PARITY_ARCHITECTURES", "ci").strip()
    if wanted == "all":
        defaults, published = set(names), set(PUBLISHED)
    elif wanted == "published":
        defaults, published = set(), set(PUBLISHED)
    elif wanted == "ci":
        defaults, published = set(CI_ARCHITECTURES), set(CI_PUBLISHED)
    else:
        chosen = {w.strip() for w in wanted.split(",")}
        defaults, published = chosen - set(PUBLISHED), chosen & set(PUBLISHED)
    cases = [_default_case(a) for a in names if a in defaults]
    ci = wanted == "ci"
    cases += [case for a in names if a in published for case in _published_cases(a, ci)]
    cases = list({case.id: case for case in cases}.values())  # a published size may be the default
    checked = {case.architecture for case in cases}
    return cases, [a for a in names if a not in checked]


CASES, NOT_CHECKED = offered_cases()
assert CASES, f"no architecture offered in both frameworks is selected ({NOT_CHECKED})"


def test_every_offered_architecture_is_accounted_for(recorder):
    """A report row naming the architectures offered in both frameworks but not run this session."""
    offered = {case.architecture for case in CASES} | set(NOT_CHECKED)
    missing = sorted((set(CI_ARCHITECTURES) | set(PUBLISHED)) - offered)
    if NOT_CHECKED:
        recorder.note_outcome(
            "encoders",
            f"{len(NOT_CHECKED)} of {len(offered)} offered architectures not run",
            "not run",
            "outside the selected tier; PARITY_ARCHITECTURES=all runs them: "
            + ", ".join(NOT_CHECKED),
            recorder.current_test,
        )
    assert not missing or os.environ.get("PARITY_ARCHITECTURES"), (
        f"CI-tier or published architectures no longer offered by zoobot.tf: {missing}"
    )


def register_tf_tasks() -> None:
    """Import the TF task models so `zoobot.tf.pretrained.from_pretrained` can rebuild saved ones."""
    importlib.import_module("zoobot.tf.tree")
    importlib.import_module("zoobot.tf.finetune")


def _images(channels: int, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """(B, H, W, C) float32 images, roughly what the evaluation transform gives."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (BATCH, size, size, channels)).astype(np.float32)


def _nchw(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32))


def _nhwc(images: np.ndarray) -> np.ndarray:
    """Channels-last float32 images, as Keras takes them on any backend."""
    return np.ascontiguousarray(images, np.float32)


def _keras() -> str:
    """zoobot.tf's name in check labels: "tf" on TensorFlow, "jax" on JAX."""
    from zoobot.tf import runtime

    return runtime.name()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_torch_saved_model_loads_in_tf(recorder, tmp_path, case):
    import torch

    import zoobot.torch
    from zoobot.torch.pretrained import save_pretrained

    tf_encoders = importlib.import_module("zoobot.tf.encoders")
    tf_hub = importlib.import_module("zoobot.tf.pretrained")
    register_tf_tasks()

    torch.manual_seed(0)
    encoder = zoobot.torch.load_encoder(case.architecture, channels=3, **case.model_args)
    encoder = randomise_torch(encoder, seed=1)
    images = _images(3, seed=2, size=case.size)
    calibrate_batchnorm_torch(encoder, _nchw(images))
    model = zoobot.torch.ZoobotTree(SCHEMA, encoder=encoder, dropout=0.0).eval()
    folder = save_pretrained(model, tmp_path / "torch-saved")
    with torch.no_grad():
        features = encoder(_nchw(images)).numpy()
        concentrations = model(_nchw(images)).numpy()

    tf_encoder = tf_encoders.load_encoder(folder)
    tf_features = np.asarray(tf_encoder(_nhwc(images), training=False))
    tf_model = tf_hub.from_pretrained(folder)
    tf_concentrations = np.asarray(tf_model(_nhwc(images), training=False))
    label = f"{case.id} torch->{_keras()}"
    recorder.record(
        compare(f"{label} features", tf_features, features, TOLERANCE, group="encoders",
                note=f"pooled features, {BATCH}x{case.size}px 3ch, load_encoder(folder)"),
        compare(f"{label} tree concentrations", tf_concentrations, concentrations, TOLERANCE,
                group="encoders", note=f"ZoobotTree({SCHEMA}) head, from_pretrained(folder)"),
    )  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_tf_saved_model_loads_in_torch(recorder, tmp_path, case):
    import keras
    import torch

    from zoobot.torch.pretrained import from_pretrained

    tf_encoders = importlib.import_module("zoobot.tf.encoders")
    tf_finetune = importlib.import_module("zoobot.tf.finetune")
    tf_hub = importlib.import_module("zoobot.tf.pretrained")

    keras.utils.set_random_seed(3)
    encoder = tf_encoders.load_encoder(case.architecture, channels=1, **case.model_args)
    randomise_keras(encoder, seed=4)
    images = _images(1, seed=6, size=case.size)
    calibrate_batchnorm_keras(encoder, images)  # before the classifier freezes its blocks
    model = tf_finetune.FinetuneableZoobotClassifier(num_classes=5, encoder=encoder, dropout=0.0)
    randomise_keras(model.head, seed=5)
    folder = tf_hub.save_pretrained(model, tmp_path / "tf-saved")
    tf_features = np.asarray(model.encoder(_nhwc(images), training=False))
    tf_logits = np.asarray(model(_nhwc(images), training=False))

    torch_model = from_pretrained(folder).eval()
    with torch.no_grad():
        features = torch_model.encoder(_nchw(images)).numpy()
        logits = torch_model(_nchw(images)).numpy()
    label = f"{case.id} {_keras()}->torch"
    recorder.record(
        compare(f"{label} features", features, tf_features, TOLERANCE, group="encoders",
                note=f"pooled features, {BATCH}x{case.size}px 1ch, reference = zoobot.tf"),
        compare(f"{label} classifier logits", logits, tf_logits, TOLERANCE, group="encoders",
                note="FinetuneableZoobotClassifier(5) head, from_pretrained(folder)"),
    )  # fmt: skip


# Every published encoder under its Hub name, through the offline cache (issue 18): the CI tier
# takes the encoders whose full-size weights are under 50 MB (tests/contract does every one at a
# test size); `PARITY_ARCHITECTURES=published` or `all` takes every row of the catalogue, a list
# the rows whose name (with or without `zoobot-encoder-`) or architecture it names.
CI_PUBLISHED_NAMES = (
    "zoobot-encoder-convnext_pico",
    "zoobot-encoder-greyscale-convnext_pico",
    "zoobot-encoder-resnet18",
    "zoobot-encoder-efficientnet_b0",
)


def published_rows() -> list:
    """The catalogue rows this session loads by name (see `CI_PUBLISHED_NAMES`)."""
    wanted = os.environ.get("PARITY_ARCHITECTURES", "ci").strip()
    rows = list(published_encoders())
    if wanted in ("all", "published"):
        return rows
    if wanted == "ci":
        return [row for row in rows if row.name in CI_PUBLISHED_NAMES]
    chosen = {w.strip() for w in wanted.split(",")}
    return [
        row
        for row in rows
        if {row.name, row.name.removeprefix("zoobot-encoder-"), row.architecture} & chosen
    ]


def cache_published_repo(cache: Path, entry, model) -> None:
    """Lay out `entry`'s repo as the Hugging Face cache holds a download of it, with `model`'s
    weights in the files the Hub repo has (`pytorch_model.bin` as torch.save writes it; the Euclid
    one also `model.safetensors`) and config.json as published (stale ImageNet pretrained_cfg)."""
    import safetensors.torch
    import torch

    repo = cache / f"models--{entry.repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / hashlib.sha1(entry.repo_id.encode()).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = published.published_config(model.pretrained_cfg, model.num_features, entry.model_args)
    for name in entry.files:
        staged = repo / "blobs" / f".{name}.incomplete"
        if name == "config.json":
            staged.write_text(json.dumps(config, indent=2), encoding="utf-8")
        elif name == "pytorch_model.bin":
            torch.save(OrderedDict(state), staged)
        else:
            safetensors.torch.save_file(state, staged, metadata={"format": "pt"})
        digest = hashlib.sha256()
        with open(staged, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 24), b""):
                digest.update(chunk)
        blob = repo / "blobs" / digest.hexdigest()
        staged.rename(blob)  # moved, not copied: the largest repo holds 844 MB
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)


@pytest.mark.parametrize("entry", published_rows(), ids=lambda entry: entry.name)
def test_published_name_loads_in_both_frameworks(recorder, tmp_path_factory, monkeypatch, entry):
    """`zoobot.torch.load_encoder(name)` and `zoobot.tf.load_encoder(name)` of a published encoder,
    fetched from the offline Hugging Face cache, give the features timm's own Hub loader gives
    (`timm.create_model(name, pretrained=True, num_classes=0)`, as zoobot 2.x loads them)."""
    import huggingface_hub.constants
    import timm
    import torch

    import zoobot.torch

    tf_encoders = importlib.import_module("zoobot.tf.encoders")
    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    images = _images(entry.channels, seed=9, size=entry.input_size)
    try:
        torch.manual_seed(0)
        model = timm.create_model(
            entry.architecture, num_classes=0, in_chans=entry.channels, **entry.model_args
        )
        randomise_torch(model, seed=10)
        calibrate_batchnorm_torch(model, _nchw(images))
        cache_published_repo(cache, entry, model)
        del model
        with torch.no_grad():
            timm_features = _features_of(
                timm.create_model(
                    entry.hub_name, pretrained=True, num_classes=0, in_chans=entry.channels
                ),
                images,
            )
            torch_features = _features_of(zoobot.torch.load_encoder(entry.hub_name), images)
        tf_features = np.asarray(
            tf_encoders.load_encoder(entry.hub_name)(_nhwc(images), training=False)
        )
    finally:
        shutil.rmtree(cache)  # up to 1.7 GB per encoder: not kept for pytest's last three runs
    note = f"load_encoder({entry.name!r}), {BATCH}x{entry.input_size}px {entry.channels}ch"
    recorder.record(
        compare(f"{entry.name} torch vs timm", torch_features, timm_features, TOLERANCE,
                group="encoders", note=f"{note}; reference = timm's Hub loader"),
        compare(f"{entry.name} tf vs timm", tf_features, timm_features, TOLERANCE,
                group="encoders", note=f"{note}; reference = timm's Hub loader"),
    )  # fmt: skip


def _features_of(encoder, images: np.ndarray) -> np.ndarray:
    """Pooled features of a torch encoder in eval mode (channels-last `images`)."""
    return encoder.eval()(_nchw(images)).numpy()


# One architecture per family, shrunk through timm model arguments (the grouping depends on the
# module structure only): what `n_blocks` / `lr_decay` act on must be the same tensors in both.
_SMALL_MAXVIT = {"embed_dim": [8, 8, 16, 16], "transformer_dim_head": 8, "img_size": 64}
BLOCK_CASES = {
    "test_convnext": {},
    "test_resnet": {},
    "test_efficientnet": {},
    "tf_efficientnetv2_s": {"channel_multiplier": 0.1, "depth_multiplier": 0.34},
    "maxvit_rmlp_tiny_rw_256": {**_SMALL_MAXVIT, "stem_width": [8, 8]},
    "maxvit_large_tf_224": {**_SMALL_MAXVIT, "stem_width": 8, "head_hidden_size": 16},
}


@pytest.mark.parametrize("architecture", sorted(BLOCK_CASES))
def test_finetuning_blocks_hold_the_same_tensors_in_both(recorder, architecture):
    """zoobot.tf.blocks and zoobot.torch.blocks give every trainable tensor the same block index
    (head side first, stem last), so `n_blocks` and `lr_decay` train and decay the same weights."""
    import zoobot.torch
    from zoobot.torch.blocks import encoder_blocks as torch_blocks
    from zoobot.torch.blocks import matches

    tf_blocks = importlib.import_module("zoobot.tf.blocks")
    tf_encoders = importlib.import_module("zoobot.tf.encoders")
    tf_weights = importlib.import_module("zoobot.tf.weights")

    args = BLOCK_CASES[architecture]
    encoder = zoobot.torch.load_encoder(architecture, **args)
    blocks = torch_blocks(encoder)
    torch_of = {
        name: i
        for name, _ in encoder.named_parameters()
        for i, block in enumerate(blocks)
        if matches(name, block)
    }
    tf_encoder = tf_encoders.load_encoder(architecture, **args)
    tf_of = {
        tensor.key: i
        for i, block in enumerate(tf_blocks.encoder_blocks(tf_encoder))
        for layer in block
        for tensor in tf_weights.layer_tensors(layer)
        if tensor.variable.trainable
    }
    recorder.record(
        compare_equal(f"{architecture} finetuning blocks", sorted(tf_of.items()),
                      sorted(torch_of.items()), group="encoders",
                      note=f"{len(blocks)} blocks, {len(torch_of)} parameters: block of each"),
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
