"""MaxViT (timm `MaxxVit` built from MaxViT blocks) in Keras 3, channels-last, with timm's layer names.

Follows `timm/models/maxxvit.py` (timm 1.0) for the configurations whose every stage is made of
MaxViT blocks ('M'): a stem (3x3/2 conv, BatchNorm + act, 3x3 conv), four stages whose blocks are
an MBConv (pre-norm BatchNorm, 1x1 expansion, 3x3 depthwise conv (strided in a stage's first
block), squeeze-excitation, 1x1 projection; the shortcut average-pools and widens when strided)
followed by window ("block") attention and grid attention, each a pre-norm transformer layer in
channels-last layout (LayerNorm, multi-head self-attention inside each partition with a relative
position bias, optional layer scale, then LayerNorm and an MLP). Features are the global average
of the final LayerNorm, or (configs with `head_hidden_size`) timm's `NormMlpClassifierHead`
without its classifier: average pool, LayerNorm, Linear, tanh.

Two families share the code, as in timm:

- `maxvit_*_rw_*` (timm's own): SiLU MBConvs with torch-style symmetric padding, expansion from
  the block's input width, no bias on the projection and shortcut convs, SE at 1/16; exact GELU in
  the transformer layers; `maxvit_rmlp_*` use timm's `RelPosMlp` (the bias is a 2-layer MLP of
  log-spaced relative coordinates, so it exists for any window), the others `RelPosBias` (a
  learned table per relative offset).
- `maxvit_*_tf_*` (the paper authors' TensorFlow models): TF "SAME" padding, tanh-approximated
  GELU everywhere, BatchNorm eps 1e-3, expansion from the output width with biases, SE at 1/4,
  heads interleaved in the qkv projection, `RelPosBiasTf` tables `(heads, 2h-1, 2w-1)`.

Window and grid sizes are `img_size // partition_ratio` (7 at 224 px, 8 at 256 px) unless
`transformer_window_size` / `transformer_grid_size` say otherwise; the relative position tables
and the input shape follow, so the Keras model has a fixed input size, as timm's
(`fixed_input_size`). `img_size` defaults to the size in the timm name (256 for `..._rw_256`); a
timm `config.json` gives it in `model_args` (e.g. the Zoobot MaxViT-Tiny encoder is
`maxvit_rmlp_tiny_rw_256` with `img_size: 224`). CoAtNet, MaxxViT (ConvNeXt blocks), the parallel
`maxvit_tiny_pm` blocks and NCHW attention are not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from zoobot.tf.architectures.efficientnet import make_divisible
from zoobot.tf.architectures.layers import (
    Gelu,
    LayerScale,
    TorchBatchNorm,
    conv2d,
    merge_model_args,
    require,
    residual,
)
from zoobot.tf.depthwise import DepthwiseConv2D
from zoobot.tf.patch_conv import Conv2D

# MaxxVitConvCfg / MaxxVitTransformerCfg fields as timm's model arguments name them
# (`conv_*`, `transformer_*`), for the options zoobot.tf implements.
_RW = {
    "conv_expand_output": False,
    "conv_output_bias": False,
    "conv_attn_ratio": 1 / 16,
    "conv_act_layer": "silu",
    "conv_norm_eps": 1e-5,
    "conv_padding": "",
    "transformer_act_layer": "gelu",
    "transformer_norm_eps": 1e-6,
    "transformer_head_first": True,
    "transformer_rel_pos_type": "bias",
}
_TF = {
    "conv_expand_output": True,
    "conv_output_bias": True,
    "conv_attn_ratio": 0.25,
    "conv_act_layer": "gelu_tanh",
    "conv_norm_eps": 1e-3,
    "conv_padding": "same",
    "transformer_act_layer": "gelu_tanh",
    "transformer_norm_eps": 1e-5,
    "transformer_head_first": False,
    "transformer_rel_pos_type": "bias_tf",
    "stem_bias": True,
}

# timm MaxxVit.__init__, MaxxVitCfg, MaxxVitConvCfg and MaxxVitTransformerCfg defaults for the
# arguments zoobot.tf accepts (the MaxxVitCfg fields and the cfg overlays are model arguments).
DEFAULTS: dict[str, Any] = {
    "img_size": 224,
    "in_chans": 3,
    "num_classes": 0,
    "global_pool": "avg",
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "embed_dim": (96, 192, 384, 768),
    "depths": (2, 3, 5, 2),
    "stem_width": 64,
    "stem_bias": False,
    "head_hidden_size": None,
    "conv_expand_output": True,
    "conv_output_bias": True,
    "conv_expand_ratio": 4.0,
    "conv_attn_ratio": 0.25,
    "conv_act_layer": "gelu",
    "conv_norm_eps": None,  # BatchNorm: 1e-5
    "conv_padding": "",
    "transformer_dim_head": 32,
    "transformer_head_first": True,
    "transformer_expand_ratio": 4.0,
    "transformer_rel_pos_type": "bias",
    "transformer_rel_pos_dim": 512,
    "transformer_partition_ratio": 32,
    "transformer_window_size": None,
    "transformer_grid_size": None,
    "transformer_init_values": None,
    "transformer_act_layer": "gelu",
    "transformer_norm_eps": 1e-6,
}


def _cfg(embed_dim, depths, stem_width, family, **extra) -> dict[str, Any]:
    return {"embed_dim": embed_dim, "depths": depths, "stem_width": stem_width, **family, **extra}


_MLP = {**_RW, "transformer_rel_pos_type": "mlp"}

# timm `model_cfgs` (timm 1.0.31), the MaxViT-block configurations
CONFIGS: dict[str, dict[str, Any]] = {
    "maxvit_pico_rw": _cfg((32, 64, 128, 256), (2, 2, 5, 2), (24, 32), _RW),
    "maxvit_nano_rw": _cfg((64, 128, 256, 512), (1, 2, 3, 1), (32, 64), _RW),
    "maxvit_tiny_rw": _cfg((64, 128, 256, 512), (2, 2, 5, 2), (32, 64), _RW),
    "maxvit_rmlp_pico_rw": _cfg((32, 64, 128, 256), (2, 2, 5, 2), (24, 32), _MLP),
    "maxvit_rmlp_nano_rw": _cfg((64, 128, 256, 512), (1, 2, 3, 1), (32, 64), _MLP),
    "maxvit_rmlp_tiny_rw": _cfg((64, 128, 256, 512), (2, 2, 5, 2), (32, 64), _MLP),
    "maxvit_rmlp_small_rw": _cfg(
        (96, 192, 384, 768), (2, 2, 5, 2), (32, 64), _MLP, transformer_init_values=1e-6
    ),
    "maxvit_rmlp_base_rw": _cfg(
        (96, 192, 384, 768), (2, 6, 14, 2), (32, 64), _MLP, head_hidden_size=768
    ),
    "maxvit_tiny_tf": _cfg((64, 128, 256, 512), (2, 2, 5, 2), 64, _TF, head_hidden_size=512),
    "maxvit_small_tf": _cfg((96, 192, 384, 768), (2, 2, 5, 2), 64, _TF, head_hidden_size=768),
    "maxvit_base_tf": _cfg((96, 192, 384, 768), (2, 6, 14, 2), 64, _TF, head_hidden_size=768),
    "maxvit_large_tf": _cfg((128, 256, 512, 1024), (2, 6, 14, 2), 128, _TF, head_hidden_size=1024),
    "maxvit_xlarge_tf": _cfg((192, 384, 768, 1536), (2, 6, 14, 2), 192, _TF, head_hidden_size=1536),
    "test_maxvit": _cfg((32, 64, 96, 128), (1, 1, 1, 1), (16, 32), _RW),
}


def _registered() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """timm's registered names: `<config>_<img_size>` (the default input size of its weights)."""
    sizes = {
        "maxvit_pico_rw": (256,),
        "maxvit_nano_rw": (256,),
        "maxvit_tiny_rw": (224, 256),
        "maxvit_rmlp_pico_rw": (256,),
        "maxvit_rmlp_nano_rw": (256,),
        "maxvit_rmlp_tiny_rw": (256,),
        "maxvit_rmlp_small_rw": (224, 256),
        "maxvit_rmlp_base_rw": (224, 384),
        **{f"maxvit_{s}_tf": (224, 384, 512) for s in ("tiny", "small", "base", "large", "xlarge")},
    }
    archs = {f"{cfg}_{size}": {"img_size": size} for cfg, ss in sizes.items() for size in ss}
    config_of = {f"{cfg}_{size}": cfg for cfg, ss in sizes.items() for size in ss}
    archs["test_maxvit"] = {"img_size": 160}
    config_of["test_maxvit"] = "test_maxvit"
    return archs, config_of


