"""zoobot.tf loads legacy `pytorch_model.bin` encoders through `zoobot.models.legacy`, from folders and
the offline Hub cache, and refuses malicious ones naming what to convert."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoobot.models.legacy import UnsafeCheckpointError
from zoobot.tf.encoders import load_encoder

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
LEGACY = Path(__file__).parents[1] / "models" / "fixtures" / "legacy"
CONVNEXT = FIXTURES / "test_convnext"
CONVNEXT_LEGACY = FIXTURES / "test_convnext_legacy"


def features(encoder) -> np.ndarray:
    x = np.random.default_rng(5).standard_normal((2, 40, 36, 3), np.float32)
    return np.asarray(encoder(x, training=False))


def test_legacy_folder_loads_with_the_safetensors_features(caplog):
    with caplog.at_level(logging.WARNING, logger="zoobot.tf.encoders"):
        encoder = load_encoder(CONVNEXT_LEGACY)
    assert "pytorch_model.bin" in caplog.text and "Prefer safetensors" in caplog.text
    assert np.array_equal(features(encoder), features(load_encoder(CONVNEXT)))


def test_safetensors_wins_over_the_pickle(tmp_path, caplog):
    folder = Path(shutil.copytree(CONVNEXT_LEGACY, tmp_path / "both"))
    shutil.copy(CONVNEXT / "model.safetensors", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with caplog.at_level(logging.WARNING, logger="zoobot.tf.encoders"):
        encoder = load_encoder(folder)
    assert "legacy" not in caplog.text
    assert np.array_equal(features(encoder), features(load_encoder(CONVNEXT)))


def test_hub_repo_with_only_a_pickle_loads_through_the_offline_cache(offline_hub, caplog):
    offline_hub.fill("mwalmsley/zoobot-encoder-legacy", CONVNEXT_LEGACY)
    with caplog.at_level(logging.WARNING, logger="zoobot.tf.encoders"):
        encoder = load_encoder("hf_hub:mwalmsley/zoobot-encoder-legacy")
    assert "hf_hub:mwalmsley/zoobot-encoder-legacy: no model.safetensors" in caplog.text
    assert np.array_equal(features(encoder), features(load_encoder(CONVNEXT)))


def test_malicious_hub_pickle_names_the_repo_to_convert(tmp_path, offline_hub, monkeypatch):
    folder = tmp_path / "repo"
    folder.mkdir()
    shutil.copy(CONVNEXT_LEGACY / "config.json", folder)
    shutil.copy(LEGACY / "malicious_eval.bin", folder / "pytorch_model.bin")
    offline_hub.fill("someone/evil", folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="load_encoder\\('hf_hub:someone/evil'\\)"):
        load_encoder("hf_hub:someone/evil")
    assert not (tmp_path / "PWNED_eval").exists()
