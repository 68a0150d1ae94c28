"""What is torch's own in saving and reloading (the rest is tests/contract/test_pretrained.py):
timm reads what zoobot.torch writes, torchvision ResNets save as their timm twins, and a task
class of your own follows the protocol of `zoobot.models.tasks`."""

import json

import pytest
import safetensors.torch
import timm
import torch
from torch import nn

from zoobot.shared import Schema, get_schema
from zoobot.torch.encoders import (
    encoder_dim,
    load_encoder,
)
from zoobot.torch.pretrained import (
    from_pretrained,
    register_task,
    save_pretrained,
)

LAYOUT = ["README.md", "config.json", "head.safetensors", "model.safetensors"]


class ToyTreeBase(nn.Module):
    """The smallest model that follows the hub protocol: an encoder and a Dirichlet-style head."""

    task = "test-toy-tree"

    def __init__(self, encoder: nn.Module, schema: Schema, dropout: float = 0.25):
        super().__init__()
        self.encoder, self.schema, self.dropout = encoder, schema, dropout
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(encoder_dim(encoder), len(schema.label_cols))
        )

    def forward(self, x):
        return 1 + 100 * torch.sigmoid(self.head(self.encoder(x)))

    def task_config(self) -> dict:
        return {"schema": self.schema.to_dict(), "dropout": self.dropout}

    @classmethod
    def from_task_config(cls, config: dict, encoder: nn.Module):
        return cls(encoder, Schema.from_dict(config["schema"]), config["dropout"])


@register_task
class ToyTree(ToyTreeBase):
    pass


@pytest.fixture
def tree():
    torch.manual_seed(0)
    return ToyTree(load_encoder("test_convnext"), get_schema("decals_dr5"))


def outputs(model, channels=3):
    torch.manual_seed(7)
    with torch.no_grad():
        return model.eval()(torch.randn(2, channels, 32, 32))


def test_encoder_round_trip_and_timm_reads_the_folder(tmp_path):
    torch.manual_seed(0)
    encoder = load_encoder("test_convnext")
    folder = save_pretrained(encoder, tmp_path / "encoder")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_convnext"
    assert config["num_classes"] == 0 and config["num_features"] == 64
    assert config["pretrained_cfg"]["first_conv"] == "stem.0"
    assert config["zoobot"]["task"] == "encoder"
    assert torch.equal(outputs(from_pretrained(folder)), outputs(encoder))
    by_timm = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    assert torch.equal(outputs(by_timm), outputs(encoder))


def test_encoder_keys_are_exactly_timms(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    saved = safetensors.torch.load_file(folder / "model.safetensors")
    assert set(saved) == set(timm.create_model("test_convnext", num_classes=0).state_dict())


def test_a_task_class_of_your_own_round_trips(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    assert sorted(p.name for p in folder.iterdir()) == LAYOUT
    zoobot = json.loads((folder / "config.json").read_text())["zoobot"]
    assert zoobot["task"] == "test-toy-tree"
    assert zoobot["schema"] == get_schema("decals_dr5").to_dict()
    assert zoobot["dropout"] == 0.25 and zoobot["zoobot_version"]
    reloaded = from_pretrained(folder)
    assert type(reloaded) is ToyTree and reloaded.schema == get_schema("decals_dr5")
    assert torch.equal(outputs(reloaded), outputs(tree))
    assert torch.equal(outputs(from_pretrained(str(folder))), outputs(tree))


def test_torchvision_resnet_saves_as_its_timm_twin(tmp_path):
    torch.manual_seed(0)
    encoder = load_encoder("torchvision:resnet18", channels=1)
    folder = save_pretrained(encoder, tmp_path / "resnet")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "resnet18"
    reloaded = from_pretrained(folder)
    assert isinstance(reloaded, timm.models.ResNet)
    assert torch.equal(outputs(reloaded, channels=1), outputs(encoder, channels=1))
