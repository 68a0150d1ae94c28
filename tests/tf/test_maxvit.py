"""zoobot.tf.architectures.maxvit against timm's numbers, without torch.

The fixtures (tests/tf/fixtures/make_timm_fixtures.py, `maxvit`) are Hub folders timm wrote for
small seeded MaxViTs of each published code path (RelPosMlp with and without layer scale, the TF
port with its RelPosBiasTf tables and pre-logits head) at a non-square 64x96 input, with the
features timm gave. Full-size models are compared live against timm in the parity session.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras_backend import weight_gradients
from safetensors.numpy import load_file

from zoobot.tf import architectures
from zoobot.tf.architectures import maxvit
from zoobot.tf.encoders import load_encoder
from zoobot.tf.pretrained import save_pretrained
from zoobot.tf.weights import WeightsMismatchError

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
CASES = ("maxvit_rmlp_tiny", "maxvit_rmlp_small_grey", "maxvit_large_tf")
# Max |keras - timm| relative to the largest |timm feature|: float32 arithmetic in another order
# (attention, LayerNorm and BatchNorm reductions) differs by ~1e-6 relative at these depths.
TOLERANCE = 1e-4


def test_no_torch():
    assert "torch" not in sys.modules


def features(model: keras.Model, x_nchw: np.ndarray) -> np.ndarray:
    x = np.transpose(x_nchw.astype(np.float32), (0, 2, 3, 1))
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0.1  # the fixture features are not degenerate
    relative = np.abs(actual - expected).max() / scale
    assert relative < TOLERANCE, f"max difference {relative:.2e} of the features' scale"


def config_of(case: str) -> dict:
    return json.loads((FIXTURES / case / "config.json").read_text())


def copy_case(case: str, folder: Path) -> Path:
    shutil.copytree(FIXTURES / case, folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case", CASES)
def test_hub_folder_gives_timms_features(case):
    arrays = np.load(FIXTURES / f"{case}.npz")
    encoder = load_encoder(FIXTURES / case)
    assert encoder.input_shape[1:3] == (64, 96)  # the img_size timm recorded in model_args
    assert_close(features(encoder, arrays["x_native"]), arrays["features_native"])
    assert encoder.num_features == config_of(case)["num_features"]


@pytest.mark.parametrize("case", CASES)
def test_adapted_channels_give_timms_features(case):
    """1 <-> 3 channels: the first conv adapted as timm's adapt_input_conv does."""
    arrays = np.load(FIXTURES / f"{case}.npz")
    channels = int(arrays["adapted_channels"])
    encoder = load_encoder(FIXTURES / case, channels=channels)
    assert encoder.input_shape == (None, 64, 96, channels)
    assert_close(features(encoder, arrays["x_adapted"]), arrays["features_adapted"])


@pytest.mark.parametrize("case", CASES)
def test_timm_state_round_trip_is_exact(case):
    state = load_file(FIXTURES / case / "model.safetensors")
    encoder = load_encoder(FIXTURES / case)
    back = architectures.timm_state(encoder)
    assert sorted(back) == sorted(state)
    assert list(back)[:2] == [
        "stem.conv1.weight",
        "stem.conv1.bias" if "tf" in case else "stem.norm1.weight",
    ]
    for key, value in state.items():
        assert back[key].dtype == value.dtype, key
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_saved_folder_reloads_with_its_size_and_weights(tmp_path, case):
    """TF -> timm layout: the img_size and input size are written, every tensor bitwise."""
    arrays = np.load(FIXTURES / f"{case}.npz")
    encoder = load_encoder(FIXTURES / case)
    folder = save_pretrained(encoder, tmp_path / "saved")
    config = json.loads((folder / "config.json").read_text())
    channels = config_of(case)["model_args"]["in_chans"]
    assert config["architecture"] == config_of(case)["architecture"]
    assert config["model_args"]["img_size"] == [64, 96]
    assert config["pretrained_cfg"]["input_size"] == [channels, 64, 96]
    assert config["pretrained_cfg"]["fixed_input_size"] is True
    saved, original = (
        load_file(folder / "model.safetensors"),
        load_file(FIXTURES / case / "model.safetensors"),
    )
    assert sorted(saved) == sorted(original)
    assert all(np.array_equal(saved[k], original[k]) for k in original)
    reloaded = load_encoder(folder)
    np.testing.assert_array_equal(
        features(reloaded, arrays["x_native"]), features(encoder, arrays["x_native"])
    )


