"""zoobot.models.hub, layout and tasks: the framework-free half of saving and loading models."""

import json

import huggingface_hub.constants
import numpy as np
import pytest

from zoobot.models.hub import HubUnavailableError, ModelSource, push_folder
from zoobot.models.layout import (
    ConfigError,
    WeightsFileError,
    WeightsMismatchError,
    check_weights_fit,
    model_card,
    nonfinite_tensors,
    read_safetensors,
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


def test_model_folders_are_written_whole_and_other_folders_are_refused(tmp_path, folder_state):
    def write(folder):
        (folder / "config.json").write_text('{"zoobot": {"task": "encoder"}}')

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
    with pytest.raises(FileExistsError, match=r"holds files a saved model does not \(thesis.tex\)"):
        write_model_folder(tmp_path / "notes", write)
    # a saved model with someone's file added: the whole folder would go, so it is refused
    (folder / "notes.txt").write_text("mine")
    before = folder_state(tmp_path)
    with pytest.raises(FileExistsError, match=r"model holds files a saved model does not \(notes"):
        write_model_folder(folder, write)
    (folder / "notes.txt").unlink()
    # a timm folder (same file names, no zoobot entry) was not saved by zoobot
    (folder / "config.json").write_text('{"architecture": "resnet18"}')
    with pytest.raises(FileExistsError, match="not a model zoobot saved"):
        write_model_folder(folder, write)
    assert before.touched() == {"model/notes.txt", "model/config.json"}  # the test's own edits
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object but list"),
        ('{"num_features": 3}', "names no 'architecture'"),
        ('{"architecture": "a", "model_args": [1]}', "'model_args' must be an object, not list"),
        ('{"architecture": "a", "model_args": {"drop rate": 1}}', "are not argument names"),
        ('{"architecture": "a", "pretrained_cfg": "x"}', "'pretrained_cfg' must be an object"),
    ],
)
def test_a_malformed_config_is_named(tmp_path, text, message):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=f"{folder / 'config.json'}: .*{message}"):
        ModelSource(folder=folder).read_config()


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A .safetensors file by its documented layout (numpy cannot write bfloat16)."""
    header, offset, body = {}, 0, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        body += data
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def test_non_finite_tensors_are_found_in_every_float_dtype(tmp_path):
    bf16 = lambda values: (np.array(values, np.float32).view(np.uint32) >> 16).astype("<u2")  # noqa: E731
    path = tmp_path / "model.safetensors"
    path.write_bytes(
        safetensors_bytes(
            {
                "ok32": ("F32", [2], np.array([1, 2], "<f4").tobytes()),
                "nan16": ("F16", [2], np.array([1, np.nan], "<f2").tobytes()),
                "inf_bf16": ("BF16", [2], bf16([np.inf, 1.5]).tobytes()),
                "ok_bf16": ("BF16", [2], bf16([-3.0, 1.5]).tobytes()),
                "nan64": ("F64", [1], np.array([np.nan], "<f8").tobytes()),
                "ints": ("I64", [1], np.array([7], "<i8").tobytes()),
            }
        )
    )
    assert nonfinite_tensors(path) == ["nan16", "inf_bf16", "nan64"]


def test_a_damaged_weights_file_is_named(tmp_path):
    import safetensors.numpy

    path = tmp_path / "head.safetensors"
    safetensors.numpy.save_file({"0.weight": np.ones((4, 4), np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(WeightsFileError, match=f"{path}: cannot read the weights.*cut short"):
        read_safetensors(path, safetensors.numpy.load_file)


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
