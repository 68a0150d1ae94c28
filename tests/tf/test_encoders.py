"""zoobot.tf.load_encoder: timm Hub-layout folders made by timm, the offline Hub cache, saving back.

The fixtures (tests/tf/fixtures/timm, regenerated with torch by make_timm_fixtures.py) are folders
timm wrote, with the features timm gave: with the checkpoint's channels (`native`) and after timm
adapted the first conv to the other channel count (`adapted`).

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import functools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from zoobot.tf import architectures
from zoobot.tf.encoders import (
    HubUnavailableError,
    LegacyWeightsError,
    WeightsMismatchError,
    encoder_dim,
    load_encoder,
)
from zoobot.tf.pretrained import save_pretrained

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
CASES = ("test_convnext", "convnext_nano_grey", "test_resnet", "resnet50_grey")


@functools.cache
def fixture_encoder(case: str, channels: int | None = None):
    """`load_encoder` of a fixture folder, shared by the tests that only read it."""
    return load_encoder(FIXTURES / case, channels=channels)


def copy_case(case: str, destination: Path) -> Path:
    """A writable copy of a fixture folder."""
    return Path(shutil.copytree(FIXTURES / case, destination))


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def features(encoder, channels: int = 3, size: int = 40) -> np.ndarray:
    x = np.random.default_rng(123).standard_normal((2, size, size, channels), np.float32)
    return np.asarray(encoder(x, training=False))


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Max difference relative to the features' scale."""
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("key", ["native", "adapted"])
def test_timm_folder_gives_timms_features(case, key):
    expected = np.load(FIXTURES / f"{case}.npz")
    x = expected[f"x_{key}"].astype(np.float32).transpose(0, 2, 3, 1)
    encoder = fixture_encoder(case, x.shape[-1])
    got = np.asarray(encoder(x, training=False))
    assert encoder.input_shape[-1] == x.shape[-1]
    assert encoder_dim(encoder) == got.shape[1] == expected[f"features_{key}"].shape[1]
    assert relative_error(got, expected[f"features_{key}"]) < 1e-4


def test_channels_default_to_the_checkpoints():
    grey = fixture_encoder("convnext_nano_grey")
    assert grey.input_shape == (None, None, None, 1)
    assert fixture_encoder("test_resnet").input_shape == (None, None, None, 3)


def test_hand_written_config_reads_channels_off_the_first_conv(tmp_path):
    folder = copy_case("convnext_nano_grey", tmp_path / "minimal")
    config = json.loads((folder / "config.json").read_text())
    model_args = {k: config["model_args"][k] for k in ("dims", "depths")}
    (folder / "config.json").write_text(
        json.dumps({"architecture": "convnext_nano", "model_args": model_args})
    )
    grey = load_encoder(folder)
    assert grey.input_shape[-1] == 1
    assert np.array_equal(features(grey, 1), features(fixture_encoder("convnext_nano_grey"), 1))
    rgb = load_encoder(folder, channels=3)
    expected = features(fixture_encoder("convnext_nano_grey", 3))
    assert np.array_equal(features(rgb), expected)


def test_every_spelling_of_a_folder(tmp_path, monkeypatch):
    folder = FIXTURES / "test_resnet"
    reference = features(fixture_encoder("test_resnet"))
    for name in (str(folder), f"local-dir:{folder}"):
        assert np.array_equal(features(load_encoder(name)), reference)
    shutil.copytree(folder, tmp_path / "my-encoder")
    monkeypatch.chdir(tmp_path)
    assert np.array_equal(features(load_encoder("my-encoder")), reference)


def test_adapted_first_conv_is_timms_arithmetic(caplog):
    state = safetensors.numpy.load_file(FIXTURES / "test_convnext" / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="zoobot.tf.encoders"):
        grey = load_encoder(FIXTURES / "test_convnext", channels=1)  # not cached: logs
    assert "adapted first conv 'stem.0' from 3 to 1 input channels" in caplog.text
    weight = architectures.timm_state(grey)["stem.0.weight"]
    assert np.array_equal(weight, state["stem.0.weight"].sum(axis=1, keepdims=True))
    rgb = architectures.timm_state(fixture_encoder("resnet50_grey", 3))
    grey_state = safetensors.numpy.load_file(FIXTURES / "resnet50_grey" / "model.safetensors")
    assert np.array_equal(
        rgb["conv1.weight"], np.tile(grey_state["conv1.weight"], (1, 3, 1, 1)) * np.float32(1 / 3)
    )