@pytest.mark.parametrize("case", CASES)
def test_blocks_are_stages_from_the_head_then_the_stem(case):
    """As zoobot.models.blocks groups MaxViT: stages 3..0, then the stem; norm/head in block 0."""
    encoder = load_encoder(FIXTURES / case)
    groups = architectures.blocks(encoder)
    assert len(groups) == 5
    for i, group in enumerate(groups[:4]):
        names = {layer.name for layer in group if layer.name.startswith("stages.")}
        assert names and all(n.startswith(f"stages.{3 - i}.") for n in names)
    assert {layer.name for layer in groups[-1]} == {
        layer.name for layer in encoder.layers if layer.name.startswith("stem.") and layer.weights
    }
    rest = {layer.name for layer in groups[0] if not layer.name.startswith("stages.")}
    assert rest and all(n == "norm" or n.startswith("head.") for n in rest)
    listed = [id(w) for group in groups for layer in group for w in layer.weights]
    assert sorted(listed) == sorted(id(w) for w in encoder.weights)


def test_strict_loading_names_each_misfit():
    state = dict(load_file(FIXTURES / "maxvit_large_tf" / "model.safetensors"))
    args = config_of("maxvit_large_tf")["model_args"]
    model = architectures.build_encoder("maxvit_large_tf_224", 3, {**args, "img_size": [96, 96]})
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    del state["stages.1.blocks.1.attn_grid.mlp.fc2.bias"]
    state["head.fc.weight"] = np.zeros((5, 16), np.float32)
    with pytest.raises(WeightsMismatchError) as err:
        architectures.load_timm_state(model, state)
    message = str(err.value)
    # 96 px windows are 3x3 where the checkpoint's 64x96 ones are 2x3: its tables are (heads, 3, 5)
    table = "stages.0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table"
    assert f"{table}: (1, 3, 5) in the checkpoint, (1, 5, 5) in the model" in message
    assert "missing from the checkpoint: stages.1.blocks.1.attn_grid.mlp.fc2.bias" in message
    assert "unexpected in the checkpoint: head.fc.weight" in message
    for old, new in zip(before, model.weights, strict=True):  # nothing was assigned
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_relative_position_mlp_fits_any_window():
    """RelPosMlp weights do not depend on the window: the same checkpoint loads at 128x192."""
    state = load_file(FIXTURES / "maxvit_rmlp_tiny" / "model.safetensors")
    args = config_of("maxvit_rmlp_tiny")["model_args"]
    model = architectures.build_encoder(
        "maxvit_rmlp_tiny_rw_256", 3, {**args, "img_size": [128, 192]}
    )
    architectures.load_timm_state(model, state)
    assert model.get_layer("stages.0.blocks.0.attn_block.attn").partition_size == (4, 6)
    x = np.random.default_rng(0).standard_normal((1, 128, 192, 3)).astype(np.float32)
    assert np.isfinite(keras.ops.convert_to_numpy(model(x))).all()


def test_img_size_comes_from_model_args_else_the_pretrained_cfg(tmp_path):
    """As timm: `model_args.img_size` if given, else `pretrained_cfg.input_size` (fixed-size)."""
    folder = copy_case("maxvit_rmlp_tiny", tmp_path / "model")
    config = config_of("maxvit_rmlp_tiny")
    stale = {**config["pretrained_cfg"], "input_size": [3, 128, 192]}
    edit_config(folder, pretrained_cfg=stale)
    assert load_encoder(folder).input_shape == (None, 64, 96, 3)
    args = {k: v for k, v in config["model_args"].items() if k != "img_size"}
    edit_config(folder, model_args=args)
    encoder = load_encoder(folder)
    assert encoder.input_shape == (None, 128, 192, 3)
    assert encoder.zoobot_pretrained_cfg["input_size"] == [3, 128, 192]
    edit_config(folder, pretrained_cfg=None)  # nothing says: the architecture's own size
    assert load_encoder(folder, pretrained=False).input_shape == (None, 256, 256, 3)


@pytest.mark.parametrize(
    ("architecture", "model_args", "size", "window", "grid"),
    [
        ("maxvit_rmlp_tiny_rw_256", {}, (256, 256), (8, 8), (8, 8)),
        ("maxvit_rmlp_tiny_rw_256", {"img_size": 224}, (224, 224), (7, 7), (7, 7)),
        ("maxvit_large_tf_224", {}, (224, 224), (7, 7), (7, 7)),
        ("maxvit_rmlp_small_rw_224", {"transformer_window_size": 4}, (224, 224), (4, 4), (4, 4)),
        (
            "maxvit_rmlp_small_rw_224",
            {"transformer_window_size": [2, 4], "transformer_grid_size": 7},
            (224, 224),
            (2, 4),
            (7, 7),
        ),
    ],
)
def test_partition_sizes_follow_img_size(architecture, model_args, size, window, grid):
    args = maxvit._resolve(architecture, model_args)
    assert args["img_size"] == size
    assert (args["window_size"], args["grid_size"]) == (window, grid)


