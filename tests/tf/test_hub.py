"""save_pretrained / load_from_name / push_to_hub in TF: zoobot.torch's layout, no pickles, no torch.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import hashlib
import json
import os
from pathlib import Path

import huggingface_hub
import keras
import numpy as np
import pytest
import safetensors.numpy

from zoobot.shared import Schema, get_schema
from zoobot.tf.encoders import HubUnavailableError, encoder_dim, load_encoder
from zoobot.tf.hub import (
    from_pretrained,
    head_state,
    load_from_name,
    push_to_hub,
    register_task,
    save_pretrained,
)
from zoobot.tf.weights import WeightsMismatchError

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


def fill_hf_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay out `folder` as huggingface_hub caches a download of `repo_id` at main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    for file in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(file.read_bytes())
        link = repo / "snapshots" / commit / file.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with an empty cache in tmp_path; HfApi must not even be constructed."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub, "HfApi", _no_network)
    return cache


def _no_network(*args, **kwargs):
    raise AssertionError("the Hub API was used")


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
    np.testing.assert_array_equal(outputs(load_from_name(folder)), outputs(encoder))


def test_task_model_round_trip_gives_identical_outputs(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    assert sorted(p.name for p in folder.iterdir()) == LAYOUT
    zoobot = json.loads((folder / "config.json").read_text())["zoobot"]
    assert zoobot["task"] == "test-toy-tree"
    assert zoobot["schema"] == get_schema("decals_dr5").to_dict()
    assert zoobot["dropout"] == 0.25 and zoobot["zoobot_version"]
    reloaded = load_from_name(folder)
    assert type(reloaded) is ToyTree and reloaded.schema == get_schema("decals_dr5")
    np.testing.assert_array_equal(outputs(reloaded), outputs(tree))
    np.testing.assert_array_equal(outputs(from_pretrained(str(folder))), outputs(tree))


def test_head_is_saved_in_torch_names_and_layouts(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    head = safetensors.numpy.load_file(folder / "head.safetensors")
    assert sorted(head) == ["1.bias", "1.weight"]
    dense = tree.head.layers[1]
    np.testing.assert_array_equal(head["1.weight"], dense.kernel.numpy().T)  # (out, in)
    assert head["1.weight"].shape == (34, 64) and head["1.weight"].dtype == np.float32
    np.testing.assert_array_equal(head["1.bias"], dense.bias.numpy())
    assert head_state(tree.head).keys() == head.keys()


def test_saved_files_get_the_usual_permissions(tmp_path, tree):
    umask = os.umask(0)
    os.umask(umask)
    folder = save_pretrained(tree, tmp_path / "tree")
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in folder.iterdir())


def test_model_card_describes_architecture_schema_data_and_metrics(tmp_path, tree):
    card = {
        "description": "A toy.",
        "training_data": "GZ DECaLS DR5 volunteer votes",
        "metrics": {"test_loss": 12.5},
        "license": "apache-2.0",
    }
    text = (save_pretrained(tree, tmp_path / "tree", card=card) / "README.md").read_text()
    for expected in (
        "library_name: timm",
        "license: apache-2.0",
        "A toy.",
        "(zoobot-tf ",
        "timm `test_convnext`, 64 pooled features",
        "`decals_dr5`: 10 questions, 34 answers",
        "`bar-dr5` (asked after `disk-edge-on-dr5_no`): strong, weak, no",
        "GZ DECaLS DR5 volunteer votes",
        "| test_loss | 12.5 |",
        "from zoobot.tf import load_from_name",
        "from zoobot.torch import load_from_name",
    ):
        assert expected in text
    with pytest.raises(ValueError, match="unknown model card fields"):
        save_pretrained(tree, tmp_path / "other", card={"metric": 1})


def test_saving_again_replaces_the_model_and_leaves_no_temporaries(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    dense = tree.head.layers[1]
    dense.bias.assign(dense.bias + 1.0)
    save_pretrained(tree, folder)
    np.testing.assert_array_equal(outputs(load_from_name(folder)), outputs(tree))
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_failed_save_keeps_the_previous_model(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    tree.dropout = object()  # not JSON: writing config.json fails half way
    with pytest.raises(TypeError):
        save_pretrained(tree, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path, tree):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved model"):
        save_pretrained(tree, tmp_path / "notes")


def test_task_model_through_the_offline_hub_cache(tmp_path, tree, offline):
    fill_hf_cache(offline, "owner/toy-tree", save_pretrained(tree, tmp_path / "tree"))
    np.testing.assert_array_equal(outputs(load_from_name("hf_hub:owner/toy-tree")), outputs(tree))


def test_unregistered_task_class_cannot_be_saved(tmp_path, encoder):
    model = ToyTreeBase(encoder, get_schema("gz_rings"))
    with pytest.raises(TypeError, match="not registered"):
        save_pretrained(model, tmp_path / "model")


def test_unknown_task_on_load_lists_the_registered_ones(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    config = json.loads((folder / "config.json").read_text())
    config["zoobot"]["task"] = "mystery"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'mystery'.*test-toy-tree"):
        load_from_name(folder)


def test_register_task_checks_the_protocol():
    with pytest.raises(TypeError, match="task"):
        register_task(type("NoTask", (), {}))
    with pytest.raises(TypeError, match="from_task_config"):
        register_task(type("NoFactory", (), {"task": "x", "task_config": lambda self: {}}))
    with pytest.raises(ValueError, match="already registered"):
        register_task(type("Impostor", (ToyTreeBase,), {}))


def test_mismatched_head_names_the_tensor(tmp_path, tree):
    folder = save_pretrained(tree, tmp_path / "tree")
    head = safetensors.numpy.load_file(folder / "head.safetensors")
    head["1.weight"] = np.zeros((3, 64), np.float32)
    head["2.weight"] = np.zeros(1, np.float32)
    safetensors.numpy.save_file(head, folder / "head.safetensors")
    with pytest.raises(
        WeightsMismatchError, match=r"1\.weight: \(3, 64\) in the checkpoint, \(34, 64\)"
    ):
        load_from_name(folder)
    with pytest.raises(WeightsMismatchError, match=r"unexpected in the checkpoint: 2\.weight"):
        load_from_name(folder)


def test_load_from_name_wants_a_folder_or_hub_repo():
    with pytest.raises(ValueError, match="load_encoder"):
        load_from_name("convnext_nano")


def test_dry_run_push_lists_the_files_without_network(tree, offline):
    result = push_to_hub(tree, "owner/toy-tree", dry_run=True)
    assert result.repo_id == "owner/toy-tree"
    assert result.files == LAYOUT
    assert result.commit_url is None


def test_offline_push_fails_clearly(tree, offline):
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE.*save_pretrained"):
        push_to_hub(tree, "owner/toy-tree", token="hf_x")


def test_unauthenticated_push_fails_clearly(tree, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", _no_network)
    with pytest.raises(HubUnavailableError, match="hf auth login"):
        push_to_hub(tree, "owner/toy-tree")


def test_unreachable_hub_push_fails_clearly(tree, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnavailableError, match="pushing to owner/toy-tree failed"):
        push_to_hub(tree, "owner/toy-tree", token="hf_x")


def test_push_uploads_one_commit(tree, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private))

        def create_branch(self, repo_id, branch, exist_ok):
            calls.append(("create_branch", branch))

        def upload_folder(self, repo_id, folder_path, revision, commit_message):
            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            calls.append(("one commit", sorted(files), revision, commit_message))
            assert json.loads(files["config.json"])["zoobot"]["task"] == "test-toy-tree"
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
                commit_message=commit_message,
                commit_description="",
                oid="abc",
            )

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = push_to_hub(tree, "owner/toy-tree", private=True, revision="v1", token="hf_x")
    assert calls == [
        ("token", "hf_x"),
        ("create_repo", "owner/toy-tree", True),
        ("create_branch", "v1"),
        ("one commit", LAYOUT, "v1", "Upload Zoobot test-toy-tree model"),
    ]
    assert result.commit_url.endswith("/commit/abc")
    assert result.files == LAYOUT