@pytest.mark.parametrize("case", ["test_convnext", "resnet50_grey"])
def test_save_and_reload_is_exact(tmp_path, case):
    encoder = fixture_encoder(case)
    saved = save_pretrained(encoder, tmp_path / "saved")
    original = safetensors.numpy.load_file(FIXTURES / case / "model.safetensors")
    written = safetensors.numpy.load_file(saved / "model.safetensors")
    assert sorted(written) == sorted(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and np.array_equal(written[key], value), key
    config = json.loads((saved / "config.json").read_text())
    timm_config = json.loads((FIXTURES / case / "config.json").read_text())
    for key in ("architecture", "num_classes", "num_features", "global_pool", "model_args"):
        assert config[key] == timm_config[key], key
    assert config["pretrained_cfg"] == timm_config["pretrained_cfg"]
    channels = encoder.input_shape[-1]
    assert np.array_equal(features(load_encoder(saved), channels), features(encoder, channels))


def test_saving_an_adapted_encoder_records_its_channels(tmp_path):
    grey = fixture_encoder("test_resnet", 1)
    saved = save_pretrained(grey, tmp_path / "grey")
    config = json.loads((saved / "config.json").read_text())
    assert config["model_args"]["in_chans"] == 1
    assert config["pretrained_cfg"]["input_size"][0] == 1
    assert config["pretrained_cfg"]["mean"] == [0.5]
    reloaded = load_encoder(saved)
    assert reloaded.input_shape[-1] == 1
    assert np.array_equal(features(reloaded, 1), features(grey, 1))


def test_architecture_name_saves_and_reloads(tmp_path):
    encoder = load_encoder("resnet10t", channels=1, drop_path_rate=0.1)
    assert any(".drop_path" in layer.name for layer in encoder.layers)
    saved = save_pretrained(encoder, tmp_path / "model")
    config = json.loads((saved / "config.json").read_text())
    assert config["architecture"] == "resnet10t"
    assert config["zoobot"]["task"] == "encoder"
    assert config["model_args"] == {"num_classes": 0, "in_chans": 1, "global_pool": "avg"}
    assert config["pretrained_cfg"]["first_conv"] == "conv1.0"
    assert config["pretrained_cfg"]["classifier"] == "fc"
    assert np.array_equal(features(load_encoder(saved), 1), features(encoder, 1))


def test_write_replaces_a_model_but_not_other_folders(tmp_path):
    encoder = fixture_encoder("test_resnet")
    target = save_pretrained(fixture_encoder("convnext_nano_grey"), tmp_path / "m")
    save_pretrained(encoder, target)
    assert json.loads((target / "config.json").read_text())["architecture"] == "test_resnet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(
        FileExistsError, match=r"holds files a saved model does not \(todo.txt\); refusing"
    ):
        save_pretrained(encoder, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_pretrained_false_builds_the_architecture_only():
    random_init = load_encoder(FIXTURES / "test_resnet", pretrained=False)
    loaded = fixture_encoder("test_resnet")
    assert [w.shape for w in random_init.weights] == [w.shape for w in loaded.weights]
    assert not np.array_equal(features(random_init), features(loaded))


def test_checkpoint_with_a_classifier_gives_pooled_features(tmp_path):
    folder = copy_case("test_convnext", tmp_path / "classifier")
    state = safetensors.numpy.load_file(folder / "model.safetensors")
    state["head.fc.weight"] = np.ones((5, 32), np.float32)
    state["head.fc.bias"] = np.ones(5, np.float32)
    safetensors.numpy.save_file(state, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    edit_config(folder, num_classes=5, model_args={**config["model_args"], "num_classes": 5})
    expected = features(fixture_encoder("test_convnext"))
    assert np.array_equal(features(load_encoder(folder)), expected)


def test_mismatched_shape_names_the_tensor_and_both_shapes(tmp_path):
    folder = copy_case("test_convnext", tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    edit_config(folder, model_args={**config["model_args"], "dims": [8, 16, 24, 40]})
    with pytest.raises(WeightsMismatchError) as err:
        load_encoder(folder)
    assert (
        "stages.3.downsample.1.weight: (32, 24, 2, 2) in the checkpoint, (40, 24, 2, 2) in the model"
        in str(err.value)
    )


def test_other_architecture_names_missing_and_unexpected_tensors(tmp_path):
    folder = copy_case("test_convnext", tmp_path / "model")
    edit_config(folder, architecture="test_resnet", model_args=None, pretrained_cfg=None)
    with pytest.raises(WeightsMismatchError) as err:
        load_encoder(folder)
    message = str(err.value)
    assert "missing from the checkpoint: conv1.0.weight" in message
    assert "unexpected in the checkpoint: head.norm.bias" in message


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    with pytest.raises(ValueError, match=r"Similar names: convnext_atto.*Supported .*resnet50"):
        load_encoder("convnext_att")
    folder = copy_case("test_convnext", tmp_path / "model")
    edit_config(folder, architecture="coatnet_0_rw_224")
    with pytest.raises(ValueError, match="coatnet_0_rw_224.*supported: .*convnext_nano"):
        load_encoder(folder)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf_hub:someone/missing"):
        load_encoder("someone/missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_encoder(tmp_path / "empty")
    folder = copy_case("test_resnet", tmp_path / "no-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_encoder(folder)


def test_legacy_bin_is_read_without_torch(tmp_path, caplog):
    """A timm folder with only `pytorch_model.bin` (see tests/models/test_legacy.py for the reader)."""
    with caplog.at_level(logging.WARNING, logger="zoobot.tf.encoders"):
        encoder = load_encoder(FIXTURES / "test_convnext_legacy")
    assert "reading the legacy PyTorch pickle pytorch_model.bin" in caplog.text
    assert np.array_equal(features(encoder), features(fixture_encoder("test_convnext")))
    folder = copy_case("test_resnet", tmp_path / "not-a-pickle")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(LegacyWeightsError, match="pytorch_model.bin is not a PyTorch checkpoint"):
        load_encoder(folder)


def test_hub_revisions_through_the_offline_cache(tmp_path, offline_hub):
    first = offline_hub.fill("owner/repo", FIXTURES / "test_resnet")
    offline_hub.fill("owner/repo", FIXTURES / "resnet50_grey")
    offline_hub.fill("owner/repo", FIXTURES / "test_convnext", ref="v3")
    resnet = features(fixture_encoder("test_resnet"))
    assert np.array_equal(features(load_encoder(f"hf_hub:owner/repo@{first}")), resnet)
    assert load_encoder("hf_hub:owner/repo").zoobot_architecture == "resnet50"
    assert load_encoder("hf-hub:owner/repo").input_shape[-1] == 1
    convnext = load_encoder("hf_hub:owner/repo@v3")
    assert np.array_equal(features(convnext), features(fixture_encoder("test_convnext")))


def test_hub_legacy_bin_through_the_offline_cache(offline_hub):
    offline_hub.fill("mwalmsley/zoobot-encoder-test", FIXTURES / "test_convnext_legacy")
    encoder = load_encoder("hf_hub:mwalmsley/zoobot-encoder-test")
    assert np.array_equal(features(encoder), features(fixture_encoder("test_convnext")))


def test_offline_and_not_cached_says_how_to_fix_it(offline_hub):
    with pytest.raises(HubUnavailableError) as err:
        load_encoder("hf_hub:owner/not-cached@v2")
    message = str(err.value)
    assert "hf_hub:owner/not-cached@v2" in message
    assert "hf download owner/not-cached --revision v2" in message
    assert "folder" in message


def test_malformed_hub_name():
    with pytest.raises(ValueError, match="owner/repo"):
        load_encoder("hf_hub:just-a-name")


def test_architecture_names():
    encoder = load_encoder("convnext_atto")
    assert encoder_dim(encoder) == 320 and encoder.input_shape[-1] == 3
    resnet = load_encoder("torchvision:resnet18", channels=1)
    assert resnet.zoobot_architecture == "resnet18" and resnet.input_shape[-1] == 1
    with pytest.raises(ValueError, match="resnet50"):
        load_encoder("torchvision:vit_b_16")
