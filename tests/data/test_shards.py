"""TFRecord shards: every field round-trips, the bytes are standard TFRecord/tf.train.Example, damage
is caught, interrupted writes resume to the same result, and bad catalogs fail naming row and column.
"""

import io
import json
import re
import struct

import google_crc32c
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from zoobot.data.shards import (
    SIDECAR,
    CorruptShardError,
    ShardError,
    read_shards,
    verify_shards,
    write_shards,
)
from zoobot.data.shards.example import Example, decode_example
from zoobot.data.shards.tfrecord import frame_record, masked_crc32c
from zoobot.shared import get_schema

SCHEMA = "gz_rings"
LABEL_COLS = get_schema(SCHEMA).label_cols
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
FIXED_FEATURES = {"image", "format", "height", "width", "channels", "id_str"}

# (stored format, PIL mode, channels tf.io.decode_image gives, file suffix); the last one is a JPEG
# behind a .png name, to check the format comes from the bytes.
KINDS = [
    ("jpeg", "RGB", 3, ".jpg"),
    ("jpeg", "L", 1, ".jpg"),
    ("png", "RGB", 3, ".png"),
    ("png", "RGBA", 4, ".png"),
    ("png", "L", 1, ".png"),
    ("png", "P", 3, ".png"),
    ("jpeg", "RGB", 3, ".png"),
]


def _image_bytes(rng, image_format, mode, height, width):
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format.upper())
    return buffer.getvalue()


def make_catalog(folder, n=40, seed=0):
    """n small images of every kind, ids with leading zeros, and vote counts."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image_format, mode, channels, suffix = KINDS[i % len(KINDS)]
        height, width = 16 + i % 3, 20 + i % 5
        path = folder / f"galaxy_{i}{suffix}"
        path.write_bytes(_image_bytes(rng, image_format, mode, height, width))
        labels = dict(zip(LABEL_COLS, rng.integers(0, 30, len(LABEL_COLS)) * 1.0, strict=True))
        rows.append(
            {
                "id_str": f"{i:04d}",
                "file_loc": str(path),
                **labels,
                "_expected": (image_format, height, width, channels),
            }
        )
    return pd.DataFrame(rows)


def write(catalog, out_dir, **kwargs):
    kwargs = {"schema": SCHEMA, "shard_size": 5, "splits": FRACTIONS, "workers": 1, **kwargs}
    return write_shards(catalog.drop(columns="_expected"), out_dir, progress=False, **kwargs)


def shard_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tfrecord"))}


def inodes(folder):
    return {p.name: p.stat().st_ino for p in folder.glob("*.tfrecord")}


@pytest.fixture
def catalog(tmp_path):
    return make_catalog(tmp_path / "images")


# An independent decoder, written from the published formats rather than with the package's code:
# TFRecord framing (tensorflow/core/lib/io/record_writer.h) and the protobuf wire format.
def _mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records_by_hand(data):
    records, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        assert length_crc == _mask(google_crc32c.value(data[pos : pos + 8]))
        payload = data[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        assert data_crc == _mask(google_crc32c.value(payload))
        records.append((pos, payload))
        pos += 16 + length
    return records


def _varint(buf, pos):
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def wire_fields(buf):
    """(field number, wire type, value) of every field in a serialised protobuf message."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire_type == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise AssertionError(f"unexpected wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def only_field(buf, number):
    """The value of the single length-delimited field of a message, checking its number."""
    [(found, wire_type, value)] = wire_fields(buf)
    assert (found, wire_type) == (number, 2)
    return value


def example_by_hand(payload):
    """Example.features=1 -> Features.feature=1 (map entries key=1, value=2) -> Feature oneof
    bytes_list=1 / float_list=2 / int64_list=3, each with value=1 (floats and int64s packed)."""
    decoded = {}
    for number, wire_type, entry in wire_fields(only_field(payload, 1)):
        assert (number, wire_type) == (1, 2)
        parts = {n: v for n, w, v in wire_fields(entry)}
        [(kind, wire_type, value_list)] = wire_fields(parts[2])
        assert wire_type == 2
        if kind == 1:
            assert all((n, w) == (1, 2) for n, w, v in wire_fields(value_list))
            values, name = [v for n, w, v in wire_fields(value_list)], "bytes"
        elif kind == 2:
            packed = only_field(value_list, 1)
            values, name = list(struct.unpack(f"<{len(packed) // 4}f", packed)), "float"
        else:
            assert kind == 3
            packed, values, pos = only_field(value_list, 1), [], 0
            while pos < len(packed):
                value, pos = _varint(packed, pos)
                values.append(value)
            name = "int64"
        decoded[parts[1].decode()] = (name, values)
    return decoded


