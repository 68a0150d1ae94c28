"""Saving, reloading and publishing in the Hub layout, the same in every framework: every model class
round-trips through `save_pretrained` / `from_pretrained` (function and class method), pushes as
one commit, reloads through the offline Hub cache, and every failure names what to fix."""

import json
import os
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
import safetensors.numpy
from contract import SCHEMA, images, no_network

from zoobot.shared import get_schema

LAYOUT = ["README.md", "config.json", "head.safetensors", "model.safetensors"]
ENCODER = "test_convnext"


def build(fw, kind: str):
    """One model of each class, seeded."""
    fw.seed(0)
    p = fw.package
    if kind == "tree":
        return p.ZoobotTree(SCHEMA, ENCODER)
    if kind == "classifier":
        names = ["ring", "lens", "other"]
        return p.FinetuneableZoobotClassifier(3, name=ENCODER, class_names=names, n_blocks=1)
    if kind == "regressor":
        return p.FinetuneableZoobotRegressor(name=ENCODER, num_outputs=2, unit_interval=True)
    return p.FinetuneableZoobotTree("gz_rings", name=ENCODER, learning_rate=3e-4)


KINDS = ["tree", "classifier", "regressor", "finetuneable_tree"]


@pytest.fixture
def tree(fw):
    return build(fw, "tree")


def outputs(fw, model) -> np.ndarray:
    return fw.backend.predict_batch(model, images(3))


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_class_saves_and_reloads_itself(fw, tmp_path, kind):
    model = build(fw, kind)
    folder = model.save_pretrained(tmp_path / kind)
    assert sorted(p.name for p in folder.iterdir()) == LAYOUT
    zoobot = json.loads((folder / "config.json").read_text())["zoobot"]
    assert zoobot["task"] == model.task and zoobot["zoobot_version"]
    assert {k: v for k, v in zoobot.items() if k not in ("task", "zoobot_version")} == (
        model.task_config()
    )
    cls = type(model)
    for reloaded in (cls.from_pretrained(folder), fw.package.from_pretrained(str(folder))):
        assert type(reloaded) is cls and reloaded.task_config() == model.task_config()
        # the same weights through the same kernels on the same batch: equal bit for bit
        np.testing.assert_array_equal(outputs(fw, reloaded), outputs(fw, model))
    result = model.push_to_hub("owner/model", dry_run=True)
    assert result.files == LAYOUT and result.commit_url is None


def test_a_class_builds_itself_around_a_pretrained_encoder(fw, tmp_path):
    fw.seed(0)
    encoder = fw.package.load_encoder(ENCODER)
    folder = fw.package.save_pretrained(encoder, tmp_path / "encoder")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ENCODER and config["zoobot"]["task"] == "encoder"
    np.testing.assert_array_equal(
        fw.backend.predict_batch(fw.package.from_pretrained(folder), images()),
        fw.backend.predict_batch(encoder, images()),
    )
    model = fw.package.FinetuneableZoobotClassifier.from_pretrained(
        folder, num_classes=2, n_blocks=1
    )
    assert model.settings.n_blocks == 1 and model.task_config()["num_classes"] == 2
    np.testing.assert_array_equal(
        fw.backend.predict_batch(model.encoder, images()),
        fw.backend.predict_batch(encoder, images()),
    )


def test_from_pretrained_of_the_wrong_class_or_with_arguments_is_refused(fw, tmp_path, tree):
    folder = tree.save_pretrained(tmp_path / "tree")
    with pytest.raises(TypeError, match="holds a ZoobotTree.*not a FinetuneableZoobotClassifier"):
        fw.package.FinetuneableZoobotClassifier.from_pretrained(folder)
    with pytest.raises(TypeError, match="rebuilt as saved.*dropout"):
        fw.package.ZoobotTree.from_pretrained(folder, dropout=0.1)


def test_model_card_describes_architecture_schema_data_and_metrics(fw, tmp_path, tree):
    card = {
        "description": "A toy.",
        "training_data": "GZ DECaLS DR5 volunteer votes",
        "metrics": {"test_loss": 12.5},
        "license": "apache-2.0",
    }
    text = (tree.save_pretrained(tmp_path / "tree", card=card) / "README.md").read_text()
    for expected in (
        "library_name: timm",
        "license: apache-2.0",
        "A toy.",
        f"timm `{ENCODER}`, 64 pooled features",
        "`decals_dr5`: 10 questions, 34 answers",
        "`bar-dr5` (asked after `disk-edge-on-dr5_no`): strong, weak, no",
        "GZ DECaLS DR5 volunteer votes",
        "| test_loss | 12.5 |",
        f"({fw.backend.package} ",
    ):
        assert expected in text
    with pytest.raises(ValueError, match="unknown model card fields"):
        tree.save_pretrained(tmp_path / "other", card={"metric": 1})


def test_saved_files_get_the_usual_permissions(fw, tmp_path, tree):
    umask = os.umask(0)
    os.umask(umask)
    folder = tree.save_pretrained(tmp_path / "tree")
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in folder.iterdir())


