"""The stand-in published repos of the contract tests (tests/contract/published.py) as timm reads
them: timm's own Hub loader, through the same offline cache, gives zoobot.torch's features and the
fixture's, and the torch-free `pytorch_model.bin` writer writes what `torch.load` reads back.

Exact (bit-equal) comparisons here run the same timm modules with the same weights on the same
inputs in one process: the same kernels, hence the same numbers, on any CPU.
"""

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import zoobot.torch
from zoobot.models.catalogue import published_encoder

# the contract tests' helpers (pytest's importlib mode puts nothing on the path)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))

import published  # noqa: E402

TOLERANCE = 1e-4  # as the contract tests: float32 summation order, see test_published_encoders.py
CASES = published.cases()
FEATURES = np.load(published.FEATURES_FILE)


def features(encoder, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_timm_reads_the_stand_in_repo_as_zoobot_does(tmp_path, offline_hub, case_id):
    case = CASES[case_id]
    entry = published_encoder(case["entry"])
    folder = published.write_repo(tmp_path / "repo", case, entry.files)
    offline_hub.fill(entry.repo_id, folder)
    x = published.images(entry.channels, case["height"], case["width"], case["seed"])
    # how zoobot 2.x users load them (greyscale ones with in_chans=1)
    reference = timm.create_model(
        entry.hub_name, pretrained=True, num_classes=0, in_chans=entry.channels
    )
    expected = features(reference, x)
    np.testing.assert_array_equal(features(zoobot.torch.load_encoder(entry.hub_name), x), expected)
    error = np.abs(expected - FEATURES[case_id]).max() / np.abs(FEATURES[case_id]).max()
    assert error < TOLERANCE, "the fixture no longer matches timm: rerun make_published_fixtures.py"


def test_the_legacy_writer_writes_what_torch_load_reads(tmp_path):
    state = OrderedDict(
        weight=np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
        scalar=np.zeros((), np.int64),
        empty=np.zeros((0, 3), np.float32),
        counts=np.array([-(2**40), 7], np.int64),
    )
    path = published.save_torch_zip(state, tmp_path / "pytorch_model.bin")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert type(loaded) is OrderedDict and list(loaded) == list(state)
    for key, array in state.items():
        assert loaded[key].dtype == torch.from_numpy(array).dtype, key
        assert loaded[key].shape == array.shape, key
        np.testing.assert_array_equal(loaded[key].numpy(), array)