def test_every_field_round_trips(tmp_path, catalog):
    sidecar = write(catalog, tmp_path / "shards")
    galaxies = list(read_shards(tmp_path / "shards"))
    assert sorted(g["id_str"] for g in galaxies) == catalog["id_str"].tolist()
    by_id = catalog.set_index("id_str")
    for galaxy in galaxies:
        row = by_id.loc[galaxy["id_str"]]
        assert isinstance(galaxy["id_str"], str)
        with open(row["file_loc"], "rb") as f:
            assert galaxy["image"] == f.read()
        image_format, height, width, channels = row["_expected"]
        assert galaxy["format"] == image_format
        assert (galaxy["height"], galaxy["width"]) == (height, width)
        assert galaxy["channels"] == channels
        assert np.asarray(Image.open(io.BytesIO(galaxy["image"]))).shape[:2] == (height, width)
        assert galaxy["labels"] == {col: float(np.float32(row[col])) for col in LABEL_COLS}
    assert sidecar["schema"] == SCHEMA and sidecar["label_cols"] == LABEL_COLS
    assert {name: split["count"] for name, split in sidecar["splits"].items()} == {
        "train": 32,
        "validation": 4,
        "test": 4,
    }
    assert json.loads((tmp_path / "shards" / SIDECAR).read_text()) == sidecar
    assert verify_shards(tmp_path / "shards")["records"] == 40


def test_framing_matches_bytes_written_by_tensorflow():
    # A record of a real TensorFlow event file and a masked CRC from one, both quoted in the tests
    # of TensorBoard's TFRecord reader (tensorboard/data/server/tf_record.rs, masked_crc.rs).
    data = b"\x09\x00\x00\x80\x38\x99\xd6\xd7\x41\x1a\x0dbrain.Event:2"
    header = b"\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7f\x4b\x22"
    assert frame_record(data) == header + data + b"\x12\x4b\x36\xab"
    assert masked_crc32c(b"\x1a\x11CRC test, one two") == 0x5794D08A


def test_example_matches_bytes_serialised_by_tensorflow():
    # tf.train.Example(...).SerializeToString() for serialize_example(False, 4, b'goat', 0.9876) in
    # TensorFlow's "TFRecord and tf.train.Example" tutorial.
    tensorflow_bytes = (
        b"\nR\n\x11\n\x08feature0\x12\x05\x1a\x03\n\x01\x00\n\x11\n\x08feature1\x12\x05\x1a\x03"
        b"\n\x01\x04\n\x14\n\x08feature2\x12\x08\n\x06\n\x04goat\n\x14\n\x08feature3\x12\x08\x12"
        b"\x06\n\x04[\xd3|?"
    )
    expected = {
        "feature0": ("int64", [0]),
        "feature1": ("int64", [4]),
        "feature2": ("bytes", [b"goat"]),
        "feature3": ("float", [float(np.float32(0.9876))]),
    }
    assert decode_example(tensorflow_bytes) == expected
    assert example_by_hand(tensorflow_bytes) == expected
    parsed = Example.FromString(tensorflow_bytes)
    assert parsed.SerializeToString(deterministic=True) == tensorflow_bytes


def test_shards_decode_with_an_independent_reader(tmp_path, catalog):
    write(catalog, tmp_path / "shards")
    by_id = catalog.set_index("id_str")
    seen = 0
    for data in shard_files(tmp_path / "shards").values():
        for _, payload in records_by_hand(data):
            features = example_by_hand(payload)
            row = by_id.loc[features["id_str"][1][0].decode()]
            image_format, height, width, channels = row["_expected"]
            with open(row["file_loc"], "rb") as f:
                assert features["image"] == ("bytes", [f.read()])
            assert features["format"] == ("bytes", [image_format.encode()])
            assert features["height"] == ("int64", [height])
            assert features["width"] == ("int64", [width])
            assert features["channels"] == ("int64", [channels])
            for col in LABEL_COLS:
                assert features[col] == ("float", [float(np.float32(row[col]))])
            assert set(features) == FIXED_FEATURES | set(LABEL_COLS)
            seen += 1
    assert seen == len(catalog)