def test_saving_again_replaces_the_model_and_leaves_no_temporaries(fw, tmp_path, tree):
    folder = tree.save_pretrained(tmp_path / "tree")
    head = fw.backend.head_state(tree.head)
    fw.backend.load_head_state(tree.head, {k: v + 1 for k, v in head.items()}, "test")
    tree.save_pretrained(folder)
    np.testing.assert_array_equal(
        outputs(fw, fw.package.from_pretrained(folder)), outputs(fw, tree)
    )
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_failed_save_keeps_the_previous_model(fw, tmp_path, tree):
    folder = tree.save_pretrained(tmp_path / "tree")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    tree.task_args["unsaveable"] = object()  # not JSON: writing config.json fails half way
    with pytest.raises(TypeError):
        tree.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_refuses_to_replace_a_folder_that_is_not_a_model(fw, tmp_path, tree):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"holds files a saved model does not \(todo.txt\)"):
        tree.save_pretrained(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_task_model_through_the_offline_hub_cache(fw, tmp_path, tree, offline):
    offline.fill("owner/tree", tree.save_pretrained(tmp_path / "tree"))
    reloaded = fw.package.ZoobotTree.from_pretrained("hf_hub:owner/tree")
    np.testing.assert_array_equal(outputs(fw, reloaded), outputs(fw, tree))
    with pytest.raises(fw.package.HubUnavailableError, match="not in the Hugging Face cache"):
        fw.package.from_pretrained("hf_hub:owner/elsewhere")


def test_unknown_task_on_load_lists_the_registered_ones(fw, tmp_path, tree):
    folder = tree.save_pretrained(tmp_path / "tree")
    config = json.loads((folder / "config.json").read_text())
    config["zoobot"]["task"] = "mystery"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'mystery'.*classifier"):
        fw.package.from_pretrained(folder)


def test_register_task_checks_the_protocol(fw):
    register = fw.package.register_task
    with pytest.raises(TypeError, match="task"):
        register(type("NoTask", (), {}))
    with pytest.raises(TypeError, match="from_task_config"):
        register(type("NoFactory", (), {"task": "x", "task_config": lambda self: {}}))
    with pytest.raises(ValueError, match="already registered"):
        register(type("Impostor", (fw.package.ZoobotTree,), {}))


def test_an_unregistered_subclass_cannot_be_saved(fw, tmp_path):
    unregistered = type("Unregistered", (fw.package.ZoobotTree,), {"task": "mine"})
    with pytest.raises(TypeError, match="not registered"):
        unregistered(get_schema("gz_rings"), ENCODER).save_pretrained(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_mismatched_head_names_the_tensor(fw, tmp_path, tree):
    folder = tree.save_pretrained(tmp_path / "tree")
    head = safetensors.numpy.load_file(folder / "head.safetensors")
    head["1.weight"] = np.zeros((3, 64), np.float32)
    safetensors.numpy.save_file(head, folder / "head.safetensors")
    with pytest.raises(
        fw.package.WeightsMismatchError, match=r"1\.weight: \(3, 64\) in the checkpoint, \(34, 64\)"
    ):
        fw.package.from_pretrained(folder)


def test_from_pretrained_wants_a_folder_or_hub_repo(fw, tmp_path):
    with pytest.raises(ValueError, match="load_encoder"):
        fw.package.from_pretrained("convnext_nano")
    with pytest.raises(FileNotFoundError, match="hf_hub:"):
        fw.package.from_pretrained(tmp_path / "missing")


def test_bad_training_settings_name_the_argument(fw):
    with pytest.raises(ValueError, match=r"lr_decay must be in \(0.0, 1.0\], got 2"):
        fw.package.FinetuneableZoobotClassifier(2, name=ENCODER, lr_decay=2)
    with pytest.raises(ValueError, match="n_blocks must be -1"):
        fw.package.ZoobotTree(SCHEMA, ENCODER, n_blocks=-3)
    with pytest.raises(ValueError, match="exactly one of name="):
        fw.package.FinetuneableZoobotRegressor()


def test_offline_push_fails_clearly(fw, tree, offline):
    with pytest.raises(fw.package.HubUnavailableError, match="HF_HUB_OFFLINE.*save_pretrained"):
        tree.push_to_hub("owner/tree", token="hf_x")


def test_unauthenticated_push_fails_clearly(fw, tree, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    with pytest.raises(fw.package.HubUnavailableError, match="hf auth login"):
        fw.package.push_to_hub(tree, "owner/tree")


def test_unreachable_hub_push_fails_clearly(fw, tree, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(fw.package.HubUnavailableError, match="pushing to owner/tree failed"):
        tree.push_to_hub("owner/tree", token="hf_x")


def test_push_uploads_one_commit(fw, tree, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private))

        def create_branch(self, repo_id, branch, exist_ok):
            calls.append(("create_branch", branch))

        def upload_folder(self, repo_id, folder_path, revision, commit_message):
            calls.append(("upload_folder", sorted(p.name for p in Path(folder_path).iterdir())))
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
                commit_message=commit_message,
                commit_description="",
                oid="abc",
            )

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = tree.push_to_hub("owner/tree", private=True, revision="v1", token="hf_x")
    assert calls == [
        ("token", "hf_x"),
        ("create_repo", "owner/tree", True),
        ("create_branch", "v1"),
        ("upload_folder", LAYOUT),
    ]
    assert result.commit_url.endswith("/commit/abc")
