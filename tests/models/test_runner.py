"""zoobot.models.runner, the framework-free half of predict/get_representations in both frameworks:
batches never cross chunks, parts round-trip, a run stopped after any chunk resumes to the same
files, manifests refuse other runs, failures are reported, and the final tables have the documented
columns. A NumPy "model" (mean pixel per channel, plus noise seeded per chunk) stands in for a
network."""

import functools
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zoobot.data.images import read_image
from zoobot.models import runner as streaming
from zoobot.models.runner import (
    FAILED_COLUMNS,
    MANIFEST,
    TABLE_FORMAT,
    ChunkWriter,
    Parts,
    RunSettings,
    chunk_seed,
    cleaned_up_on_failure,
    decode_rows,
    finish_predictions,
    finish_representations,
    open_parts,
    read_catalog,
    start_parts,
)
from zoobot.models.tasks import output_names
from zoobot.shared import get_schema, read_predictions_full
from zoobot.shared.tables import PCAProjection, friendly_table

SIZE = 8
SCHEMA = get_schema("gz2")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> pd.DataFrame:
    """23 small JPEGs of different brightness."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(23):
        pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
        path = folder / f"g{i}.jpg"
        Image.fromarray(pixels).save(path)
        rows.append({"id_str": f"{i:04d}", "file_loc": str(path), "extra": i})
    return pd.DataFrame(rows)


def fake_model(images: np.ndarray, rng: np.random.Generator, width: int, passes: int) -> np.ndarray:
    """(batch, width, passes): mean pixel per channel tiled to `width`, plus seeded noise, > 1."""
    mean = images.reshape(len(images), -1, 3).mean(1) / 255
    base = np.resize(mean, (len(images), width))[..., None] * 10 + 1
    return (base + rng.uniform(0, 1, (len(images), width, passes))).astype(np.float32)


def run(catalog, save_loc, shape, settings, seed=0, stop_after=None, run_info=None, decoded=None):
    """A whole engine in NumPy: decode each batch, run the fake model, write parts."""
    parts = start_parts(catalog, save_loc, shape, settings, run_info or {"task": "test"}, seed)
    spans = parts.spans(parts.todo(), settings.batch_size)
    paths = catalog["file_loc"].tolist()
    rng = None
    with ChunkWriter(parts, spans, progress=False) as writer:
        for start, stop in spans:
            chunk = writer.new_chunk(start)
            if chunk is not None:
                if stop_after is not None and chunk >= stop_after:
                    return parts  # "killed" before this chunk
                rng = np.random.default_rng(chunk_seed(seed, chunk))
            if decoded is not None:
                decoded.extend(paths[start:stop])
            images, ok, errors = decode_rows(paths[start:stop], SIZE)
            passes = shape[1] if len(shape) > 1 else 1
            values = fake_model(images, rng, shape[0], passes).reshape(len(images), *shape)
            errors = [(start + i, message) for i, message in errors]
            writer.add(start, stop, ok + start, values, errors)
    return parts


def test_spans_cover_every_row_and_never_cross_a_chunk():
    parts = Parts(None, n_rows=23, chunk_rows=10, shape=(1,))
    assert parts.n_chunks == 3 and parts.rows(2) == (20, 23)
    spans = parts.spans([0, 1, 2], batch_size=4)
    assert spans[:4] == [(0, 4), (4, 8), (8, 10), (10, 14)]
    assert [p for a, b in spans for p in range(a, b)] == list(range(23))
    assert parts.spans([1], 4) == [(10, 14), (14, 18), (18, 20)]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="precision"):
        RunSettings(precision="16")
    with pytest.raises(ValueError, match="chunk_rows"):
        RunSettings(chunk_rows=0)
    assert RunSettings(num_workers=3).workers == 3 and RunSettings().workers >= 1


def test_read_catalog_keeps_ids_and_paths_only(catalog):
    got = read_catalog(catalog.iloc[::-1])
    assert got.columns.tolist() == ["id_str", "file_loc"]
    assert got.index.tolist() == list(range(23)) and got["id_str"][0] == "0022"


def test_decode_rows_catches_unreadable_images(catalog, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    paths = [catalog.file_loc[0], str(broken), catalog.file_loc[2], str(tmp_path / "no.png")]
    images, ok, errors = decode_rows(paths, SIZE)
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert ok.tolist() == [0, 2] and [i for i, _ in errors] == [1, 3]
    np.testing.assert_array_equal(images[1], read_image(paths[2], SIZE))


def test_tree_predictions_resume_after_any_chunk_to_the_same_files(catalog, tmp_path):
    shape = (len(SCHEMA.label_cols), 2)
    settings = RunSettings(batch_size=4, chunk_rows=10, progress=False)
    names = output_names("tree", shape[0], None, SCHEMA)
    data = read_catalog(catalog)

    whole = run(data, tmp_path / "whole.parquet", shape, settings, seed=3)
    expected = finish_predictions(
        data, whole, tmp_path / "whole.parquet", "tree", names, 2, "fake", SCHEMA
    )
    assert (expected.n_predicted, expected.n_failed) == (23, 0)
    assert expected.friendly == tmp_path / "whole_friendly.parquet"
    assert not (tmp_path / "whole.parquet.parts").exists()
    full = read_predictions_full(expected.predictions)
    assert full.model_name == "fake" and full.concentrations.shape == (23, shape[0], 2)
    assert list(full.id_str) == list(data["id_str"])
    pd.testing.assert_frame_equal(
        pd.read_parquet(expected.friendly),
        friendly_table(full.id_str, full.concentrations, SCHEMA),
        check_dtype=False,
    )

    save_loc = tmp_path / "resumed.parquet"
    run(data, save_loc, shape, settings, seed=3, stop_after=2)
    assert sorted(p.name for p in (tmp_path / "resumed.parquet.parts").iterdir()) == [
        MANIFEST,
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    decoded = []
    parts = run(data, save_loc, shape, settings, seed=3, decoded=decoded)
    assert len(decoded) == 3  # only the last chunk
    resumed = finish_predictions(data, parts, save_loc, "tree", names, 2, "fake", SCHEMA)
    got = read_predictions_full(resumed.predictions)
    np.testing.assert_array_equal(got.concentrations, full.concentrations)
    pd.testing.assert_frame_equal(
        pd.read_parquet(resumed.friendly), pd.read_parquet(expected.friendly)
    )


def test_a_different_run_is_refused_and_resume_false_starts_again(catalog, tmp_path):
    data = read_catalog(catalog)
    settings = RunSettings(batch_size=4, chunk_rows=10, progress=False)
    save_loc = tmp_path / "p.parquet"
    run(data, save_loc, (3, 1), settings, stop_after=1, run_info={"weights": "a"})
    with pytest.raises(ValueError, match=r"different run \(differs in: seed, weights\)"):
        run(data, save_loc, (3, 1), settings, seed=1, run_info={"weights": "b"})
    with pytest.raises(ValueError, match="differs in: catalog"):
        run(data.iloc[::-1].reset_index(drop=True), save_loc, (3, 1), settings, run_info={"weights": "a"})  # fmt: skip
    decoded = []
    fresh = RunSettings(batch_size=4, chunk_rows=10, progress=False, resume=False)
    run(data, save_loc, (3, 1), fresh, run_info={"weights": "b"}, decoded=decoded)
    assert len(decoded) == 23
    manifest = json.loads((tmp_path / "p.parquet.parts" / MANIFEST).read_text())
    assert manifest["run"]["weights"] == "b" and manifest["run"]["rows"] == 23

    stranger = tmp_path / "other.parts"
    stranger.mkdir()
    (stranger / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no manifest.json"):
        open_parts(stranger, {"a": 1}, resume=True)


def test_classifier_table_with_failures(catalog, tmp_path):
    data = catalog.copy()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    data.loc[4, "file_loc"] = str(broken)
    data.loc[15, "file_loc"] = str(tmp_path / "missing.jpg")
    data = read_catalog(data)
    settings = RunSettings(batch_size=4, chunk_rows=10, progress=False)
    parts = run(data, tmp_path / "c.parquet", (2, 3), settings)
    names = output_names("classifier", 2, ["ring", "other"])
    files = finish_predictions(data, parts, tmp_path / "c.parquet", "classifier", names, 3, "m")
    assert (files.n_predicted, files.n_failed, files.friendly) == (21, 2, None)
    table = pq.read_table(files.predictions)
    assert table.column_names == [
        "id_str",
        "ring_probability",
        "other_probability",
        "ring_probability_passes",
        "other_probability_passes",
    ]
    assert table.schema.metadata[b"zoobot.format"] == TABLE_FORMAT.encode()
    assert table.schema.field("ring_probability_passes").type == pa.list_(pa.float32(), 3)
    df = table.to_pandas()
    assert df["id_str"].tolist() == data["id_str"].drop(index=[4, 15]).tolist()
    passes = np.stack(df["ring_probability_passes"])
    np.testing.assert_allclose(passes.mean(1), df["ring_probability"], rtol=1e-6)
    failed = pd.read_csv(files.failed, dtype=str)
    assert failed.columns.tolist() == FAILED_COLUMNS
    assert failed["id_str"].tolist() == ["0004", "0015"]
    assert "not a JPEG or PNG" in failed["error"][0] and "cannot read" in failed["error"][1]

    parts = run(data, tmp_path / "r.parquet", (2, 1), settings)
    files = finish_predictions(
        data, parts, tmp_path / "r.parquet", "regressor", output_names("regressor", 2, None), 1, "m"
    )
    assert pd.read_parquet(files.predictions).columns.tolist() == [
        "id_str",
        "output_0_prediction",
        "output_1_prediction",
    ]


def test_output_names_are_checked():
    assert output_names("classifier", 2, None) == ["class_0", "class_1"]
    # a classifier's own class names are the default; label_cols still win
    assert output_names("classifier", 2, None, class_names=["ring", "none"]) == ["ring", "none"]
    assert output_names("classifier", 2, ["a", "b"], class_names=["ring", "none"]) == ["a", "b"]
    assert output_names("regressor", 1, None, class_names=["x"]) == ["output_0"]
    with pytest.raises(ValueError, match="2 names but the model has 3"):
        output_names("regressor", 3, ["a", "b"])
    with pytest.raises(ValueError, match="omit label_cols"):
        output_names("tree", len(SCHEMA.label_cols), ["a"], SCHEMA)
    with pytest.raises(ValueError, match="table must be"):
        output_names("encoder", 3, None)


def test_representations_raw_and_pca(catalog, tmp_path):
    data = read_catalog(catalog)
    settings = RunSettings(batch_size=5, chunk_rows=7, progress=False)
    raw_parts = run(data, tmp_path / "raw.parquet", (6,), settings)
    values = np.concatenate([p.values for p in raw_parts.read()]).reshape(23, 6)
    raw = finish_representations(data, raw_parts, tmp_path / "raw.parquet")
    table = pd.read_parquet(raw.representations)
    assert table.columns.tolist() == ["id_str", *(f"feat_{i}" for i in range(6))]
    assert (table.dtypes.iloc[1:] == np.float32).all() and raw.pca is None
    np.testing.assert_array_equal(table.iloc[:, 1:].to_numpy(), values)

    parts = start_parts(data, tmp_path / "pca.parquet", (6,), settings, {"task": "encoder"})
    spans = parts.spans(parts.todo(), settings.batch_size)
    with ChunkWriter(parts, spans, progress=False) as writer:
        for start, stop in spans:
            writer.add(start, stop, np.arange(start, stop), values[start:stop])
    files = finish_representations(data, parts, tmp_path / "pca.parquet", n_components=2)
    compressed = pd.read_parquet(files.representations)
    assert compressed.columns.tolist() == ["id_str", "feat_pca_0", "feat_pca_1"]
    projection = PCAProjection(**np.load(files.pca))
    np.testing.assert_allclose(
        compressed.iloc[:, 1:].to_numpy(), projection.transform(values), rtol=1e-5, atol=1e-5
    )


def test_chunk_writer_checks_the_model_output_shape(catalog, tmp_path):
    data = read_catalog(catalog)
    settings = RunSettings(batch_size=4, chunk_rows=10, progress=False)
    parts = start_parts(data, tmp_path / "x.parquet", (3, 1), settings, {})
    with (
        ChunkWriter(parts, parts.spans(parts.todo(), 4), progress=False) as writer,
        pytest.raises(ValueError, match=r"returned \(3,\) per image, not \(3, 1\)"),
    ):
        writer.add(0, 4, np.arange(4), np.zeros((4, 3)))


def test_a_run_failing_before_its_first_part_leaves_no_parts_folder(catalog, tmp_path):
    """The folder this run made goes (manifest and all); a folder with finished parts stays."""
    settings = RunSettings(batch_size=4, chunk_rows=8)
    save_loc = tmp_path / "p.parquet"
    parts = start_parts(read_catalog(catalog), save_loc, (2,), settings, {"model": "m"})
    assert parts.created and (parts.folder / MANIFEST).is_file()
    with pytest.raises(RuntimeError, match="no bf16"), cleaned_up_on_failure(parts):
        raise RuntimeError("no bf16 here")
    assert not parts.folder.exists()

    parts = start_parts(read_catalog(catalog), save_loc, (2,), settings, {"model": "m"})
    parts.write(0, np.arange(8), np.ones((8, 2)), np.zeros(0, np.int64), [])
    with pytest.raises(RuntimeError), cleaned_up_on_failure(parts):
        raise RuntimeError("later")
    assert parts.path(0).is_file(), "a finished part is kept for the next run to resume"
    resumed = start_parts(read_catalog(catalog), save_loc, (2,), settings, {"model": "m"})
    assert not resumed.created
    with pytest.raises(RuntimeError), cleaned_up_on_failure(resumed):
        raise RuntimeError("again")
    assert resumed.path(0).is_file()


def test_a_parts_folder_the_run_did_not_make_is_never_removed(catalog, tmp_path):
    folder = tmp_path / "p.parquet.parts"
    folder.mkdir()
    parts = start_parts(read_catalog(catalog), tmp_path / "p.parquet", (2,), RunSettings(), {})
    assert not parts.created
    with pytest.raises(RuntimeError), cleaned_up_on_failure(parts):
        raise RuntimeError("failed")
    assert folder.is_dir()


def test_the_progress_bar_shows_the_finished_run_once(catalog, tmp_path, capsys, monkeypatch):
    """tqdm's close() draws the finished bar again after the last update drew it: in a log or a
    pipe, where a carriage return does not overwrite, it read as the bar printed twice."""
    monkeypatch.setattr(streaming, "tqdm", functools.partial(streaming.tqdm, mininterval=0))
    rows = read_catalog(catalog.head(20))
    parts = start_parts(rows, tmp_path / "p.parquet", (2,), RunSettings(), {})
    spans = parts.spans(parts.todo(), 5)
    with ChunkWriter(parts, spans, progress=True) as writer:
        for start, stop in spans:
            positions = np.arange(start, stop)
            writer.add(start, stop, positions, np.ones((len(positions), 2)))
    bar = capsys.readouterr().err
    assert bar.count("20/20") == 1 and bar.count("100%") == 1
    assert "15/20" in bar, "the bar moves as batches finish"