def test_process_pool_writes_the_same_bytes_as_one_process(tmp_path, catalog):
    one = write(catalog, tmp_path / "one", workers=1)
    pool = write(catalog, tmp_path / "pool", workers=2)
    assert one == pool
    assert shard_files(tmp_path / "one") == shard_files(tmp_path / "pool")


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_names_the_shard_and_record_of_a_flipped_byte(tmp_path, catalog):
    out = tmp_path / "shards"
    write(catalog, out)
    shard = out / "train-00002-of-00007.tfrecord"
    records = records_by_hand(shard.read_bytes())
    where = r"train-00002-of-00007\.tfrecord: record"
    _flip(shard, records[3][0] + 12 + len(records[3][1]) // 2)
    with pytest.raises(CorruptShardError, match=rf"{where} 3 .*data CRC"):
        verify_shards(out)
    _flip(shard, records[3][0] + 12 + len(records[3][1]) // 2)
    _flip(shard, records[1][0])
    with pytest.raises(CorruptShardError, match=rf"{where} 1 .*length CRC"):
        verify_shards(out)
    _flip(shard, records[1][0])
    assert verify_shards(out)["shards"] == 9


def test_verify_compares_with_the_sidecar(tmp_path, catalog):
    out = tmp_path / "shards"
    sidecar = write(catalog, out)
    edited = json.loads(json.dumps(sidecar))
    edited["splits"]["test"]["shards"][0]["count"] += 1
    (out / SIDECAR).write_text(json.dumps(edited))
    with pytest.raises(CorruptShardError, match=r"test-00000-of-00001\.tfrecord: 4 records"):
        verify_shards(out)
    edited = json.loads(json.dumps(sidecar))
    edited["label_cols"] = LABEL_COLS[:1]
    edited["features"].pop(LABEL_COLS[1])
    (out / SIDECAR).write_text(json.dumps(edited))
    with pytest.raises(CorruptShardError, match=rf"unexpected \['{LABEL_COLS[1]}'\]"):
        verify_shards(out)
    (out / SIDECAR).write_text('{"format_version": 1, "splits": {')
    with pytest.raises(ShardError, match=r"shards\.json is not valid JSON"):
        verify_shards(out)
    (out / SIDECAR).unlink()
    with pytest.raises(ShardError, match="did not finish"):
        verify_shards(out)


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_write_resumes_to_the_uninterrupted_result(tmp_path, catalog, workers):
    reference = write(catalog, tmp_path / "reference")
    last = list(read_shards(tmp_path / "reference", split="test"))[-1]["id_str"]
    row = catalog.index[catalog["id_str"] == last][0]
    image = catalog.loc[row, "file_loc"]
    with open(image, "rb") as f:
        good = f.read()
    with open(image, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 damaged in transit")

    out = tmp_path / "shards"
    with pytest.raises(ShardError, match=rf"catalog row {row} \(id_str '{last}'\), file .*{image}"):
        write(catalog, out, workers=workers)
    assert not (out / SIDECAR).exists()
    assert not list(out.glob(".*.part"))
    partial = shard_files(out)
    assert "test-00000-of-00001.tfrecord" not in partial
    assert partial.items() <= shard_files(tmp_path / "reference").items()
    if workers == 1:
        assert len(partial) == 8  # every shard planned before the damaged one
    kept = inodes(out)

    with open(image, "wb") as f:
        f.write(good)
    assert write(catalog, out, workers=workers) == reference
    assert shard_files(out) == shard_files(tmp_path / "reference")
    assert {name: inode for name, inode in inodes(out).items() if name in kept} == kept


def test_rerun_rewrites_only_missing_damaged_or_changed_shards(tmp_path, catalog):
    out = tmp_path / "shards"
    reference = write(catalog, out)
    original, before = shard_files(out), inodes(out)
    (out / SIDECAR).unlink()
    (out / "train-00000-of-00007.tfrecord").unlink()
    _flip(out / "train-00001-of-00007.tfrecord", 100)
    leftover = out / ".train-00003-of-00007.tfrecord.k1ll3d.part"  # what a SIGKILL leaves behind
    leftover.write_bytes(b"half a shard")

    assert write(catalog, out) == reference
    assert shard_files(out) == original
    assert not leftover.exists()
    # A rewritten shard is a new file renamed over the old name, so it has a new inode (the deleted
    # shard's inode may be reused, so only the damaged and untouched ones are compared).
    rewritten = {name for name, inode in inodes(out).items() if before[name] != inode}
    assert "train-00001-of-00007.tfrecord" in rewritten
    assert rewritten <= {"train-00000-of-00007.tfrecord", "train-00001-of-00007.tfrecord"}

    changed = catalog.copy()
    some_id = next(read_shards(out, split="validation"))["id_str"]
    changed.loc[changed["id_str"] == some_id, LABEL_COLS[0]] = 99.0
    before = inodes(out)
    with pytest.raises(ShardError, match="shards of an earlier run with other inputs.*overwrite"):
        write(changed, out)
    assert inodes(out) == before and (out / SIDECAR).is_file()
    write(changed, out, overwrite=True)
    rewritten = {name for name, inode in inodes(out).items() if before[name] != inode}
    assert rewritten == {"validation-00000-of-00001.tfrecord"}

    write(catalog, out, shard_size=8, overwrite=True)
    assert sorted(shard_files(out)) == [
        "test-00000-of-00001.tfrecord",
        "train-00000-of-00004.tfrecord",
        "train-00001-of-00004.tfrecord",
        "train-00002-of-00004.tfrecord",
        "train-00003-of-00004.tfrecord",
        "validation-00000-of-00001.tfrecord",
    ]
    assert verify_shards(out)["records"] == 40


def _ids_by_split(folder):
    splits = {}
    for galaxy in read_shards(folder):
        splits.setdefault(galaxy["split"], []).append(galaxy["id_str"])
    return splits


def test_splits_are_deterministic_for_a_seed(tmp_path, catalog):
    write(catalog, tmp_path / "a", seed=7)
    write(catalog, tmp_path / "b", seed=7)
    write(catalog, tmp_path / "c", seed=8)
    assert _ids_by_split(tmp_path / "a") == _ids_by_split(tmp_path / "b")
    assert set(_ids_by_split(tmp_path / "a")["test"]) != set(_ids_by_split(tmp_path / "c")["test"])
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")


def test_splits_from_a_column_or_none(tmp_path, catalog):
    catalog["which"] = np.where(np.arange(len(catalog)) % 4 == 0, "test", "train")
    sidecar = write(catalog, tmp_path / "column", splits="which")
    assert sidecar["split_column"] == "which"
    splits = _ids_by_split(tmp_path / "column")
    assert sorted(splits["test"]) == catalog.loc[catalog["which"] == "test", "id_str"].tolist()
    assert len(splits["train"]) == 30

    sidecar = write(catalog, tmp_path / "one", splits={"train": 1.0}, shard_size=100)
    assert list(sidecar["splits"]) == ["train"] and sidecar["splits"]["train"]["count"] == 40
    assert [s["file"] for s in sidecar["splits"]["train"]["shards"]] == [
        "train-00000-of-00001.tfrecord"
    ]
    assert len(list(read_shards(tmp_path / "column", split="test"))) == 10
    with pytest.raises(ShardError, match="no split 'validation'"):
        next(read_shards(tmp_path / "column", split="validation"))


def test_default_splits_are_the_split_column_else_80_10_10(tmp_path, catalog):
    sidecar = write(catalog, tmp_path / "fractions", splits=None)
    assert sidecar["split_fractions"] == FRACTIONS and sidecar["split_column"] is None
    assert {name: split["count"] for name, split in sidecar["splits"].items()} == {
        "train": 32,
        "validation": 4,
        "test": 4,
    }
    catalog["split"] = np.where(np.arange(len(catalog)) % 4 == 0, "test", "train")
    sidecar = write(catalog, tmp_path / "column", splits=None)
    assert sidecar["split_column"] == "split" and sidecar["split_fractions"] is None
    splits = _ids_by_split(tmp_path / "column")
    assert sorted(splits["test"]) == catalog.loc[catalog["split"] == "test", "id_str"].tolist()
    assert list(sidecar["splits"]) == ["train", "test"]


def test_shards_do_not_depend_on_catalog_row_order(tmp_path, catalog):
    write(catalog, tmp_path / "a")
    write(catalog.sample(frac=1, random_state=5), tmp_path / "b")
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")


def test_without_labels(tmp_path, catalog):
    sidecar = write(catalog, tmp_path / "shards", schema=None)
    assert sidecar["schema"] is None and sidecar["label_cols"] == []
    galaxy = next(read_shards(tmp_path / "shards"))
    assert galaxy["labels"] == {}
    assert verify_shards(tmp_path / "shards")["records"] == 40


def _set(catalog, row, column, value):
    catalog = catalog.copy()
    catalog[column] = catalog[column].astype(object)
    catalog.loc[row, column] = value
    return catalog


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (
            lambda c, tmp: _set(c, 3, "file_loc", str(tmp / "nowhere.jpg")),
            {},
            r"file_loc points to no file in 1 row\(s\): row 3 \(id_str '0003'\) "
            r"\(first: .*nowhere\.jpg\)",
        ),
        (
            lambda c, tmp: _set(c, 5, LABEL_COLS[1], np.nan),
            {},
            rf"column '{LABEL_COLS[1]}' is NaN or infinite in 1 row\(s\): row 5 \(id_str '0005'\)",
        ),
        (
            lambda c, tmp: c.assign(bogus=1.0),
            {"label_cols": [LABEL_COLS[0], "bogus"]},
            rf"label column 'bogus' is not in schema '{SCHEMA}'",
        ),
        (
            lambda c, tmp: c.drop(columns=LABEL_COLS[0]),
            {},
            rf"missing 1 label column\(s\): \['{LABEL_COLS[0]}'\]",
        ),
        (
            lambda c, tmp: c.assign(id_str=range(len(c))),
            {},
            "'id_str' has dtype int64; ids must be strings",
        ),
        (
            lambda c, tmp: _set(c, 9, "id_str", "0002"),
            {},
            r"id_str repeats in 2 row\(s\): row 2 \(id_str '0002'\), row 9 \(id_str '0002'\)",
        ),
        (
            lambda c, tmp: _set(c, 0, "file_loc", str(tmp / "images" / "galaxy_1.jpg.txt")),
            {},
            r"catalog row 0 \(id_str '0000'\), file .*galaxy_1\.jpg\.txt: not a JPEG or PNG",
        ),
        (lambda c, tmp: c, {"splits": {"train": 0.8, "test": 0.1}}, "must sum to 1, got 0.9"),
        (lambda c, tmp: c, {"splits": {"train-a": 1.0}}, "split name 'train-a'"),
        (lambda c, tmp: c, {"splits": "missing_column"}, "split column 'missing_column'"),
    ],
)
def test_bad_inputs_name_the_row_and_column(tmp_path, catalog, change, kwargs, message):
    (tmp_path / "images" / "galaxy_1.jpg.txt").write_text("not an image")
    with pytest.raises(ShardError, match=message):
        write(change(catalog, tmp_path), tmp_path / "shards", **kwargs)
    assert not (tmp_path / "shards" / SIDECAR).exists()


def test_someone_elses_shards_are_refused_by_name_and_left_alone(tmp_path, catalog, folder_state):
    """A folder holding TFRecords we did not write (no manifest): nothing is deleted or replaced,
    whatever the options, and the error names the files."""
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "train-00000-of-00007.tfrecord").write_bytes(b"their own records")
    (out / "notes.txt").write_text("keep me")
    before = folder_state(out)
    for overwrite in (False, True):
        with pytest.raises(
            ShardError, match=r"did not write there: train-00000-of-00007\.tfrecord"
        ):
            write(catalog, out, overwrite=overwrite)
        assert before.touched() == set()
    (out / SIDECAR).write_text("{}")  # not even a sidecar of ours makes them ours
    with pytest.raises(ShardError, match=f"{SIDECAR}, train-00000-of-00007"):
        write(catalog, out)