# timm architecture -> the arguments it is built with (timm 1.0.x; img_size from its pretrained cfg)
ARCHITECTURES, CONFIG_OF = _registered()
# timm marks MaxViT `fixed_input_size`: a checkpoint's `pretrained_cfg.input_size` is its img_size.
FIXED_INPUT_SIZE = True

_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
_REL_POS_TYPES = ("bias", "mlp", "bias_tf")


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


def _resolve(architecture: str, model_args: Mapping | None) -> dict:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{architecture!r} is not a MaxViT zoobot.tf offers; choose from {sorted(ARCHITECTURES)}"
        )
    base = {**CONFIGS[CONFIG_OF[architecture]], **ARCHITECTURES[architecture]}
    args = merge_model_args(architecture, DEFAULTS, base, model_args)
    require(architecture, args, "global_pool", ("avg",))
    require(architecture, args, "conv_act_layer", _ACTIVATIONS)
    require(architecture, args, "transformer_act_layer", _ACTIVATIONS)
    require(architecture, args, "conv_padding", ("", "same"))
    require(architecture, args, "transformer_rel_pos_type", _REL_POS_TYPES)
    args["img_size"] = _pair(args["img_size"])
    args["stem_width"] = _pair(args["stem_width"])
    args["embed_dim"] = tuple(int(d) for d in args["embed_dim"])
    args["depths"] = tuple(int(d) for d in args["depths"])
    if len(args["embed_dim"]) != len(args["depths"]):
        raise ValueError(f"{architecture}: embed_dim and depths need one value per stage")
    args["window_size"], args["grid_size"] = partition_sizes(args)
    return args