def test_wrong_input_size_is_refused_clearly():
    encoder = load_encoder(FIXTURES / "maxvit_rmlp_tiny")
    with pytest.raises(ValueError, match=r"expected shape=\(None, 64, 96, 3\)"):
        encoder(np.zeros((1, 64, 64, 3), np.float32))
    args = {**config_of("maxvit_rmlp_tiny")["model_args"], "img_size": [64, 80]}
    with pytest.raises(
        ValueError,
        match=r"stages.2.blocks.0.attn_block.partition: a 4x5 feature map does not split into 2x2 block",
    ):
        architectures.build_encoder("maxvit_rmlp_tiny_rw_256", 3, args)


@pytest.mark.parametrize(
    ("model_args", "match"),
    [
        ({"conv_block_type": "convnext"}, r"\['conv_block_type'\] are not supported"),
        ({"transformer_rel_pos_type": "bias_v2"}, "transformer_rel_pos_type='bias_v2'"),
        ({"global_pool": "max"}, "global_pool='max'"),
        ({"transformer_dim_head": 12}, "not a multiple of dim_head 12"),
    ],
)
def test_unsupported_model_args_fail_loudly(model_args, match):
    args = {**config_of("maxvit_rmlp_tiny")["model_args"], **model_args}
    with pytest.raises(ValueError, match=match):
        architectures.build_encoder("maxvit_rmlp_tiny_rw_256", 3, args)


def test_training_only_options_leave_inference_unchanged():
    """Stochastic depth, head dropout and the relative-position MLP's dropout act in training."""
    state = load_file(FIXTURES / "maxvit_rmlp_tiny" / "model.safetensors")
    args = config_of("maxvit_rmlp_tiny")["model_args"]
    plain = architectures.build_encoder("maxvit_rmlp_tiny_rw_256", 3, args)
    dropping = architectures.build_encoder(
        "maxvit_rmlp_tiny_rw_256", 3, {**args, "drop_path_rate": 0.3, "drop_rate": 0.2}
    )
    for model in (plain, dropping):
        architectures.load_timm_state(model, state)
    x = np.random.default_rng(2).standard_normal((2, 64, 96, 3)).astype(np.float32)
    np.testing.assert_array_equal(dropping(x, training=False), plain(x, training=False))
    assert not np.allclose(dropping(x, training=True), plain(x, training=False))
    attention = plain.get_layer("stages.0.blocks.0.attn_block.attn")
    np.testing.assert_array_equal(
        attention.relative_position_bias(training=False),
        attention.relative_position_bias(training=False),
    )
    assert not np.allclose(
        attention.relative_position_bias(training=True),
        attention.relative_position_bias(training=False),
    )


def test_every_trainable_weight_gets_a_gradient():
    """Gradients reach every weight through the partitions and the relative position biases.

    Except the relative-position MLP's output bias: it adds one constant to all logits of a head,
    which the softmax cancels, so its gradient is 0 in timm too (up to rounding)."""
    for case in ("maxvit_rmlp_small_grey", "maxvit_large_tf"):
        encoder = load_encoder(FIXTURES / case)
        channels = encoder.input_shape[-1]
        x = np.random.default_rng(4).standard_normal((2, 64, 96, channels)).astype(np.float32)
        gradients = weight_gradients(
            encoder, lambda out: keras.ops.sum(keras.ops.square(out)), x, training=True
        )
        missing = [
            v.path
            for v, g in zip(encoder.trainable_variables, gradients, strict=True)
            if (g is None or not np.any(np.asarray(g))) and not v.path.endswith("attn/fc2_bias")
        ]
        assert not missing, missing[:10]


def test_keras_config_round_trip_rebuilds_the_same_network():
    """The custom layers serialise: a model rebuilt from its Keras config computes the same."""
    encoder = load_encoder(FIXTURES / "maxvit_large_tf")
    twin = keras.Model.from_config(encoder.get_config())
    twin.set_weights(encoder.get_weights())
    x = np.random.default_rng(3).standard_normal((2, 64, 96, 3)).astype(np.float32)
    np.testing.assert_array_equal(twin(x, training=False), encoder(x, training=False))


# timm 1.0.31, create_model(name, num_classes=0, img_size=...): num_features, state dict entries
# and numbers, for two published Zoobot MaxViT encoders (the parity session builds all four at full
# size beside timm; Base and Large take 8-18 s to build here).
TIMM_SIZES = {
    ("maxvit_rmlp_tiny_rw_256", 224): (512, 606, 28676314),
    ("maxvit_rmlp_small_rw_224", 224): (768, 651, 64186046),
}


@pytest.mark.parametrize(("architecture", "img_size"), sorted(TIMM_SIZES))
def test_full_size_state_matches_timm(architecture, img_size):
    num_features, entries, numbers = TIMM_SIZES[(architecture, img_size)]
    model = architectures.build_encoder(architecture, 3, {"img_size": img_size})
    state = architectures.timm_state(model)
    assert model.num_features == num_features
    assert model.output_shape == (None, num_features)
    assert len(state) == entries
    assert sum(v.size for v in state.values()) == numbers
