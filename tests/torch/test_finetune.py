"""Finetuning: blocks per architecture family, layer-wise lr decay, true freezing, the three task heads.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import logging

import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zoobot.shared import get_schema
from zoobot.torch import (
    FinetuneableZoobotClassifier,
    FinetuneableZoobotRegressor,
    FinetuneableZoobotTree,
    from_pretrained,
    load_encoder,
    save_pretrained,
)
from zoobot.torch.blocks import block_parameters, encoder_blocks, matches

# (encoder factory, number of blocks, a parameter of the stem, a parameter of the last block)
FAMILIES = {
    "convnext": (
        lambda: timm.create_model("convnext_zepto_rms", num_classes=0),
        5,
        "stem.0.weight",
        "head.norm.weight",
    ),
    "efficientnet": (
        lambda: timm.create_model("efficientnet_b0", num_classes=0),
        8,
        "conv_stem.weight",
        "conv_head.weight",
    ),
    "resnet": (
        lambda: timm.create_model("resnet10t", num_classes=0),
        5,
        "conv1.0.weight",
        "layer4.0.conv1.weight",
    ),
    "torchvision_resnet": (
        lambda: load_encoder("torchvision:resnet18"),
        5,
        "conv1.weight",
        "layer4.1.bn2.bias",
    ),
    "maxvit": (
        lambda: timm.create_model("maxvit_pico_rw_256", num_classes=0, img_size=64),
        5,
        "stem.conv1.weight",
        "norm.weight",
    ),
    "vit": (
        lambda: timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32),
        13,
        "cls_token",
        "norm.weight",
    ),
}


def labelled_batches(n: int = 16, n_classes: int = 2, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=generator)
    labels = torch.randint(0, n_classes, (n, 1), generator=generator).float()
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def one_step(model: pl.LightningModule, batches: DataLoader) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, batches)
    return trainer


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_cover_every_parameter_once_head_first_stem_last(family):
    make, n_blocks, stem_param, last_param = FAMILIES[family]
    encoder = make()
    blocks = encoder_blocks(encoder)
    assert len(blocks) == n_blocks
    for name, _ in encoder.named_parameters():
        assert sum(matches(name, block) for block in blocks) == 1, name
    assert matches(stem_param, blocks[-1])
    assert matches(last_param, blocks[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_lr_decay_gives_each_trained_block_its_learning_rate(family):
    make, *_ = FAMILIES[family]
    model = FinetuneableZoobotClassifier(
        2, encoder=make(), n_blocks=3, lr_decay=0.5, learning_rate=1e-3
    )
    groups = model.param_groups()
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    assert groups[0]["params"] == list(model.head.parameters())
    blocks = encoder_blocks(model.encoder)
    for group, block in zip(groups[1:], blocks, strict=False):
        assert group["params"] == list(block_parameters(model.encoder, block))
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("n_blocks", [0, 1, 3])
def test_exactly_the_last_blocks_and_head_change_and_frozen_batchnorm_stays_put(n_blocks):
    torch.manual_seed(0)
    # zero_init_last=False: every tensor of a trained block then gets a gradient in the first step
    encoder = timm.create_model("resnet10t", num_classes=0, zero_init_last=False)
    model = FinetuneableZoobotClassifier(2, encoder=encoder, n_blocks=n_blocks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = one_step(model, labelled_batches())
    trained = [p for block in encoder_blocks(model.encoder)[:n_blocks] for p in block]
    after = model.state_dict()
    for key, value in before.items():
        name = key.removeprefix("encoder.")
        should_change = key.startswith("head.") or (
            key.startswith("encoder.") and matches(name, trained)
        )
        if name.endswith("num_batches_tracked"):
            assert (after[key] == value + int(should_change)).all(), key
        else:
            assert torch.equal(after[key], value) != should_change, key
    lrs = [g["initial_lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs == pytest.approx([1e-4] + [1e-4 * 0.75**i for i in range(n_blocks)])


def test_train_mode_keeps_frozen_blocks_in_eval():
    model = FinetuneableZoobotClassifier(
        2, encoder=timm.create_model("resnet10t", num_classes=0), n_blocks=1
    )
    model.train()
    assert model.head.training and model.encoder.layer4.training
    assert not model.encoder.layer3.training and not model.encoder.bn1.training
    assert not any(p.requires_grad for p in model.encoder.layer3.parameters())
    model.eval()
    assert not model.encoder.layer4.training


def test_unknown_family_is_one_block(caplog):
    encoder = timm.create_model("mobilenetv3_small_050", num_classes=0)
    with caplog.at_level(logging.WARNING):
        model = FinetuneableZoobotRegressor(encoder=encoder, n_blocks=2)
    assert "one block" in caplog.text
    assert all(p.requires_grad for p in model.encoder.parameters())
    assert len(model.param_groups()) == 2


def test_exactly_one_of_name_and_encoder():
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneableZoobotClassifier(2)
    with pytest.raises(ValueError, match="exactly one"):
        FinetuneableZoobotClassifier(2, name="resnet10t", encoder=nn.Identity())


def test_classifier_loss_probabilities_and_accuracy():
    model = FinetuneableZoobotClassifier(
        3,
        name="resnet10t",
        label_smoothing=0.1,
        class_weights=[1.0, 2.0, 0.5],
    ).eval()
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([[0.0], [1], [2], [1], [0], [2]])
    logits = model(images)
    loss, target = model.loss_and_target(logits, labels)
    expected = F.cross_entropy(logits, target, torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    probabilities = model.predict_samples(images, n_samples=2)
    assert probabilities.shape == (6, 3, 2)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(6, 2))
    batches = labelled_batches(n_classes=3)
    one_step(model, batches)
    images, labels = batches.dataset.tensors
    with torch.no_grad():
        expected = (model.eval()(images).argmax(1) == labels[:, 0].long()).float().mean()
    validator = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (result,) = validator.validate(model, batches, verbose=False)
    assert result["validation/accuracy"] == pytest.approx(float(expected))


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_regressor_loss_and_unit_interval(loss):
    model = FinetuneableZoobotRegressor(name="resnet10t", loss=loss, unit_interval=True).eval()
    images, targets = torch.rand(4, 3, 32, 32) * 50, torch.rand(4, 1)
    output = model(images)
    assert ((output > 0) & (output < 1)).all()
    error = output - targets
    expected = (error**2).mean() if loss == "mse" else error.abs().mean()
    torch.testing.assert_close(model.loss_and_target(output, targets)[0], expected)
    with pytest.raises(ValueError, match="mse"):
        FinetuneableZoobotRegressor(name="resnet10t", loss="huber")


def test_finetune_from_a_hub_layout_folder(tmp_path):
    encoder = timm.create_model("resnet10t", num_classes=0)
    save_pretrained(encoder, tmp_path / "encoder")
    model = FinetuneableZoobotTree("decals_dr5", name=tmp_path / "encoder")
    for key, value in encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.encoder.parameters()), "n_blocks=0 by default"
    assert model.head[1].out_features == len(get_schema("decals_dr5").label_cols)


@pytest.mark.parametrize(
    ("cls", "kwargs", "task"),
    [
        (
            FinetuneableZoobotClassifier,
            {"num_classes": 3, "class_weights": [1, 2, 3]},
            "classifier",
        ),
        (
            FinetuneableZoobotClassifier,
            {"num_classes": 2, "class_names": ["ring", "no ring"]},
            "classifier",
        ),
        (FinetuneableZoobotRegressor, {"loss": "mae", "unit_interval": True}, "regressor"),
        (FinetuneableZoobotTree, {"schema": "gz2", "n_blocks": 2}, "finetuneable_tree"),
    ],
)
def test_save_pretrained_round_trip(tmp_path, cls, kwargs, task):
    model = cls(name="resnet10t", **kwargs)
    torch.nn.init.normal_(model.head[1].weight)
    save_pretrained(model.eval(), tmp_path / task)
    reloaded = from_pretrained(tmp_path / task).eval()
    assert type(reloaded) is cls and cls.task == task
    assert reloaded.task_config() == model.task_config()
    assert getattr(reloaded, "class_names", None) == kwargs.get("class_names")
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(reloaded(images), model(images), rtol=0, atol=0)


def test_classifier_class_names_are_kept_only_when_given():
    named = FinetuneableZoobotClassifier(2, name="resnet10t", class_names=["ring", "no ring"])
    assert named.class_names == ["ring", "no ring"]
    assert named.task_config()["class_names"] == ["ring", "no ring"]
    unnamed = FinetuneableZoobotClassifier(2, name="resnet10t")
    assert unnamed.class_names is None and "class_names" not in unnamed.task_config()
    for wrong in (["ring"], ["ring", "ring"]):
        with pytest.raises(ValueError, match="2 distinct names"):
            FinetuneableZoobotClassifier(2, name="resnet10t", class_names=wrong)
