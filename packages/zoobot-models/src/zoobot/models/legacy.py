"""Read a legacy PyTorch checkpoint (`pytorch_model.bin`) into NumPy without torch, safely.

The published Zoobot encoders hold their weights only as `pytorch_model.bin`: torch's zip format
(torch >= 1.6), an archive with one top-level folder holding

- `data.pkl`: a pickle of the state dict, whose tensors are `torch._utils._rebuild_tensor_v2(storage,
  storage_offset, size, stride, ...)` calls (`_rebuild_parameter` around them for `nn.Parameter`) and
  whose storages are persistent ids `('storage', torch.<Type>Storage, key, location, numel)`;
- `data/<key>`: the raw bytes of each storage;
- `byteorder` (`little` or `big`; absent in older files, which are little-endian).

Unpickling runs whatever callables a pickle names, so this reader never imports them: its unpickler
resolves only a whitelist of globals (the same plain-weights subset `torch.load(weights_only=True)`
accepts) to NumPy builders here, and refuses every other global by name, before anything runs. A
file that needs more is not a plain weights file: convert it where torch is installed and you trust
it. The pre-1.6 (non-zip) torch format is refused with the same advice. Prefer `model.safetensors`:
it holds no code at all.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LegacyWeightsError",
    "UnsafeCheckpointError",
    "load_torch_checkpoint",
    "load_torch_state_dict",
]

# torch's typed storages: NumPy dtype of each (little-endian as stored; BFloat16 read as its bits)
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("u1"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}


class LegacyWeightsError(ValueError):
    """A legacy PyTorch weights file this torch-free reader cannot (or will not) read."""


class UnsafeCheckpointError(LegacyWeightsError, pickle.UnpicklingError):
    """The pickle names a global outside the plain-weights whitelist; nothing of it was run."""


def _conversion_hint(name: str) -> str:
    return (
        "If you trust the file, convert it once where torch is installed: zoobot.torch reads it "
        "with torch.load(weights_only=True) and writes model.safetensors, e.g. "
        f"`from zoobot.torch import load_encoder, save_pretrained; "
        f"save_pretrained(load_encoder({name!r}), 'converted')`, then load the 'converted' folder "
        "(or push it to the Hub). If torch refuses it too, do not load it."
    )


class _Sealed:
    """Base of every object unpickling can make besides builtins: pickled state (BUILD) is refused.

    So a pickle cannot set attributes on the whitelisted builders or storage markers (which are
    shared module-level objects) or on what they return.
    """

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"a {type(self).__name__} cannot be given pickled state")


class _StorageType(_Sealed):
    """Stand-in for `torch.<Name>Storage`: only ever a marker inside a persistent id."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


class _Storage(_Sealed):
    """One storage's elements, as a flat read-only array in its stored dtype (native byte order)."""

    __slots__ = ("array", "kind")

    def __init__(self, array: np.ndarray, kind: str):
        self.array = array
        self.kind = kind  # the storage type name


class _Tensor(_Sealed):
    """A rebuilt tensor; unpickling yields these so no pickle opcode can touch a NumPy array."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


class _Global(_Sealed):
    """A whitelisted callable as the pickle sees it (callable, but not a type: no NEWOBJ)."""

    __slots__ = ("function",)

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)


class _StateDict(collections.OrderedDict):
    """`collections.OrderedDict`; pickled state (a state dict's `_metadata`) is dropped, not set."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("an OrderedDict's pickled state must be a dict")


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise pickle.UnpicklingError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *rest) -> _Tensor:
    """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])`."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor's storage must be a persistent storage reference")
    if len(rest) > 3 or not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise pickle.UnpicklingError("malformed _rebuild_tensor_v2 arguments")
    offset = _as_int(storage_offset, "storage offset")
    shape = tuple(_as_int(n, "size") for n in size)
    steps = tuple(_as_int(s, "stride") for s in stride)
    if len(shape) != len(steps) or offset < 0 or min((*shape, *steps, 0)) < 0:
        raise pickle.UnpicklingError(
            f"invalid tensor layout: offset {offset}, size {shape}, stride {steps}"
        )
    flat = storage.array
    if math.prod(shape) == 0:
        array = np.empty(shape, flat.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(shape, steps, strict=True))
        if last >= flat.size:
            raise pickle.UnpicklingError(
                f"tensor (offset {offset}, size {shape}, stride {steps}) reaches element {last} "
                f"of a storage of {flat.size}"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[offset:],
            shape=shape,
            strides=tuple(s * flat.itemsize for s in steps),
            writeable=False,
        )
        array = np.array(view, copy=True, order="C")
    if storage.kind == "BFloat16Storage":
        # bfloat16 is the top half of a float32: widening is exact
        array = (array.astype(np.uint32) << np.uint32(16)).view(np.float32)
    elif storage.kind == "BoolStorage":
        array = array != 0
    return _Tensor(array)


def _rebuild_parameter(data, requires_grad, backward_hooks, *state) -> _Tensor:
    """`torch._utils._rebuild_parameter[_with_state]`: an `nn.Parameter` is just its tensor here."""
    if not isinstance(data, _Tensor) or len(state) > 1:
        raise pickle.UnpicklingError("malformed _rebuild_parameter arguments")
    return data


# the only globals a plain weights file may name
_ALLOWED = {
    ("collections", "OrderedDict"): _Global(_StateDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Global(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Global(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Global(_rebuild_parameter),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` globals, and storages from the archive's `data/` records."""

    def __init__(
        self, file, archive: zipfile.ZipFile, prefix: str, big_endian: bool, path: Path, hint: str
    ):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._big_endian = big_endian
        self._path = path
        self._hint = hint
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"{self._path}: refusing to unpickle the global `{module}.{name}`: this is not a "
                "plain weights file (only tensors in dicts are read without torch, and no code in "
                f"it was run). {self._hint}"
            ) from None

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and not isinstance(pid[4], bool)
            and pid[4] >= 0
        ):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel = pid
        cached = self._storages.get(key)
        if cached is not None:
            if cached.kind != storage_type.name or cached.array.size != numel:
                raise pickle.UnpicklingError(f"storage {key!r} is referenced with two types/sizes")
            return cached
        record = f"{self._prefix}data/{key}"
        try:
            info = self._archive.getinfo(record)
        except KeyError:
            raise pickle.UnpicklingError(f"the archive has no storage record {record!r}") from None
        dtype = storage_type.dtype
        if info.file_size != numel * dtype.itemsize:
            raise pickle.UnpicklingError(
                f"storage record {record!r} holds {info.file_size} bytes, not the "
                f"{numel} x {dtype.itemsize} its reference says"
            )
        raw = self._archive.read(info)
        if self._big_endian:
            array = np.frombuffer(raw, dtype.newbyteorder(">")).astype(dtype.newbyteorder("="))
        else:
            array = np.frombuffer(raw, dtype)
        array.flags.writeable = False
        storage = _Storage(array, storage_type.name)
        self._storages[key] = storage
        return storage