def test_other_files_beside_our_shards_are_never_touched(tmp_path, catalog, folder_state):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "mine.tfrecord").write_bytes(b"not named like a shard")
    before = folder_state(out)
    write(catalog, out)
    ours = {f for f in before.touched() if f.endswith(".tfrecord") and "-of-" in f}
    assert before.touched() - ours == {SIDECAR, ".manifests/run.json"} | {
        f".manifests/{name}.json" for name in ours
    }
    before = folder_state(out)
    write(catalog, out, shard_size=8, overwrite=True)
    assert {"notes.txt", "mine.tfrecord"}.isdisjoint(before.touched())
    assert verify_shards(out)["records"] == 40


def unusable_images(folder) -> dict[str, tuple[bytes, str]]:
    """File name -> (bytes, the reason it is refused) for each kind of unusable image."""
    grey = io.BytesIO()
    Image.new("RGB", (24, 24), (90, 90, 90)).save(grey, "JPEG")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(
        good, "JPEG"
    )
    fits = b"SIMPLE  =                    T" + b" " * 2850
    return {
        "empty.jpg": (b"", "it is empty"),
        "text.jpg": (b"id_str,file_loc\n", "not a JPEG or PNG file: it starts with"),
        "fits.jpg": (fits, "a FITS file"),
        "grey.jpg": (grey.getvalue(), "carries no signal"),
        "truncated.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "cannot decode image"),
    }