def partition_sizes(args: Mapping) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, grid) partition sizes as timm's `cfg_window_size` derives them from img_size."""
    if args["transformer_window_size"] is not None:
        window = _pair(args["transformer_window_size"])
        grid = args["transformer_grid_size"]
        return window, window if grid is None else _pair(grid)
    ratio = int(args["transformer_partition_ratio"])
    height, width = _pair(args["img_size"])
    size = (height // ratio, width // ratio)
    return size, size


# --- relative position biases (timm.layers.pos_embed_rel) --------------------------------------


def relative_position_index(size: tuple[int, int]) -> np.ndarray:
    """timm's `gen_relative_position_index`: (query, key) -> flat index of the offset query - key."""
    rows, cols = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    coords = np.stack([rows.ravel(), cols.ravel()])  # 2, tokens
    relative = coords[:, :, None] - coords[:, None, :]
    return (relative[0] + size[0] - 1) * (2 * size[1] - 1) + (relative[1] + size[1] - 1)


def relative_log_coords(size: tuple[int, int]) -> np.ndarray:
    """timm's `gen_relative_log_coords(mode='cr')`: sign(d) log(1 + |d|) of every offset, float32."""
    dh = np.arange(-(size[0] - 1), size[0], dtype=np.float32)
    dw = np.arange(-(size[1] - 1), size[1], dtype=np.float32)
    grid = np.stack(np.meshgrid(dh, dw, indexing="ij"), axis=-1)  # 2h-1, 2w-1, 2
    return (np.sign(grid) * np.log1p(np.abs(grid))).astype(np.float32)


def tf_lookup_index(size: tuple[int, int]) -> np.ndarray:
    """Flat index into a `RelPosBiasTf` table (h, 2h-1, 2w-1 per head) for (query, key): the
    offset key - query, which is what timm's one-hot einsum lookup selects."""
    rows, cols = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    r, c = rows.ravel(), cols.ravel()
    dr = r[None, :] - r[:, None] + size[0] - 1
    dc = c[None, :] - c[:, None] + size[1] - 1
    return dr * (2 * size[1] - 1) + dc


@keras.saving.register_keras_serializable(package="zoobot")
class RelPosAttention(layers.Layer):
    """Self-attention inside each partition from the fused qkv projection, plus a relative position
    bias: the core of timm's `AttentionCl` with its `rel_pos` module, whose tensors it owns.

    Takes `(partitions, tokens, 3 * heads * dim_head)`, returns `(partitions, tokens, heads *
    dim_head)`. `head_first` is timm's qkv channel order: per head (q, k, v) when True, else all q,
    all k, all v (the TF MaxViT order).
    """

    def __init__(
        self,
        num_heads: int,
        dim_head: int,
        partition_size: Sequence[int],
        rel_pos_type: str,
        rel_pos_dim: int = 512,
        head_first: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if rel_pos_type not in _REL_POS_TYPES:
            raise ValueError(f"rel_pos_type must be one of {_REL_POS_TYPES}, got {rel_pos_type!r}")
        self.num_heads = int(num_heads)
        self.dim_head = int(dim_head)
        self.partition_size = _pair(partition_size)
        self.rel_pos_type = rel_pos_type
        self.rel_pos_dim = int(rel_pos_dim)
        self.head_first = bool(head_first)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        size = self.partition_size
        self.tokens = size[0] * size[1]
        self.vocab = (2 * size[0] - 1, 2 * size[1] - 1)
        if rel_pos_type == "bias_tf":
            self._index = tf_lookup_index(size).reshape(-1)
        else:
            self._index = relative_position_index(size).reshape(-1)
        self._coords = relative_log_coords(size).reshape(-1, 2)

    def build(self, input_shape):
        heads, area = self.num_heads, self.vocab[0] * self.vocab[1]
        if self.rel_pos_type == "mlp":
            xavier = keras.initializers.GlorotUniform()
            self.fc1_kernel = self.add_weight(
                name="fc1_kernel", shape=(2, self.rel_pos_dim), initializer=xavier
            )
            self.fc1_bias = self.add_weight(
                name="fc1_bias", shape=(self.rel_pos_dim,), initializer="zeros"
            )
            self.fc2_kernel = self.add_weight(
                name="fc2_kernel", shape=(self.rel_pos_dim, heads), initializer=xavier
            )
            self.fc2_bias = self.add_weight(name="fc2_bias", shape=(heads,), initializer="zeros")
        elif self.rel_pos_type == "bias":
            self.table = self.add_weight(
                name="relative_position_bias_table",
                shape=(area, heads),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            )
        else:
            self.table = self.add_weight(
                name="relative_position_bias_table",
                shape=(heads, *self.vocab),
                initializer=keras.initializers.RandomNormal(stddev=0.02),
            )

    def relative_position_bias(self, training=None):
        """The `(heads, tokens, tokens)` bias added to the attention logits."""
        heads, tokens = self.num_heads, self.tokens
        index = ops.convert_to_tensor(self._index, dtype="int32")
        if self.rel_pos_type == "bias_tf":
            table = ops.reshape(self.table, (heads, -1))
            return ops.reshape(ops.take(table, index, axis=1), (heads, tokens, tokens))
        if self.rel_pos_type == "mlp":
            coords = ops.convert_to_tensor(self._coords)
            hidden = ops.relu(ops.matmul(coords, self.fc1_kernel) + self.fc1_bias)
            if training:  # timm's Mlp(drop=(0.125, 0.)) after the ReLU
                hidden = keras.random.dropout(hidden, 0.125, seed=self.seed_generator)
            table = ops.matmul(hidden, self.fc2_kernel) + self.fc2_bias
        else:
            table = self.table
        bias = ops.reshape(ops.take(table, index, axis=0), (tokens, tokens, heads))
        return ops.transpose(bias, (2, 0, 1))

    def call(self, qkv, training=None):
        heads, dim_head = self.num_heads, self.dim_head
        tokens = qkv.shape[1]
        if self.head_first:
            qkv = ops.reshape(qkv, (-1, tokens, heads, 3 * dim_head))
            qkv = ops.transpose(qkv, (0, 2, 1, 3))
            q, k, v = (qkv[..., i * dim_head : (i + 1) * dim_head] for i in range(3))
        else:
            qkv = ops.reshape(qkv, (-1, tokens, 3, heads, dim_head))
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
            q, k, v = qkv[0], qkv[1], qkv[2]
        logits = ops.matmul(q * (dim_head**-0.5), ops.transpose(k, (0, 1, 3, 2)))
        bias = ops.cast(self.relative_position_bias(training), logits.dtype)
        attention = ops.softmax(logits + bias[None], axis=-1)
        x = ops.transpose(ops.matmul(attention, v), (0, 2, 1, 3))
        return ops.reshape(x, (-1, tokens, heads * dim_head))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.num_heads * self.dim_head)

    def timm_tensors(self):
        """`rel_pos.*` under the attention module's name (the layer's own name)."""
        if self.rel_pos_type == "mlp":
            return [
                ("rel_pos.mlp.fc1.weight", self.fc1_kernel, "dense"),
                ("rel_pos.mlp.fc1.bias", self.fc1_bias, "vector"),
                ("rel_pos.mlp.fc2.weight", self.fc2_kernel, "dense"),
                ("rel_pos.mlp.fc2.bias", self.fc2_bias, "vector"),
            ]
        return [("rel_pos.relative_position_bias_table", self.table, "vector")]

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "dim_head": self.dim_head,
            "partition_size": self.partition_size,
            "rel_pos_type": self.rel_pos_type,
            "rel_pos_dim": self.rel_pos_dim,
            "head_first": self.head_first,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="zoobot")
