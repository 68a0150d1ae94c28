"""zoobot.models.hub, layout and tasks: the framework-free half of saving and loading models."""

import json

import huggingface_hub.constants
import pytest

from zoobot.models.hub import HubUnavailableError, ModelSource, push_folder
from zoobot.models.layout import (
    WeightsMismatchError,
    check_weights_fit,
    model_card,
    write_model_folder,
)
from zoobot.models.tasks import TaskRegistry
from zoobot.shared import get_schema


def write_config(folder, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architecture": "convnext_nano", **extra}))
    return folder


def test_names_parse_to_hub_repos_folders_or_architectures(tmp_path):
    known = {"convnext_nano"}.__contains__
    hub = ModelSource.parse("hf_hub:owner/repo@v2", known)
    assert (hub.repo_id, hub.revision, str(hub)) == ("owner/repo", "v2", "hf_hub:owner/repo@v2")
    folder = write_config(tmp_path / "model")
    assert ModelSource.parse(folder, known).folder == folder
    assert ModelSource.parse(f"local-dir:{folder}", known).folder == folder
    assert ModelSource.parse("convnext_nano", known) is None
    with pytest.raises(ValueError, match="owner/repo"):
        ModelSource.parse("hf_hub:no-owner", known)
    with pytest.raises(FileNotFoundError, match="hf_hub:"):
        ModelSource.parse(tmp_path / "missing", known)


def test_a_folder_source_reads_its_config_and_finds_weights(tmp_path):
    folder = write_config(tmp_path / "model")
    source = ModelSource(folder=folder)
    assert source.read_config()["architecture"] == "convnext_nano"
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        source.weights_path()
    (folder / "pytorch_model.bin").write_bytes(b"legacy")
    assert source.weights_path().name == "pytorch_model.bin"
    (folder / "model.safetensors").write_bytes(b"new")
    assert source.weights_path().name == "model.safetensors"


def test_an_uncached_hub_file_offline_says_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubUnavailableError, match="hf download owner/repo"):
        ModelSource(repo_id="owner/repo").read_config()


def test_model_folders_are_written_whole_and_other_folders_are_refused(tmp_path):
    def write(folder):
        (folder / "config.json").write_text("{}")

    folder = write_model_folder(tmp_path / "model", write)
    write_model_folder(folder, write)  # replaces a model folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    def fail(folder):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_model_folder(folder, fail)
    assert (folder / "config.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "model"
    ]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a saved model"):
        write_model_folder(tmp_path / "notes", write)


def test_weights_that_do_not_fit_are_named_with_both_shapes():
    expected = {"a": (3, 3), "b": (2,), "buffer": ()}
    check_weights_fit(expected, dict(expected), "ok")
    with pytest.raises(WeightsMismatchError) as err:
        check_weights_fit(expected, {"a": (3, 4), "c": (1,), "extra": ()}, "toy", {"extra"})
    message = str(err.value)
    assert "a: (3, 4) in the checkpoint, (3, 3) in the model" in message
    assert "missing from the checkpoint: b; buffer" in message
    assert "1 unexpected in the checkpoint: c" in message


class Toy:
    task = "toy"

    def task_config(self):
        return {"width": 2}

    @classmethod
    def from_task_config(cls, config, encoder):
        return cls()


def test_the_task_registry_builds_configs_and_finds_classes():
    registry = TaskRegistry(builtin="zoobot.shared")
    registry.register(Toy)
    assert registry.zoobot_config(Toy(), "1.0") == {
        "task": "toy",
        "zoobot_version": "1.0",
        "width": 2,
    }
    assert registry.zoobot_config(object(), "1.0")["task"] == "encoder"
    assert registry.lookup("toy", "here") is Toy
    assert registry.task_config({"task": "toy", "zoobot_version": "1", "width": 2}) == {"width": 2}
    with pytest.raises(ValueError, match="no class is registered"):
        registry.lookup("other", "here")
    with pytest.raises(TypeError, match="task name"):
        registry.register(type("NoTask", (), {}))


def test_the_model_card_describes_the_model_and_both_frameworks():
    schema = get_schema("decals_dr5")
    config = {
        "architecture": "convnext_nano",
        "pretrained_cfg": {"input_size": [1, 224, 224]},
        "zoobot": {"task": "tree", "zoobot_version": "0.1.0", "schema": schema.to_dict()},
    }
    text = model_card(config, 640, {"license": "apache-2.0"}, "demo", "zoobot-tf", "me/demo")
    for expected in (
        "license: apache-2.0",
        "(zoobot-tf 0.1.0)",
        "timm `convnext_nano`, 640 pooled features, 1 input channel(s)",
        "`decals_dr5`: 10 questions, 34 answers",
        "from zoobot.torch import from_pretrained  # or: from zoobot.tf import from_pretrained",
        "in_chans=1",
    ):
        assert expected in text
    with pytest.raises(ValueError, match="unknown model card fields"):
        model_card(config, 640, {"licence": "x"}, "demo", "zoobot-tf")


def test_a_dry_run_push_lists_files_and_an_offline_push_fails_first(monkeypatch):
    def write(folder):
        (folder / "config.json").write_text("{}")
        return "tree"

    result = push_folder(write, "me/demo", dry_run=True)
    assert (result.files, result.commit_url) == (["config.json"], None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        push_folder(write, "me/demo", token="hf_x")