def test_unusable_images_fail_the_run_listing_every_one(tmp_path, catalog):
    """Each unusable image is listed with its row, file and reason (error and failed.csv); shards
    without one are written, and the run finishes once the rows are dropped."""
    images = tmp_path / "bad"
    images.mkdir()
    bad = catalog.copy()
    rows = {}
    for row, (name, (content, reason)) in zip(
        [3, 11, 17, 28, 35], unusable_images(images).items(), strict=True
    ):
        (images / name).write_bytes(content)
        bad.loc[row, "file_loc"] = str(images / name)
        rows[row] = reason
    out = tmp_path / "shards"
    with pytest.raises(ShardError, match=r"5 image\(s\) of the catalog cannot be used") as err:
        write(bad, out)
    for row, reason in rows.items():
        assert re.search(
            rf"catalog row {row} \(id_str '{row:04d}'\), file .*: .*{re.escape(reason)}",
            str(err.value),
        )
    failed = pd.read_csv(out / "failed.csv", dtype={"id_str": str})
    assert failed["row"].tolist() == sorted(rows)
    assert failed["id_str"].tolist() == [f"{row:04d}" for row in sorted(rows)]
    assert all(rows[r] in e for r, e in zip(failed["row"], failed["error"], strict=True))
    assert not (out / SIDECAR).exists()
    written = shard_files(out)
    assert written and all(
        not set(g["id_str"] for g in read_records_of(out / name)) & {f"{r:04d}" for r in rows}
        for name in written
    )
    sidecar = write(bad.drop(index=list(rows)), out)
    assert sidecar["total_count"] == 35 and not (out / "failed.csv").exists()
    assert verify_shards(out)["records"] == 35


def read_records_of(path):
    from zoobot.data.shards.tfrecord import read_records

    for record in read_records(path):
        yield {"id_str": decode_example(record)["id_str"][1][0].decode()}


def test_the_command_refuses_foreign_files_naming_them_and_the_flag(tmp_path, catalog, capsys):
    from zoobot.data.cli import main

    catalog_file = tmp_path / "catalog.csv"
    catalog.drop(columns="_expected").to_csv(catalog_file, index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "test-00000-of-00001.tfrecord").write_bytes(b"theirs")
    argv = ["shards", str(catalog_file), str(out), "--schema", SCHEMA, "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "did not write there: test-00000-of-00001.tfrecord" in err
    assert (out / "test-00000-of-00001.tfrecord").read_bytes() == b"theirs"
    (out / "test-00000-of-00001.tfrecord").unlink()
    assert main(argv) == 0
    catalog_file.write_text(catalog.drop(columns="_expected").head(30).to_csv(index=False))
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "pass --overwrite to replace them" in err and "overwrite=True" not in err
    assert main([*argv, "--overwrite"]) == 0
    assert verify_shards(out)["records"] == 30
