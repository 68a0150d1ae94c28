"""Every published Zoobot encoder loads by its Hub name through the Hugging Face cache, offline, and
gives timm's features: each catalogue entry's repo rebuilt (`published.py`) with the files it holds
on the Hub (`pytorch_model.bin`; the Euclid one also `model.safetensors`) and its config.json as
the published repos hold it (stale ImageNet `pretrained_cfg`, no `in_chans`), at a test size, and
the small ones (`FULL_SIZE` of the fixture script) at full size too, also with safetensors only.

Tolerance: 1e-4 of the features' scale (max |a - b| / max |timm|). The fixture script refuses a
case whose float32 features differ from float64 by over 1e-5, so what remains is each framework's
float32 summation order (~1e-6 here); a wrong tensor mapping moves features by O(1).
"""

import numpy as np
import published
import pytest

from zoobot.models.catalogue import published_encoder

CASES = published.cases()
FEATURES = np.load(published.FEATURES_FILE)
TOLERANCE = 1e-4
SAFETENSORS_ONLY = ("config.json", "model.safetensors")


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def layouts() -> list:
    """(case, files of the repo): as published, and safetensors only for the full-size cases."""
    params = []
    for case_id, case in CASES.items():
        params.append(pytest.param(case_id, published_encoder(case["entry"]).files, id=case_id))
        if case["full_size"]:
            params.append(pytest.param(case_id, SAFETENSORS_ONLY, id=f"{case_id}-safetensors"))
    return params


def cached_repo(tmp_path, cache, case_id: str, files: tuple[str, ...]):
    """The case's repo laid out in the offline Hugging Face cache under its published name."""
    case = CASES[case_id]
    entry = published_encoder(case["entry"])
    folder = published.write_repo(tmp_path / "repo", case, files)
    cache.fill(entry.repo_id, folder)
    return entry, published.images(entry.channels, case["height"], case["width"], case["seed"])


@pytest.mark.parametrize(("case_id", "files"), layouts())
def test_published_name_gives_timms_features_from_the_offline_cache(
    fw, tmp_path, offline, case_id, files
):
    entry, x = cached_repo(tmp_path, offline, case_id, files)
    encoder = fw.package.load_encoder(entry.hub_name)
    assert fw.backend.encoder_dim(encoder) == FEATURES[case_id].shape[1]
    assert relative_error(fw.features(encoder, x), FEATURES[case_id]) < TOLERANCE


@pytest.mark.parametrize(
    "case_id", ["zoobot-encoder-greyscale-convnext_nano-small", "zoobot-encoder-resnet50-small"]
)
def test_every_spelling_of_a_published_name_loads_the_same_encoder(fw, tmp_path, offline, case_id):
    entry, x = cached_repo(tmp_path, offline, case_id, published_encoder(case_id[:-6]).files)
    expected = fw.features(fw.package.load_encoder(entry.hub_name), x)
    # the same weights through the same kernels on the same batch: equal bit for bit
    for name in (entry.name, f"hf-hub:{entry.repo_id}", f"{entry.name}@main"):
        np.testing.assert_array_equal(fw.features(fw.package.load_encoder(name), x), expected)
    np.testing.assert_array_equal(fw.features(fw.package.from_pretrained(entry.name), x), expected)
    model = fw.package.FinetuneableZoobotClassifier(2, name=entry.name, channels=entry.channels)
    np.testing.assert_array_equal(fw.features(model.encoder, x), expected)
