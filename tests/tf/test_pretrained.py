"""What is Keras's own in saving and reloading (the rest is tests/contract/test_pretrained.py):
heads are written in torch's names and layouts, and a task class of your own follows the
protocol of `zoobot.models.tasks`."""

import json

import keras
import numpy as np
import pytest
import safetensors.numpy

from zoobot.shared import Schema, get_schema
from zoobot.tf.backend import BACKEND
from zoobot.tf.encoders import encoder_dim, load_encoder
from zoobot.tf.pretrained import from_pretrained, register_task, save_pretrained

LAYOUT = ["README.md", "config.json", "head.safetensors", "model.safetensors"]


class ToyTreeBase(keras.Model):
    """The smallest Keras model that follows the hub protocol: an encoder and a Dirichlet-style head."""

    task = "test-toy-tree"

    def __init__(self, encoder: keras.Model, schema: Schema, dropout: float = 0.25):
        super().__init__()
        self.encoder, self.schema, self.dropout = encoder, schema, dropout
        self.head = keras.Sequential(
            [keras.layers.Dropout(dropout), keras.layers.Dense(len(schema.label_cols))]
        )
        self.head.build((None, encoder_dim(encoder)))

    def call(self, x, training=None):
        return 1 + 100 * keras.ops.sigmoid(self.head(self.encoder(x, training=training)))

    def task_config(self) -> dict:
        return {"schema": self.schema.to_dict(), "dropout": self.dropout}

    @classmethod
    def from_task_config(cls, config: dict, encoder: keras.Model):
        return cls(encoder, Schema.from_dict(config["schema"]), config["dropout"])


@register_task
class ToyTree(ToyTreeBase):
    pass


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    return load_encoder("test_convnext")


@pytest.fixture
def tree(encoder):
    """A fresh head around the module's encoder (no test changes the encoder)."""
    return ToyTree(encoder, get_schema("decals_dr5"))


def outputs(model, channels=3):
    x = np.random.default_rng(7).normal(size=(2, 32, 32, channels)).astype("float32")
    return np.asarray(model(x, training=False))


def test_encoder_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
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
    assert config["zoobot"]["task"] == "encoder"
    np.testing.assert_array_equal(outputs(from_pretrained(folder)), outputs(encoder))


def test_a_task_class_of_your_own_round_trips(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    assert sorted(p.name for p in folder.iterdir()) == LAYOUT
    zoobot = json.loads((folder / "config.json").read_text())["zoobot"]
    assert zoobot["task"] == "test-toy-tree"
    assert zoobot["schema"] == get_schema("decals_dr5").to_dict()
    assert zoobot["dropout"] == 0.25 and zoobot["zoobot_version"]
    reloaded = from_pretrained(folder)
    assert type(reloaded) is ToyTree and reloaded.schema == get_schema("decals_dr5")
    np.testing.assert_array_equal(outputs(reloaded), outputs(tree))
    np.testing.assert_array_equal(outputs(from_pretrained(str(folder))), outputs(tree))


def test_head_is_saved_in_torch_names_and_layouts(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    head = safetensors.numpy.load_file(folder / "head.safetensors")
    assert sorted(head) == ["1.bias", "1.weight"]
    dense = tree.head.layers[1]
    np.testing.assert_array_equal(head["1.weight"], np.asarray(dense.kernel).T)  # (out, in)
    assert head["1.weight"].shape == (34, 64) and head["1.weight"].dtype == np.float32
    np.testing.assert_array_equal(head["1.bias"], np.asarray(dense.bias))
    assert BACKEND.head_state(tree.head).keys() == head.keys()
