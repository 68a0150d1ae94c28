"""Fixtures of the contract tests (`contract.py`): the framework under test and a small survey."""

from __future__ import annotations

import sys
from pathlib import Path

import huggingface_hub
import pandas as pd
import pytest

# tests/contract holds the helper module `contract` (pytest's importlib mode puts nothing on path).
sys.path.insert(0, str(Path(__file__).parent))

import contract  # noqa: E402

contract.select()  # Keras's backend, before any test module imports Keras

from zoobot.data.synthetic import make_survey  # noqa: E402


@pytest.fixture(scope="session")
def fw() -> contract.Framework:
    return contract.framework()


@pytest.fixture(scope="session")
def survey(tmp_path_factory) -> pd.DataFrame:
    """40 synthetic DECaLS DR5 galaxies, 48 px JPEGs, with vote counts."""
    out = tmp_path_factory.mktemp("survey")
    return make_survey(40, out, schema=contract.SCHEMA, image_size=48, seed=7, progress=False)


@pytest.fixture
def offline(offline_hub, monkeypatch):
    """The offline Hugging Face cache (`offline_hub`), where HfApi must not even be constructed."""
    monkeypatch.setattr(huggingface_hub, "HfApi", contract.no_network)
    return offline_hub
