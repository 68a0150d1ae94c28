"""Stand-ins for the published Zoobot encoders' Hub repos, built without any framework.

A case (`fixtures/published.json`, written by `fixtures/make_published_fixtures.py` with timm) is a
catalogue entry's architecture at full size or shrunk through timm model arguments: its
`config.json` as the published repos hold it (`published_config`), the names, shapes and dtypes of its tensors, and the input size
and seed. The tensors themselves are not stored: `seeded_state` makes them from the seed (so
full-size cases cost a few KB of fixture), `write_repo` lays them out as the published repo holds
them (`pytorch_model.bin` written as `torch.save` writes it, and `model.safetensors` where the repo
has one), and `fixtures/published.npz` holds the features timm gives for them.
"""

from __future__ import annotations

import json
import math
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors.numpy

FIXTURES = Path(__file__).parent / "fixtures"
CASES_FILE = FIXTURES / "published.json"
FEATURES_FILE = FIXTURES / "published.npz"
BATCH = 2
# what timm's export leaves out of pretrained_cfg, and the None values it keeps
_SOURCE_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict")
_KEPT_IF_NONE = ("pool_size", "first_conv", "classifier")
# torch storage class of each dtype a timm state dict holds
_STORAGES = {"float32": "FloatStorage", "int64": "LongStorage"}


def cases() -> dict[str, dict]:
    """Case id -> {entry, architecture, model_args, channels, size, seed, config, state}."""
    return json.loads(CASES_FILE.read_text(encoding="utf-8"))


def published_config(pretrained_cfg: Mapping, num_features: int, model_args: Mapping) -> dict:
    """`config.json` as the published repos hold it (timm 0.9's export): `num_classes` 0 and
    `num_features` at the top, `model_args` only if the model needs them (never `in_chans`: a
    greyscale checkpoint says so only through its first conv), and the architecture's own
    ImageNet `pretrained_cfg` (timm's `model.pretrained_cfg`) without its download source, not
    updated for the channels, size or classes of the model."""
    cfg = {
        key: value
        for key, value in pretrained_cfg.items()
        if key not in _SOURCE_KEYS and (value is not None or key in _KEPT_IF_NONE)
    }
    config = {
        "architecture": cfg.pop("architecture"),
        "num_classes": 0,
        "num_features": num_features,
        "global_pool": "avg",
    }
    if model_args:
        config["model_args"] = dict(model_args)
    return json.loads(json.dumps({**config, "pretrained_cfg": cfg}))


def seeded_state(spec: Mapping[str, list], seed: int) -> dict[str, np.ndarray]:
    """Tensors for `spec` (name -> [shape, dtype]) drawn from `seed`, each from its own stream.

    Only `Generator.random` (uniform doubles, a stable stream) is used. Weights have variance
    1 / fan-in; norm scales and layer scales lie in [0.5, 1.5), biases and running means in
    [-0.2, 0.2), running variances in [0.5, 1.5): a random network that stays well conditioned
    at full depth, with no tensor left at a constant that would hide a wrong conversion.
    """
    state = {}
    for name, (shape, dtype) in spec.items():
        if dtype == "int64":  # num_batches_tracked
            state[name] = np.zeros(shape, np.int64)
            continue
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        uniform = rng.random(shape)
        leaf = name.rsplit(".", 1)[-1]
        if len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            values = (2 * uniform - 1) * math.sqrt(3 / fan_in)
        elif leaf in ("running_var", "gamma", "weight"):
            values = 0.5 + uniform
        else:
            values = 0.4 * (uniform - 0.5)
        state[name] = values.astype(np.float32)
    return state


def images(channels: int, height: int, width: int, seed: int) -> np.ndarray:
    """(batch, height, width, channels) float32 inputs in [0, 1), as the evaluation transform
    gives."""
    shape = (BATCH, height, width, channels)
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def save_torch_zip(state: Mapping[str, np.ndarray], path: Path) -> Path:
    """Write `state` as `torch.save(OrderedDict(state))` does (torch's zip format), without torch.

    The pickle is assembled opcode by opcode: an `OrderedDict` of `_rebuild_tensor_v2` calls on
    persistent storages, each storage's little-endian bytes in `data/<key>`.
    """
    items = []
    for key, (name, array) in enumerate(state.items()):
        array = np.array(array, order="C")  # ascontiguousarray would make a 0-d array 1-d
        storage = _STORAGES[array.dtype.name]
        stride = tuple(int(math.prod(array.shape[i + 1 :])) for i in range(array.ndim))
        persistent_id = (
            pickle.MARK
            + _value("storage")
            + _global("torch", storage)
            + _value(str(key))
            + _value("cpu")
            + _value(int(array.size))
            + pickle.TUPLE
            + pickle.BINPERSID
        )
        tensor = (
            _global("torch._utils", "_rebuild_tensor_v2")
            + pickle.MARK
            + persistent_id
            + _value(0)
            + _value(tuple(int(s) for s in array.shape))
            + _value(stride)
            + pickle.NEWFALSE
            + _global("collections", "OrderedDict")
            + pickle.EMPTY_TUPLE
            + pickle.REDUCE
            + pickle.TUPLE
            + pickle.REDUCE
        )
        items.append(_value(name) + tensor)
    pickled = (
        pickle.PROTO
        + b"\x02"
        + _global("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.MARK
        + b"".join(items)
        + pickle.SETITEMS
        + pickle.STOP
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for key, array in enumerate(state.values()):
            little = np.array(array, array.dtype.newbyteorder("<"), order="C")
            archive.writestr(f"archive/data/{key}", little.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def _value(value) -> bytes:
    """Opcodes pushing a plain value (its memo puts are never read back)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def write_repo(folder: Path, case: Mapping, files: tuple[str, ...]) -> Path:
    """`folder` holding `files` of the case's repo: `config.json`, `pytorch_model.bin`,
    `model.safetensors` (the same tensors)."""
    folder.mkdir(parents=True)
    state = seeded_state(case["state"], case["seed"])
    for name in files:
        if name == "config.json":
            (folder / name).write_text(json.dumps(case["config"], indent=2), encoding="utf-8")
        elif name == "pytorch_model.bin":
            save_torch_zip(state, folder / name)
        elif name == "model.safetensors":
            safetensors.numpy.save_file(state, folder / name, metadata={"format": "pt"})
        else:
            raise ValueError(f"no stand-in for {name}")
    return folder
