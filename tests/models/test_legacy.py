"""zoobot.models.legacy: torch's zip checkpoints (`pytorch_model.bin`) read without torch, safely.

Fixtures written by torch itself (tests/tf/fixtures/make_timm_fixtures.py, `legacy`):
`tests/tf/fixtures/timm/test_convnext_legacy/` (test_convnext as timm saves it without safetensors, as the published
Zoobot encoders are) and `fixtures/legacy/` (every dtype and view layout, with torch's values in
`dtypes.npz`; malicious pickles; the pre-1.6 format). Edge cases torch would never write (other
byte order, out-of-bounds views, forbidden opcodes) are crafted here opcode by opcode.

Exact (bit-equal) comparisons here run the same weights on the same inputs with the same
batch shapes in one process (or processes with the same threads): the same kernels, hence the
same numbers, on any CPU; results that change kernels or batching carry tolerances.
"""

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from zoobot.models.legacy import (
    LegacyWeightsError,
    UnsafeCheckpointError,
    load_torch_checkpoint,
    load_torch_state_dict,
)

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
TIMM = Path(__file__).parents[1] / "tf" / "fixtures" / "timm"
CONVNEXT = TIMM / "test_convnext"
CONVNEXT_LEGACY = TIMM / "test_convnext_legacy"


# --- files torch wrote ----------------------------------------------------------------------------


def test_every_dtype_and_view_equals_torchs_values():
    state = load_torch_state_dict(LEGACY / "dtypes.bin")
    expected = np.load(LEGACY / "dtypes.npz")
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        got, want = state[key], expected[key]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        assert np.array_equal(got, want), key
    assert state["bfloat16"].dtype == np.float32  # widened exactly
    assert state["half_slice"].dtype == np.float16
    assert state["scalar"].shape == () and state["empty"].shape == (0, 3)
    # views that shared one storage in torch are independent, writable, C-contiguous copies
    for key in ("base", "transposed", "slice", "strided", "expanded"):
        assert state[key].flags.c_contiguous and state[key].flags.writeable, key
    assert not np.shares_memory(state["slice"], state["base"])
    state["slice"][0, 0] = 1e6
    assert state["base"][1, 2] == expected["base"][1, 2]


def test_legacy_convnext_holds_the_same_tensors_as_its_safetensors():
    legacy = load_torch_state_dict(CONVNEXT_LEGACY / "pytorch_model.bin")
    reference = safetensors.numpy.load_file(CONVNEXT / "model.safetensors")
    assert sorted(legacy) == sorted(reference)
    for key, value in reference.items():
        assert legacy[key].dtype == value.dtype and np.array_equal(legacy[key], value), key


@pytest.mark.parametrize(
    ("file", "global_name"),
    [
        ("malicious_eval.bin", r"`(__builtin__|builtins)\.eval`"),
        ("malicious_system.bin", "system`"),
    ],
)
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, monkeypatch, file, global_name):
    monkeypatch.chdir(tmp_path)  # where the payloads would create PWNED_eval / PWNED_system
    with pytest.raises(UnsafeCheckpointError, match=global_name) as err:
        load_torch_state_dict(LEGACY / file)
    message = str(err.value)
    assert str(LEGACY / file) in message and "not a plain weights file" in message
    assert "weights_only=True" in message and "save_pretrained" in message
    assert isinstance(err.value, pickle.UnpicklingError) and isinstance(err.value, ValueError)
    assert list(tmp_path.iterdir()) == []


def test_pre_16_format_is_refused_with_a_fix():
    with pytest.raises(LegacyWeightsError, match="pre-1.6 serialization format") as err:
        load_torch_state_dict(LEGACY / "pre16.bin", name="my/folder")
    assert "save_pretrained(load_encoder('my/folder'), 'converted')" in str(err.value)


def test_not_a_checkpoint(tmp_path):
    renamed = tmp_path / "pytorch_model.bin"
    shutil.copy(CONVNEXT / "model.safetensors", renamed)
    with pytest.raises(LegacyWeightsError, match="not a PyTorch checkpoint"):
        load_torch_state_dict(renamed)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("model/code/__torch__.py", "")
    with pytest.raises(LegacyWeightsError, match="not a torch checkpoint"):
        load_torch_state_dict(tmp_path / "other.zip")


# --- checkpoints crafted opcode by opcode --------------------------------------------------------


