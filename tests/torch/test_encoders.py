"""load_encoder: timm names, torchvision, and the timm Hub layout from folders and an offline Hub cache.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import json
import logging
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from zoobot.torch.encoders import (
    HubUnavailableError,
    WeightsMismatchError,
    encoder_dim,
    load_encoder,
)

UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)


class Payload:
    """Unpickling this runs code: what a weights file must never be allowed to do."""

    def __reduce__(self):
        return (_record_unpickling, ())


def timm_folder(
    path: Path, architecture: str = "test_convnext", seed: int = 0, safe: bool = True
) -> Path:
    """A Hub-layout folder written by timm itself (safetensors, or the legacy .bin)."""
    torch.manual_seed(seed)
    model = timm.create_model(architecture, num_classes=0)
    timm.models.save_for_hf(model, path, safe_serialization=safe)
    return path


def published_folder(path: Path, in_chans: int = 3, stated_chans: int = 3, seed: int = 0) -> Path:
    """A folder laid out like the published mwalmsley/zoobot-encoder-* repos (timm 0.9 export).

    Their config.json has top-level `num_classes: 0` but a stale ImageNet `pretrained_cfg` (its own
    `num_classes: 1000`, RGB `input_size`), no `model_args`, and the weights only as a legacy
    `pytorch_model.bin` of plain tensors.
    """
    torch.manual_seed(seed)
    model = timm.create_model("test_convnext", num_classes=0, in_chans=in_chans)
    path.mkdir(parents=True)
    torch.save(OrderedDict(model.state_dict()), path / "pytorch_model.bin")
    config = {
        "architecture": "test_convnext",
        "num_classes": 0,
        "num_features": model.num_features,
        "pretrained_cfg": {
            "tag": "r160_in1k",
            "custom_load": False,
            "input_size": [stated_chans, 160, 160],
            "fixed_input_size": False,
            "interpolation": "bicubic",
            "crop_pct": 0.95,
            "crop_mode": "center",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": 1000,
            "pool_size": [5, 5],
            "first_conv": "stem.0",
            "classifier": "head.fc",
        },
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def features(encoder, channels=3, size=32):
    torch.manual_seed(123)
    with torch.no_grad():
        return encoder.eval()(torch.randn(2, channels, size, size))


def test_timm_name_gives_random_init_feature_extractor():
    encoder = load_encoder("convnext_atto", drop_path_rate=0.1)
    assert encoder.num_features == encoder_dim(encoder) == 320
    assert features(encoder).shape == (2, 320)
    assert encoder.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


def test_timm_name_with_channels():
    encoder = load_encoder("resnet18", channels=1)
    assert encoder.conv1.in_channels == 1
    assert features(encoder, channels=1).shape == (2, 512)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="convnext_atto"):
        load_encoder("convnext_att")


def test_missing_folder_says_how_to_name_a_hub_repo():
    with pytest.raises(FileNotFoundError, match="hf_hub:someone/missing"):
        load_encoder("someone/missing")


def test_encoder_dim_is_the_pooled_width_even_with_a_hidden_head():
    encoder = load_encoder("mobilenetv3_small_050")
    assert encoder_dim(encoder) == features(encoder).shape[1] != encoder.num_features


def test_torchvision_resnet50():
    encoder = load_encoder("torchvision:resnet50")
    assert isinstance(encoder, torchvision.models.ResNet)
    assert isinstance(encoder.fc, torch.nn.Identity)
    assert encoder.num_features == encoder_dim(encoder) == 2048
    assert features(encoder).shape == (2, 2048)
    assert features(load_encoder("torchvision:resnet50", channels=1), channels=1).shape == (2, 2048)


def test_torchvision_refuses_other_models():
    with pytest.raises(ValueError, match="resnet50"):
        load_encoder("torchvision:vit_b_16")


@pytest.mark.parametrize(
    ("architecture", "size"),
    [("test_convnext", 32), ("test_efficientnet", 32), ("resnet18", 32), ("test_maxvit", 160)],
)
def test_folder_written_by_timm_gives_the_same_features(tmp_path, architecture, size):
    folder = timm_folder(tmp_path / "model", architecture)
    original = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    for name in (folder, str(folder), f"local-dir:{folder}"):
        encoder = load_encoder(name)
        assert type(encoder) is type(original)
        assert torch.equal(features(encoder, size=size), features(original, size=size))


def test_model_args_img_size_wins_over_a_stale_input_size(tmp_path):
    """A fixed-size encoder (MaxViT) saved by an older timm: `model_args.img_size` says the size
    it was built for, `pretrained_cfg.input_size` still the architecture's default."""
    torch.manual_seed(0)
    original = timm.create_model("test_maxvit", num_classes=0, img_size=64)
    folder = tmp_path / "model"
    timm.models.save_for_hf(original, folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = {"img_size": 64}
    config["pretrained_cfg"]["input_size"] = [3, 160, 160]
    (folder / "config.json").write_text(json.dumps(config))
    encoder = load_encoder(folder)
    assert encoder.img_size == (64, 64)
    assert encoder.pretrained_cfg["input_size"] == (3, 64, 64)
    assert torch.equal(features(encoder, size=64), features(original, size=64))
    del config["model_args"]  # without it, timm builds the stated input size, and so do we
    (folder / "config.json").write_text(json.dumps(config))
    assert load_encoder(folder, pretrained=False).img_size == (160, 160)


def test_bare_folder_name_in_the_working_directory(tmp_path, monkeypatch):
    timm_folder(tmp_path / "my-encoder")
    monkeypatch.chdir(tmp_path)
    assert features(load_encoder("my-encoder")).shape == (2, 64)


def test_pretrained_false_builds_the_architecture_only(tmp_path):
    folder = timm_folder(tmp_path / "model")
    random_init = load_encoder(folder, pretrained=False)
    loaded = load_encoder(folder)
    assert type(random_init) is type(loaded)
    assert not torch.equal(features(random_init), features(loaded))


def test_legacy_bin_is_read_with_weights_only(tmp_path, monkeypatch):
    folder = timm_folder(tmp_path / "model", safe=False)
    assert not (folder / "model.safetensors").exists()
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    encoder = load_encoder(folder)
    assert calls == [True]
    original = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    assert torch.equal(features(encoder), features(original))


def test_bin_with_a_pickled_object_is_refused(tmp_path):
    folder = timm_folder(tmp_path / "model", safe=False)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_encoder(folder)
    assert UNPICKLED == []


def test_mismatched_shape_names_the_tensor_and_both_shapes(tmp_path):
    folder = timm_folder(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["dims"] = [24, 32, 48, 80]  # test_convnext has (24, 32, 48, 64)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError) as err:
        load_encoder(folder)
    message = str(err.value)
    assert (
        "stages.3.downsample.1.weight: (64, 48, 2, 2) in the checkpoint, (80, 48, 2, 2)" in message
    )


def test_other_architecture_names_missing_and_unexpected_tensors(tmp_path):
    folder = timm_folder(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "test_resnet"
    del config["model_args"], config["pretrained_cfg"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        WeightsMismatchError, match=r"missing from the checkpoint: .*conv1\.0\.weight"
    ):
        load_encoder(folder)
    with pytest.raises(
        WeightsMismatchError, match=r"99 unexpected in the checkpoint: head\.norm\.bias"
    ):
        load_encoder(folder)


def test_checkpoint_with_a_classifier_gives_pooled_features(tmp_path):
    torch.manual_seed(0)
    classifier = timm.create_model("test_convnext", num_classes=5)
    timm.models.save_for_hf(classifier, tmp_path / "model", safe_serialization=True)
    encoder = load_encoder(tmp_path / "model")
    assert encoder.num_classes == 0
    torch.manual_seed(123)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = classifier.eval().forward_head(classifier.forward_features(x), pre_logits=True)
    assert torch.equal(features(encoder), expected)


def test_rgb_checkpoint_adapted_to_one_channel_like_timm(tmp_path, caplog):
    folder = timm_folder(tmp_path / "model")
    rgb = load_encoder(folder)
    with caplog.at_level(logging.WARNING, logger="zoobot.torch.encoders"):
        grey = load_encoder(folder, channels=1)
    assert "adapted first conv 'stem.0' from 3 to 1 input channels" in caplog.text
    assert torch.equal(grey.stem[0].weight, rgb.stem[0].weight.sum(dim=1, keepdim=True))
    timm_grey = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0, in_chans=1)
    assert torch.equal(features(grey, channels=1), features(timm_grey, channels=1))


@pytest.mark.parametrize("stated_chans", [1, 3])
def test_greyscale_published_layout_loads_with_one_channel(tmp_path, stated_chans):
    folder = published_folder(tmp_path / "grey", in_chans=1, stated_chans=stated_chans)
    encoder = load_encoder(folder)
    assert encoder.stem[0].in_channels == 1
    # how zoobot 2.x users load the greyscale encoders with timm
    reference = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0, in_chans=1)
    assert torch.equal(features(encoder, channels=1), features(reference, channels=1))


def test_greyscale_checkpoint_adapted_to_three_channels(tmp_path, caplog):
    folder = published_folder(tmp_path / "grey", in_chans=1)
    with caplog.at_level(logging.WARNING, logger="zoobot.torch.encoders"):
        encoder = load_encoder(folder, channels=3)
    assert "from 1 to 3 input channels" in caplog.text
    grey = load_encoder(folder)
    assert torch.allclose(encoder.stem[0].weight, grey.stem[0].weight.repeat(1, 3, 1, 1) / 3)


def test_published_layout_through_the_offline_hub_cache(tmp_path, offline_hub):
    folder = published_folder(tmp_path / "published")
    offline_hub.fill("mwalmsley/zoobot-encoder-test", folder)
    encoder = load_encoder("hf_hub:mwalmsley/zoobot-encoder-test")
    # exactly how zoobot 2.x loads the published encoders
    reference = timm.create_model(
        "hf_hub:mwalmsley/zoobot-encoder-test", pretrained=True, num_classes=0
    )
    assert torch.equal(features(encoder), features(reference))


def test_hub_revisions_through_the_offline_cache(tmp_path, offline_hub):
    first = offline_hub.fill("owner/repo", timm_folder(tmp_path / "a", seed=1))
    offline_hub.fill("owner/repo", timm_folder(tmp_path / "b", seed=2))
    offline_hub.fill("owner/repo", timm_folder(tmp_path / "c", seed=3), ref="v3")
    expected = {
        seed: features(load_encoder(tmp_path / name))
        for seed, name in ((1, "a"), (2, "b"), (3, "c"))
    }
    assert torch.equal(features(load_encoder("hf_hub:owner/repo")), expected[2])
    assert torch.equal(features(load_encoder(f"hf_hub:owner/repo@{first}")), expected[1])
    assert torch.equal(features(load_encoder("hf_hub:owner/repo@v3")), expected[3])
    assert torch.equal(features(load_encoder("hf-hub:owner/repo")), expected[2])


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
