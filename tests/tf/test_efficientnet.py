"""zoobot.tf.architectures.efficientnet against timm's numbers, without torch.

The fixtures (tests/tf/fixtures/make_timm_fixtures.py, `efficientnet` and `efficientnetv2`) hold
timm's weights and the features timm gave for fixed inputs: `test_efficientnet` as the Hub folder
timm writes, `efficientnet_b0_mini`, EfficientNet-B0's own structure from timm's
`_gen_efficientnet` at a test size, and `tf_efficientnetv2_s_small`, the published EfficientNetV2-S
at a tenth of its width. Full-size architectures are compared live against timm in the parity
session.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

from zoobot.tf import architectures
from zoobot.tf.architectures import efficientnet
from zoobot.tf.weights import WeightsMismatchError, load_timm_state, timm_state

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
TOLERANCE = 1e-4  # max |keras - timm| relative to the largest |timm feature|


def test_no_torch():
    assert "torch" not in sys.modules


def _adapt_first_conv(weight: np.ndarray, target: int) -> np.ndarray:
    """timm.models.adapt_input_conv's arithmetic: sum RGB for 1 channel, repeat and rescale for 3."""
    source = weight.shape[1]
    if target == source:
        return weight
    if target == 1:
        return weight.sum(axis=1, keepdims=True)
    repeats = -(-target // source)
    return np.tile(weight, (1, repeats, 1, 1))[:, :target] * (source / target)


def _features(model: keras.Model, x_nchw: np.ndarray) -> np.ndarray:
    x = np.transpose(x_nchw.astype(np.float32), (0, 2, 3, 1))
    return keras.ops.convert_to_numpy(model(x, training=False))


def _assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0.1  # the fixture features are not degenerate
    relative = np.abs(actual - expected).max() / scale
    assert relative < TOLERANCE, f"max difference {relative:.2e} of the features' scale"


def _load_case(case: str):
    """(build(channels), state, native channels, npz) for a fixture case."""
    folder = FIXTURES / case
    state = load_file(folder / "model.safetensors")
    if (folder / "config.json").exists():  # a Hub folder written by timm
        config = json.loads((folder / "config.json").read_text())
        native = int(config["model_args"]["in_chans"])
        arrays = np.load(FIXTURES / f"{case}.npz")

        def build(channels):
            return efficientnet.build(config["architecture"], channels, config["model_args"])

    else:  # generated: no timm architecture name describes it
        spec = json.loads((folder / "generator.json").read_text())
        native = int(spec["in_chans"])
        arrays = np.load(folder / "features.npz")

        def build(channels):
            return efficientnet.build_generated(
                channels, spec["channel_multiplier"], spec["depth_multiplier"], name=case
            )

    return build, state, native, arrays


CASES = ["test_efficientnet", "efficientnet_b0_mini", "tf_efficientnetv2_s_small"]


@pytest.mark.parametrize("case", CASES)
def test_features_match_timm(case):
    build, state, native, arrays = _load_case(case)
    model = build(native)
    load_timm_state(model, state, "encoder")
    _assert_close(_features(model, arrays["x_native"]), arrays["features_native"])
    assert model.num_features == arrays["features_native"].shape[1]


@pytest.mark.parametrize("case", CASES)
def test_features_match_timm_with_adapted_channels(case):
    build, state, native, arrays = _load_case(case)
    channels = int(arrays["adapted_channels"])
    assert channels != native
    model = build(channels)
    state = dict(state)
    state["conv_stem.weight"] = _adapt_first_conv(state["conv_stem.weight"], channels)
    load_timm_state(model, state, "encoder")
    _assert_close(_features(model, arrays["x_adapted"]), arrays["features_adapted"])


@pytest.mark.parametrize("case", ["test_efficientnet", "tf_efficientnetv2_s_small"])
def test_hub_folder_loads_through_load_encoder(case):
    from zoobot.tf import encoders

    arrays = np.load(FIXTURES / f"{case}.npz")
    folder = FIXTURES / case
    native = encoders.load_encoder(str(folder))
    _assert_close(_features(native, arrays["x_native"]), arrays["features_native"])
    adapted = encoders.load_encoder(str(folder), channels=int(arrays["adapted_channels"]))
    _assert_close(_features(adapted, arrays["x_adapted"]), arrays["features_adapted"])


@pytest.mark.parametrize("case", CASES)
def test_timm_state_round_trip_is_exact(case):
    build, state, native, _ = _load_case(case)
    model = build(native)
    load_timm_state(model, state, "encoder")
    back = timm_state(model)
    assert sorted(back) == sorted(state)  # (safetensors stores keys sorted, not in timm's order)
    assert list(back)[:2] == ["conv_stem.weight", "bn1.weight"]  # timm's module order
    for key, value in state.items():
        assert back[key].dtype == value.dtype, key
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    # and again through a fresh model: Keras -> timm -> Keras is exact too
    twin = build(native)
    load_timm_state(twin, back, "encoder")
    for a, b in zip(model.weights, twin.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("case", CASES)
def test_blocks_cover_every_weight_once(case):
    build, _, native, _ = _load_case(case)
    model = build(native)
    groups = architectures.family_blocks(model, "efficientnet")
    stages = sorted(
        {layer.name.split(".")[1] for layer in model.layers if layer.name.startswith("blocks.")}
    )
    assert len(groups) == len(stages) + 1
    assert [layer.name for layer in groups[-1]] == ["conv_stem", "bn1"]
    head = {layer.name for layer in groups[0]}
    assert {"conv_head", "bn2"} <= head
    assert all(name.startswith(f"blocks.{stages[-1]}.") for name in head - {"conv_head", "bn2"})
    for i, group in enumerate(groups[1:-1]):
        stage = len(stages) - 2 - i
        assert all(layer.name.startswith(f"blocks.{stage}.") for layer in group)
    listed = [id(w) for group in groups for layer in group for w in layer.weights]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(id(w) for w in model.weights)


def test_strict_loading_names_each_misfit():
    _, state, native, _ = _load_case("test_efficientnet")
    model = efficientnet.build(
        "test_efficientnet", native, {"channel_multiplier": 0.25, "depth_multiplier": 2.0}
    )
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    bad = dict(state)
    del bad["blocks.1.0.conv_exp.weight"]
    bad["blocks.9.0.conv.weight"] = np.zeros((1,), np.float32)
    bad["conv_head.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    with pytest.raises(WeightsMismatchError) as err:
        load_timm_state(model, bad, "encoder")
    message = str(err.value)
    assert "blocks.1.0.conv_exp.weight" in message
    assert "blocks.9.0.conv.weight" in message
    expected_head = tuple(state["conv_head.weight"].shape)
    assert (
        f"conv_head.weight: (3, 3, 1, 1) in the checkpoint, {expected_head} in the model" in message
    )
    for old, new in zip(before, model.weights, strict=True):  # nothing was assigned
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    # a different architecture's weights do not fit either
    with pytest.raises(WeightsMismatchError):
        load_timm_state(efficientnet.build("test_efficientnet", native), state, "encoder")


# timm 1.0.31, create_model(name, num_classes=0): num_features, state dict entries and numbers
TIMM_SIZES = {
    "efficientnet_b0": (1280, 358, 4049613),
    "tf_efficientnet_b0": (1280, 358, 4049613),
    "efficientnet_b1": (1280, 506, 6575301),
    "test_efficientnet": (256, 86, 101737),
    "tf_efficientnetv2_s": (1280, 780, 20331470),
    "efficientnetv2_rw_t": (1024, 758, 12743519),
}


@pytest.mark.parametrize("architecture", sorted(TIMM_SIZES))
def test_full_size_state_matches_timm(architecture):
    num_features, entries, numbers = TIMM_SIZES[architecture]
    model = efficientnet.build(architecture, 3)
    state = timm_state(model)
    assert model.num_features == num_features
    assert len(state) == entries
    assert sum(v.size for v in state.values()) == numbers
    x = np.random.default_rng(0).standard_normal((1, 67, 75, 3)).astype(np.float32)
    features = keras.ops.convert_to_numpy(model(x, training=False))
    assert features.shape == (1, num_features)
    assert np.isfinite(features).all()


def test_greyscale_b0_graph():
    model = efficientnet.build("efficientnet_b0", 1)
    assert model.input_shape == (None, None, None, 1)
    assert model.get_layer("conv_stem").kernel.shape == (3, 3, 1, 32)
    # torch-style padding: explicit symmetric pads before strided convs, never Keras "same"
    stem = model.get_layer("conv_stem")
    assert stem.padding == "valid" and model.get_layer("conv_stem.pad").padding == ((1, 1), (1, 1))
    dw5 = model.get_layer("blocks.2.0.conv_dw")
    assert dw5.strides == (2, 2) and dw5.padding == "valid"
    assert model.get_layer("blocks.2.0.conv_dw.pad").padding == ((2, 2), (2, 2))
    # SE reduces from the block input: 24 channels in, 144 expanded, 6 squeezed
    assert model.get_layer("blocks.2.0.se.conv_reduce").kernel.shape == (1, 1, 144, 6)
    assert model.get_layer("bn1").epsilon == 1e-5


def test_tf_variant_uses_same_padding_and_eps():
    model = efficientnet.build("tf_efficientnet_b0", 3)
    assert model.get_layer("conv_stem").padding == "same"
    assert "conv_stem.pad" not in [layer.name for layer in model.layers]
    assert model.get_layer("bn1").epsilon == 1e-3


@pytest.mark.parametrize(
    ("architecture", "repeats", "stem", "widths", "head"),
    [  # timm 1.0.31: blocks per stage, stem width, last block's width per stage, head width
        ("tf_efficientnetv2_s", [2, 4, 4, 6, 9, 15], 24, [24, 48, 64, 128, 160, 256], 1280),
        ("efficientnetv2_rw_t", [2, 4, 4, 6, 9, 14], 24, [24, 40, 48, 104, 128, 208], 1024),
        ("tf_efficientnetv2_b3", [2, 3, 3, 5, 7, 12], 40, [16, 40, 56, 112, 136, 232], 1536),
        ("efficientnetv2_rw_m", [3, 5, 5, 8, 15, 24], 32, [32, 56, 80, 152, 192, 328], 2152),
        ("efficientnetv2_m", [3, 5, 5, 7, 14, 18, 5], 24, [24, 48, 80, 160, 176, 304, 512], 1280),
    ],
)
def test_efficientnetv2_structure_is_timms(architecture, repeats, stem, widths, head):
    """Depth scaling (one multiplier per stage for rw_m), channel rounding, fixed or rounded heads,
    and the block types: ConvBnAct (or EdgeResidual for rw) first, EdgeResidual, inverted residual."""
    args = efficientnet._resolve(architecture, None)
    stem_width, stages, head_width = efficientnet.block_configs(
        efficientnet.GENERATOR_OF[architecture], args
    )
    assert [len(stage) for stage in stages] == repeats
    assert stem_width == stem and head_width == head
    assert [stage[-1]["out_chs"] for stage in stages] == widths
    first = "er" if "rw" in architecture and architecture != "efficientnetv2_rw_t" else "cn"
    assert [stage[0]["block_type"] for stage in stages[:4]] == [first, "er", "er", "ir"]


def test_efficientnetv2_multipliers_follow_timms_factories():
    """tf_efficientnetv2_s passes none (callers may scale it); rw_t and b1-b3 fix theirs."""
    model = efficientnet.build(
        "tf_efficientnetv2_s", 3, {"channel_multiplier": 0.1, "depth_multiplier": 0.34}
    )
    assert model.get_layer("conv_stem").filters == 8
    for architecture in ("efficientnetv2_rw_t", "tf_efficientnetv2_b1"):
        with pytest.raises(ValueError, match="fixes"):
            efficientnet.build(architecture, 3, {"depth_multiplier": 0.5})
    with pytest.raises(ValueError, match="3 values for 6 stages"):
        efficientnet.decode_arch_def(efficientnet.EFFICIENTNETV2_S_ARCH_DEF, (1.0, 1.0, 1.0))


def test_model_args_are_checked():
    with pytest.raises(ValueError, match="not supported"):
        efficientnet.build("efficientnet_b0", 3, {"se_layer": "ese"})
    with pytest.raises(ValueError, match="global_pool"):
        efficientnet.build("efficientnet_b0", 3, {"global_pool": "token"})
    with pytest.raises(ValueError, match="fixes"):
        efficientnet.build("efficientnet_b0", 3, {"channel_multiplier": 0.5})
    with pytest.raises(ValueError, match="choose from"):
        efficientnet.build("efficientnet_b99", 3)
    # what timm records in config.json is accepted
    model = efficientnet.build(
        "efficientnet_b0", 1, {"num_classes": 0, "in_chans": 3, "global_pool": "catavgmax"}
    )
    assert model.num_features == 2560
    assert model.output_shape == (None, 2560)


def test_drop_path_only_in_training():
    model = efficientnet.build(
        "test_efficientnet", 3, {"depth_multiplier": 2.0, "drop_path_rate": 0.5, "drop_rate": 0.5}
    )
    assert any(layer.name.endswith(".drop_path") for layer in model.layers)
    x = np.random.default_rng(1).standard_normal((4, 40, 40, 3)).astype(np.float32)
    a = keras.ops.convert_to_numpy(model(x, training=False))
    b = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_array_equal(a, b)
    layer = next(layer for layer in model.layers if layer.name.endswith(".drop_path"))
    ones = np.ones((256, 2, 2, 3), np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(ones, training=False)), ones)
    dropped = keras.ops.convert_to_numpy(layer(ones, training=True))
    keep = 1.0 - layer.rate
    per_sample = dropped.reshape(256, -1)
    assert set(np.unique(per_sample)) <= {0.0, np.float32(1.0 / keep)}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples are dropped
    assert 0 < (per_sample[:, 0] == 0).sum() < 256