def prim(value) -> bytes:
    """Opcodes pushing a plain value (no PROTO/STOP; its memo puts are never read back)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def glob(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def tensor(key, storage="FloatStorage", numel=4, offset=0, size=(4,), stride=(1,)) -> bytes:
    """`_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())` as torch pickles it."""
    persistent_id = (
        pickle.MARK
        + prim("storage")
        + glob("torch", storage)
        + prim(key)
        + prim("cpu")
        + prim(numel)
        + pickle.TUPLE
        + pickle.BINPERSID
    )
    return (
        glob("torch._utils", "_rebuild_tensor_v2")
        + pickle.MARK
        + persistent_id
        + prim(offset)
        + prim(tuple(size))
        + prim(tuple(stride))
        + pickle.NEWFALSE
        + glob("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.TUPLE
        + pickle.REDUCE
    )


def state_dict(**entries: bytes) -> bytes:
    items = b"".join(prim(key) + value for key, value in entries.items())
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS


def write_checkpoint(
    path: Path, pickled: bytes, records: dict, byteorder: bytes | None = b"little"
):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled + pickle.STOP)
        if byteorder is not None:
            archive.writestr("archive/byteorder", byteorder)
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)
    return path


FLOATS = np.array([1.5, -2.25, 3.0, 1e-3], np.float32)


@pytest.mark.parametrize("byteorder", [b"little", None, b"big"])
def test_crafted_checkpoints_in_either_byte_order(tmp_path, byteorder):
    order = ">" if byteorder == b"big" else "<"
    longs = np.array([-(2**60), 5, -1], np.int64)
    halves = np.array([0.5, -65504, 1e-4], np.float16)
    bfloat_bits = np.array([0x3FC0, 0xC120, 0x0001], np.uint16)  # 1.5, -10.0, tiny subnormal
    records = {
        "0": FLOATS.astype(f"{order}f4").tobytes(),
        "1": longs.astype(f"{order}i8").tobytes(),
        "2": halves.astype(f"{order}f2").tobytes(),
        "3": bfloat_bits.astype(f"{order}u2").tobytes(),
    }
    pickled = state_dict(
        w=tensor("0"),
        n=tensor("1", "LongStorage", numel=3, size=(3,)),
        h=tensor("2", "HalfStorage", numel=3, offset=1, size=(2,)),
        b=tensor("3", "BFloat16Storage", numel=3, size=(3,)),
        w_t=tensor("0", size=(2, 2), stride=(1, 2)),
    )
    state = load_torch_state_dict(write_checkpoint(tmp_path / "x.bin", pickled, records, byteorder))
    assert np.array_equal(state["w"], FLOATS) and state["w"].dtype.isnative
    assert np.array_equal(state["n"], longs)
    assert np.array_equal(state["h"], halves[1:]) and state["h"].dtype == np.float16
    bfloats = (bfloat_bits.astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(state["b"], bfloats) and bfloats[0] == 1.5 and bfloats[1] == -10.0
    assert np.array_equal(state["w_t"], FLOATS.reshape(2, 2).T)


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ({"size": (3,), "stride": (2,)}, "reaches element 4 of a storage of 4"),
        ({"offset": 4, "size": (1,)}, "reaches element 4 of a storage of 4"),
        ({"size": (2, 3), "stride": (3, 1)}, "reaches element 5"),
        ({"size": (2,), "stride": (-1,)}, "invalid tensor layout"),
        ({"offset": -1, "size": (1,)}, "invalid tensor layout"),
        ({"size": (2, 2), "stride": (1,)}, "invalid tensor layout"),
        ({"numel": 5}, "holds 16 bytes, not the 5 x 4"),
        ({"size": (1.5,)}, "size must be an int"),
    ],
)
def test_views_outside_their_storage_are_refused(tmp_path, layout, match):
    path = write_checkpoint(tmp_path / "x.bin", state_dict(w=tensor("0", **layout)), {"0": FLOATS})
    with pytest.raises(LegacyWeightsError, match=match):
        load_torch_state_dict(path)


@pytest.mark.parametrize(
    ("pickled", "match"),
    [
        # forbidden globals, by every opcode that imports one
        (glob("builtins", "eval") + prim(("1",)) + pickle.REDUCE, "`builtins.eval`"),
        (pickle.PROTO + b"\x04" + prim("os") + prim("system") + pickle.STACK_GLOBAL, "`os.system`"),
        (glob("copyreg", "_reconstructor"), "`copyreg._reconstructor`"),
        (state_dict(w=tensor("0", storage="QInt8Storage")), "`torch.QInt8Storage`"),
        (glob("torch", "load"), "`torch.load`"),
        (glob("numpy", "frombuffer"), "`numpy.frombuffer`"),
    ],
)
def test_forbidden_globals_are_named(tmp_path, pickled, match):
    path = write_checkpoint(tmp_path / "x.bin", pickled, {"0": FLOATS})
    with pytest.raises(UnsafeCheckpointError, match=match):
        load_torch_checkpoint(path)


def test_crafted_eval_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = glob("builtins", "eval") + prim(("open('PWNED', 'w').close()",)) + pickle.REDUCE
    path = write_checkpoint(tmp_path / "x.bin", state_dict(w=tensor("0"), p=payload), {"0": FLOATS})
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        load_torch_state_dict(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("pickled", "match"),
    [
        # pickled state cannot be set on the whitelisted builders (shared objects) or on tensors
        (glob("torch._utils", "_rebuild_tensor_v2") + prim({"a": 1}) + pickle.BUILD, "state"),
        (glob("torch", "FloatStorage") + prim((None, {"name": "x"})) + pickle.BUILD, "state"),
        (tensor("0") + prim({"a": 1}) + pickle.BUILD, "cannot be given pickled state"),
        # the OrderedDict builder is no class to NEWOBJ
        (glob("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.NEWOBJ, "NEWOBJ"),
        (glob("torch", "FloatStorage") + pickle.EMPTY_TUPLE + pickle.REDUCE, "not callable"),
        (pickle.MARK + prim("storage") + pickle.TUPLE + pickle.BINPERSID, "persistent id"),
        (state_dict(w=tensor("7")), "no storage record 'archive/data/7'"),
    ],
)
def test_malformed_pickles_are_refused(tmp_path, pickled, match):
    path = write_checkpoint(tmp_path / "x.bin", pickled, {"0": FLOATS})
    with pytest.raises(LegacyWeightsError, match=match):
        load_torch_checkpoint(path)
    # nothing leaked into the reader: a good checkpoint still reads the same
    good = write_checkpoint(tmp_path / "good.bin", state_dict(w=tensor("0")), {"0": FLOATS})
    assert np.array_equal(load_torch_state_dict(good)["w"], FLOATS)


def test_state_dict_must_be_a_mapping_of_tensors(tmp_path):
    listed = pickle.EMPTY_LIST + tensor("0") + pickle.APPEND
    path = write_checkpoint(tmp_path / "list.bin", listed, {"0": FLOATS})
    assert np.array_equal(load_torch_checkpoint(path)[0], FLOATS)
    with pytest.raises(LegacyWeightsError, match="holds a list, not a state dict"):
        load_torch_state_dict(path)
    mixed = write_checkpoint(
        tmp_path / "mixed.bin", state_dict(w=tensor("0"), step=prim(3)), {"0": FLOATS}
    )
    with pytest.raises(LegacyWeightsError, match=r"non-tensor entries \['step'\]"):
        load_torch_state_dict(mixed)


def test_ordered_dict_metadata_and_parameters(tmp_path):
    """timm's state dicts: an OrderedDict with `_metadata` state; nn.Parameter wrappers."""
    metadata = prim({"_metadata": {"": {"version": 1}}})
    parameter = (
        glob("torch._utils", "_rebuild_parameter")
        + pickle.MARK
        + tensor("0")
        + pickle.NEWTRUE
        + glob("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.TUPLE
        + pickle.REDUCE
    )
    pickled = (
        pickle.PROTO
        + b"\x02"
        + glob("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + metadata
        + pickle.BUILD
        + pickle.MARK
        + prim("p")
        + parameter
        + pickle.SETITEMS
    )
    state = load_torch_state_dict(write_checkpoint(tmp_path / "x.bin", pickled, {"0": FLOATS}))
    assert type(state) is dict and list(state) == ["p"]
    assert np.array_equal(state["p"], FLOATS)


def test_shared_tensor_stays_one_array(tmp_path):
    # a tensor referenced twice (tied weights) is memoised by pickle: one array, twice
    pickled = (
        pickle.PROTO
        + b"\x02"
        + pickle.EMPTY_DICT
        + pickle.MARK
        + prim("a")
        + tensor("0")
        + pickle.BINPUT
        + b"\xf0"
        + prim("b")
        + pickle.BINGET
        + b"\xf0"
        + pickle.SETITEMS
    )
    state = load_torch_state_dict(write_checkpoint(tmp_path / "x.bin", pickled, {"0": FLOATS}))
    assert state["a"] is state["b"]


def test_storage_size_is_checked_before_reading(tmp_path):
    # a reference claiming a 4 TiB storage is refused, not allocated
    path = write_checkpoint(
        tmp_path / "x.bin", state_dict(w=tensor("0", numel=2**40)), {"0": FLOATS}
    )
    with pytest.raises(LegacyWeightsError, match="holds 16 bytes"):
        load_torch_state_dict(path)