def _prefix(archive: zipfile.ZipFile, path: Path, hint: str) -> str:
    """The `<folder>/` prefix of the archive's records (torch writes them all under one folder)."""
    prefixes = {
        name[: -len("data.pkl")]
        for name in archive.namelist()
        if name.endswith("/data.pkl") and name.count("/") == 1
    }
    if len(prefixes) != 1:
        raise LegacyWeightsError(
            f"{path} is a zip file but not a torch checkpoint (expected one <folder>/data.pkl; "
            f"a TorchScript archive or another format?). {hint}"
        )
    return prefixes.pop()


def _plain(value: Any, seen: dict[int, Any]) -> Any:
    """Unpickled containers with `_Tensor`s -> plain dicts/lists/tuples of NumPy arrays."""
    if isinstance(value, _Tensor):
        if id(value) not in seen:  # a tensor pickled once and referenced twice stays one array
            seen[id(value)] = value.array
        return seen[id(value)]
    if isinstance(value, dict):
        return {key: _plain(item, seen) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item, seen) for item in value)
    return value


def load_torch_checkpoint(path: str | os.PathLike, name: str | None = None) -> Any:
    """Whatever a torch zip checkpoint holds, with tensors as NumPy arrays (float32 for bfloat16).

    Only plain weights are read: containers (dicts, OrderedDicts, lists, tuples), Python scalars
    and strings, and tensors/`nn.Parameter`s of the standard dtypes. Any other global in the pickle
    raises `UnsafeCheckpointError` naming it, before anything is called; a pre-1.6 (non-zip) torch
    file or a malformed one raises `LegacyWeightsError`. `name` (default: the file's folder) is
    what the messages tell you to pass to `zoobot.torch.load_encoder` to convert the file.
    """
    path = Path(path)
    hint = _conversion_hint(name or str(path.parent))
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            head = file.read(512)
        if head[:1] == b"\x80" or head[257:262] == b"ustar":
            raise LegacyWeightsError(
                f"{path} is in torch's pre-1.6 serialization format (a bare pickle, not a zip "
                "archive), which cannot be read safely without torch. Re-save it with torch >= 1.6 "
                f"or, better, convert it to safetensors. {hint}"
            )
        raise LegacyWeightsError(f"{path} is not a PyTorch checkpoint (neither zip nor pickle)")
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _prefix(archive, path, hint)
            big_endian = False
            if f"{prefix}byteorder" in archive.namelist():
                order = archive.read(f"{prefix}byteorder").strip()
                if order not in (b"little", b"big"):
                    raise LegacyWeightsError(f"{path}: unknown byte order {order[:20]!r}")
                big_endian = order == b"big"
            pickled = archive.read(f"{prefix}data.pkl")
            unpickler = _RestrictedUnpickler(
                io.BytesIO(pickled), archive, prefix, big_endian, path, hint
            )
            result = unpickler.load()
        return _plain(result, {})
    except LegacyWeightsError:
        raise
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
        TypeError,
        ValueError,
        IndexError,
        KeyError,
        AttributeError,
        RecursionError,
        OverflowError,
        MemoryError,
    ) as err:
        raise LegacyWeightsError(
            f"{path}: malformed torch checkpoint ({type(err).__name__}: {err})"
        ) from err


def load_torch_state_dict(
    path: str | os.PathLike, name: str | None = None
) -> dict[str, np.ndarray]:
    """The state dict in a `pytorch_model.bin` (torch zip format), as NumPy arrays, without torch.

    Like `torch.load(path, weights_only=True)` for a plain state dict: the file must hold a mapping
    of tensor names to tensors. `name` is as for `load_torch_checkpoint`.
    """
    path = Path(path)
    name = name or str(path.parent)
    state = load_torch_checkpoint(path, name)
    if not isinstance(state, Mapping):
        raise LegacyWeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict of tensors. "
            f"{_conversion_hint(name)}"
        )
    bad = sorted(
        str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)
    )
    if bad:
        raise LegacyWeightsError(
            f"{path} is not a plain state dict: non-tensor entries {bad[:10]}. "
            f"{_conversion_hint(name)}"
        )
    return dict(state)
