"""The catalogue of published encoders against timm: each entry's architecture and `model_args` build,
with the parameter count and feature width the catalogue states, and a state dict whose size fits
the weights file the Hub shows (which is how the MaxViT-Base repo's architecture was inferred)."""

import pytest
import timm
import torch

from zoobot.models.catalogue import published_encoder, published_encoders

# The Hub shows sizes to 3 significant figures (<= 0.5% rounding); a torch pickle adds ~150 bytes
# per tensor (<= 0.7% for efficientnet_b0's 360 small tensors).
SIZE_TOLERANCE = 0.01


def meta_encoder(architecture: str, model_args: dict, channels: int) -> torch.nn.Module:
    """The pooled-feature encoder with no memory behind its tensors (shapes only)."""
    with torch.device("meta"):
        return timm.create_model(architecture, num_classes=0, in_chans=channels, **model_args)


def state_megabytes(model: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


@pytest.mark.parametrize("entry", published_encoders(), ids=lambda e: e.name)
def test_entry_builds_with_the_stated_size(entry):
    model = meta_encoder(entry.architecture, entry.model_args, entry.channels)
    assert sum(p.numel() for p in model.parameters()) == entry.params
    assert model.num_features == entry.num_features
    if entry.weights_mb is not None:
        assert state_megabytes(model) == pytest.approx(entry.weights_mb, rel=SIZE_TOLERANCE)


def test_maxvit_base_weights_fit_the_rmlp_architecture_only():
    entry = published_encoder("zoobot-encoder-maxvit_base_rw_224")
    other = meta_encoder("maxvit_base_tf_224", {}, 3)  # timm's other MaxViT-Base
    assert state_megabytes(other) != pytest.approx(entry.weights_mb, rel=SIZE_TOLERANCE)