class Partition(layers.Layer):
    """`(B, H, W, C)` -> `(B * partitions, size_h * size_w, C)`: timm's `window_partition`
    (contiguous windows, `kind="block"`) or `grid_partition` (a dilated grid, `kind="grid"`)."""

    def __init__(self, size: Sequence[int], kind: str, **kwargs):
        super().__init__(**kwargs)
        if kind not in ("block", "grid"):
            raise ValueError(f"kind must be 'block' or 'grid', got {kind!r}")
        self.size = _pair(size)
        self.kind = kind

    def build(self, input_shape):
        _, height, width, _ = input_shape
        if height is None or width is None or height % self.size[0] or width % self.size[1]:
            raise ValueError(
                f"{self.name}: a {height}x{width} feature map does not split into "
                f"{self.size[0]}x{self.size[1]} {self.kind} partitions (as in timm, the input "
                "size must match the model's img_size)"
            )

    def call(self, x):
        _, height, width, channels = x.shape
        ph, pw = self.size
        if self.kind == "block":
            x = ops.reshape(x, (-1, height // ph, ph, width // pw, pw, channels))
            x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        else:
            x = ops.reshape(x, (-1, ph, height // ph, pw, width // pw, channels))
            x = ops.transpose(x, (0, 2, 4, 1, 3, 5))
        return ops.reshape(x, (-1, ph * pw, channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        count = (height // self.size[0]) * (width // self.size[1])
        return (None if batch is None else batch * count, self.size[0] * self.size[1], channels)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "kind": self.kind}


@keras.saving.register_keras_serializable(package="zoobot")
class Unpartition(layers.Layer):
    """The inverse of `Partition`: timm's `window_reverse` / `grid_reverse` to `(B, H, W, C)`."""

    def __init__(self, size: Sequence[int], kind: str, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.size = _pair(size)
        self.kind = kind
        self.height, self.width = int(height), int(width)

    def call(self, x):
        channels = x.shape[-1]
        ph, pw = self.size
        x = ops.reshape(x, (-1, self.height // ph, self.width // pw, ph, pw, channels))
        order = (0, 1, 3, 2, 4, 5) if self.kind == "block" else (0, 3, 1, 4, 2, 5)
        return ops.reshape(ops.transpose(x, order), (-1, self.height, self.width, channels))

    def compute_output_shape(self, input_shape):
        count = (self.height // self.size[0]) * (self.width // self.size[1])
        batch = None if input_shape[0] is None else input_shape[0] // count
        return (batch, self.height, self.width, input_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "kind": self.kind,
            "height": self.height,
            "width": self.width,
        }


# --- Keras graph --------------------------------------------------------------------------------


def _conv_init():
    # timm's _init_conv (scheme 'vit_eff'): normal(0, sqrt(2 / fan_out)), fan_out per group
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _act(x, kind: str, name: str):
    if kind == "silu":
        return layers.Activation("silu", name=name)(x)
    return Gelu(kind == "gelu_tanh", name=name)(x)


def _conv(x, filters, kernel, stride, name, args, *, depthwise=False, bias=False):
    """`create_conv2d(..., padding=conv_padding)`: TF SAME for `"same"`, else torch symmetric."""
    if args["conv_padding"] == "same" or (stride == 1 and kernel % 2 == 1):
        padding = "same"  # TF SAME, or where it equals torch's symmetric padding
    else:
        padding = "valid"
        pad = ((stride - 1) + (kernel - 1)) // 2  # timm get_padding
        if pad:
            x = layers.ZeroPadding2D(pad, name=f"{name}.pad")(x)
    if depthwise:
        return DepthwiseConv2D(
            kernel,
            strides=stride,
            padding=padding,
            use_bias=bias,
            depthwise_initializer=_conv_init(),
            name=name,
        )(x)
    return Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=bias,
        kernel_initializer=_conv_init(),
        name=name,
    )(x)


def _bn(x, name: str, args, act: bool = True):
    eps = 1e-5 if args["conv_norm_eps"] is None else args["conv_norm_eps"]
    x = TorchBatchNorm(momentum=0.9, epsilon=eps, name=name)(x)
    return _act(x, args["conv_act_layer"], f"{name}.act") if act else x


def _avg_pool2(x, name: str, args):
    """`Downsample2d(pool_type='avg2')`: 2x2/2 average pooling; with TF SAME padding an odd size
    is first zero-padded at the bottom/right (timm's `AvgPool2dSame` counts the padding)."""
    _, height, width, _ = x.shape
    if args["conv_padding"] == "same" and (height % 2 or width % 2):
        x = layers.ZeroPadding2D(((0, height % 2), (0, width % 2)), name=f"{name}.pad")(x)
    return layers.AveragePooling2D(2, strides=2, padding="valid", name=name)(x)


def _mbconv(x, name, in_chs, out_chs, stride, args, drop_rate):
    """timm's `MbConvBlock` (stride_mode 'dw', SE after norm2, no pre-norm activation)."""
    shortcut = x
    if stride == 2:
        shortcut = _avg_pool2(shortcut, f"{name}.shortcut.pool", args)
        if in_chs != out_chs:
            shortcut = conv2d(
                shortcut,
                out_chs,
                1,
                f"{name}.shortcut.expand",
                use_bias=args["conv_output_bias"],
                kernel_initializer=_conv_init(),
            )
    mid = make_divisible(
        (out_chs if args["conv_expand_output"] else in_chs) * args["conv_expand_ratio"]
    )
    x = _bn(x, f"{name}.pre_norm", args, act=False)
    x = _conv(x, mid, 1, 1, f"{name}.conv1_1x1", args)
    x = _bn(x, f"{name}.norm1", args)
    x = _conv(x, mid, 3, stride, f"{name}.conv2_kxk", args, depthwise=True)
    x = _bn(x, f"{name}.norm2", args)
    rd = int(args["conv_attn_ratio"] * (out_chs if args["conv_expand_output"] else mid))
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.se.pool")(x)
    s = Conv2D(rd, 1, kernel_initializer=_conv_init(), name=f"{name}.se.fc1")(s)
    s = layers.Activation("silu", name=f"{name}.se.act")(s)
    s = Conv2D(mid, 1, kernel_initializer=_conv_init(), name=f"{name}.se.fc2")(s)
    s = layers.Activation("sigmoid", name=f"{name}.se.gate")(s)
    x = layers.Multiply(name=f"{name}.se.mul")([x, s])
    x = _conv(x, out_chs, 1, 1, f"{name}.conv3_1x1", args, bias=args["conv_output_bias"])
    return residual(x, shortcut, drop_rate, name)


def _dense(x, units, name):
    return layers.Dense(units, kernel_initializer="glorot_uniform", name=name)(x)


def _partition_attention(x, name, kind, size, args, drop_rate):
    """timm's `PartitionAttentionCl` on a channels-last feature map."""
    _, height, width, dim = x.shape
    eps, act = args["transformer_norm_eps"], args["transformer_act_layer"]
    init_values = args["transformer_init_values"]
    dim_head = args["transformer_dim_head"]
    if dim % dim_head:
        raise ValueError(f"{name}: width {dim} is not a multiple of dim_head {dim_head}")

    shortcut = x
    y = layers.LayerNormalization(epsilon=eps, name=f"{name}.norm1")(x)
    y = Partition(size, kind, name=f"{name}.partition")(y)
    y = _dense(y, 3 * dim, f"{name}.attn.qkv")
    y = RelPosAttention(
        dim // dim_head,
        dim_head,
        size,
        args["transformer_rel_pos_type"],
        args["transformer_rel_pos_dim"],
        args["transformer_head_first"],
        name=f"{name}.attn",
    )(y)
    y = _dense(y, dim, f"{name}.attn.proj")
    y = Unpartition(size, kind, height, width, name=f"{name}.unpartition")(y)
    if init_values:
        y = LayerScale(init_values, name=f"{name}.ls1.gamma")(y)
    x = residual(y, shortcut, drop_rate, f"{name}.attention")

    shortcut = x
    y = layers.LayerNormalization(epsilon=eps, name=f"{name}.norm2")(x)
    y = _dense(y, int(dim * args["transformer_expand_ratio"]), f"{name}.mlp.fc1")
    y = _act(y, act, f"{name}.mlp.act")
    y = _dense(y, dim, f"{name}.mlp.fc2")
    if init_values:
        y = LayerScale(init_values, name=f"{name}.ls2.gamma")(y)
    return residual(y, shortcut, drop_rate, f"{name}.mlp_branch")


def build(architecture: str, channels: int, model_args: Mapping | None = None) -> keras.Model:
    """The Keras twin of `timm.create_model(architecture, num_classes=0, in_chans=channels, ...)`.

    Takes `(B, *img_size, channels)` images. Randomly initialised as timm's 'vit_eff' scheme does
    (convolutions normal with std sqrt(2 / fan_out), linear layers Xavier-uniform, zero biases,
    norms at identity); load weights with `load_timm_state`. `in_chans` and `num_classes` in
    `model_args` are ignored: `channels` decides the input, and the encoder has no classifier.
    """
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    args = _resolve(architecture, model_args)
    height, width = args["img_size"]
    window, grid = args["window_size"], args["grid_size"]
    depths, dims = args["depths"], args["embed_dim"]
    rates = np.linspace(0.0, args["drop_path_rate"], sum(depths)).tolist()

    inputs = keras.Input((height, width, channels), name="image")
    stem = args["stem_width"]
    x = _conv(inputs, stem[0], 3, 2, "stem.conv1", args, bias=args["stem_bias"])
    x = _bn(x, "stem.norm1", args)
    x = _conv(x, stem[1], 3, 1, "stem.conv2", args, bias=args["stem_bias"])
    in_chs, index = stem[1], 0
    for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
        for j in range(depth):
            name = f"stages.{i}.blocks.{j}"
            rate = rates[index]
            x = _mbconv(x, f"{name}.conv", in_chs, dim, 2 if j == 0 else 1, args, rate)
            x = _partition_attention(x, f"{name}.attn_block", "block", window, args, rate)
            x = _partition_attention(x, f"{name}.attn_grid", "grid", grid, args, rate)
            in_chs = dim
            index += 1
    eps = args["transformer_norm_eps"]
    if args["head_hidden_size"]:
        x = layers.GlobalAveragePooling2D(name="head.global_pool")(x)
        x = layers.LayerNormalization(epsilon=eps, name="head.norm")(x)
        x = _dense(x, args["head_hidden_size"], "head.pre_logits.fc")
        x = layers.Activation("tanh", name="head.pre_logits.act")(x)
    else:
        x = layers.LayerNormalization(epsilon=eps, name="norm")(x)
        x = layers.GlobalAveragePooling2D(name="head.global_pool")(x)
    if args["drop_rate"]:
        x = layers.Dropout(args["drop_rate"], name="head.drop")(x)
    model = keras.Model(inputs, x, name=architecture)
    model.num_features = dims[-1]
    return model
