"""zoobot.data.streaming: catalogs read a slice at a time. Every kind of source gives the rows of
the catalog in order (ids as text, paths resolved as `load_catalog` resolves them, image bytes for
Hugging Face datasets), across row-group and file boundaries; only the row groups a range needs are
read; bad rows are named with their file and position; sources pickle; identities change with the
content they stand for."""

from __future__ import annotations

import os
import pickle

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoobot.data import streaming
from zoobot.data.catalog import CatalogError
from zoobot.data.streaming import open_catalog_rows

N = 2500


def frame(n: int = N, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id_str": [f"g{i:05d}" for i in range(start, start + n)],
            "file_loc": [f"images/{i % 7}.jpg" for i in range(start, start + n)],
            "votes": np.arange(n),
        }
    )


def every_row(rows) -> tuple[list, list]:
    ids, sources = [], []
    for part in rows.read([(0, len(rows))], rows=333):
        ids += part.ids
        sources += part.sources
    return ids, sources


@pytest.fixture
def folder(tmp_path):
    """A catalog folder: a Parquet file of 1,000 rows in row groups of 300, then a CSV of 1,500."""
    top = tmp_path / "catalog"
    (top / "b").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame(1000)), top / "a.parquet", row_group_size=300)
    frame(1500, 1000).to_csv(top / "b" / "rest.csv", index=False)
    (top / ".hidden.csv").write_text("not,a,catalog\n")
    (top / "notes.txt").write_text("ignored")
    return top


def test_a_folder_reads_its_files_in_path_order_with_paths_resolved(folder):
    rows = open_catalog_rows(folder)
    assert len(rows) == N and len(rows.pieces) == 4 + 1  # 4 row groups + 1 CSV file
    ids, sources = every_row(rows)
    assert ids == frame()["id_str"].tolist()
    assert sources[0] == f"{folder}/images/0.jpg" and sources[-1] == f"{folder}/b/images/0.jpg"
    elsewhere = open_catalog_rows(folder, root=folder.parent)
    assert every_row(elsewhere)[1][0] == f"{folder.parent}/images/0.jpg"
    assert elsewhere.identity != rows.identity


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, N), min_size=2, max_size=8, unique=True), st.integers(1, 700))
def test_any_sorted_ranges_give_exactly_their_rows(tmp_path_factory, cuts, batch):
    """Ranges that start and end anywhere (inside row groups, across files) read exactly the
    rows a DataFrame slice gives, in slices of at most `batch` rows."""
    top = tmp_path_factory.mktemp("cat")
    pq.write_table(pa.Table.from_pandas(frame(1000)), top / "a.parquet", row_group_size=300)
    frame(1500, 1000).to_csv(top / "b.csv", index=False)
    rows = open_catalog_rows(top)
    cuts = sorted(cuts)
    ranges = list(zip(cuts[::2], cuts[1::2], strict=False))
    expected = frame()["id_str"].tolist()
    got = iter(rows.read(ranges, rows=batch))
    for start, stop in ranges:
        ids, position = [], start
        while position < stop:
            part = next(got)
            assert part.start == position and 0 < len(part) <= batch
            ids += part.ids
            position += len(part)
        assert ids == expected[start:stop]
    assert next(got, None) is None


def test_only_the_row_groups_a_range_needs_are_read(folder, monkeypatch):
    opened = []
    original = streaming._ParquetGroup.batches

    def counted(self):
        opened.append(self.group)
        return original(self)

    monkeypatch.setattr(streaming._ParquetGroup, "batches", counted)
    rows = open_catalog_rows(folder)
    part = next(rows.read([(650, 700)]))
    assert part.ids[0] == "g00650" and opened == [2]  # rows 600-899
    list(rows.read([(0, 10), (950, 1010)]))
    assert opened == [2, 0, 3]  # the CSV is another piece, its file read from its start
    with pytest.raises(ValueError, match="not sorted"):
        list(rows.read([(10, 20), (0, 5)]))


def test_frames_tables_arrow_and_hugging_face_datasets(tmp_path):
    data = frame(40)
    from_frame = open_catalog_rows(data.iloc[::-1])
    assert every_row(from_frame)[0] == data["id_str"].tolist()[::-1]
    table = pa.Table.from_pandas(data)
    assert every_row(open_catalog_rows(table))[0] == data["id_str"].tolist()
    assert open_catalog_rows(table).identity == open_catalog_rows(data).identity

    pq.write_table(table, tmp_path / "part-0.parquet")
    dataset = ds.dataset(tmp_path, format="parquet")
    ids, sources = every_row(open_catalog_rows(dataset))
    assert ids == data["id_str"].tolist() and sources[0] == f"{tmp_path}/images/0.jpg"

    images = [bytes([255, 216, i]) for i in range(3)]
    hf = datasets.Dataset.from_dict(
        {"id_str": ["a", "b", "c"], "image": [{"bytes": b, "path": None} for b in images]},
        features=datasets.Features(
            {"id_str": datasets.Value("string"), "image": datasets.Image(decode=False)}
        ),
    )
    rows = open_catalog_rows(hf.select([2, 0]))  # an indices mapping: rows in dataset order
    part = next(rows.read([(0, 2)]))
    assert part.ids == ["c", "a"] and part.sources == [images[2], images[0]]
    assert part.location(1) == f"{rows.name}#1"
    assert pickle.loads(pickle.dumps(rows)).identity == rows.identity


def test_ids_are_text_and_bad_rows_are_named_with_their_file(tmp_path):
    numbered = pd.DataFrame({"id_str": [7, 8, 9], "file_loc": ["/a.jpg", "/b.jpg", "/c.jpg"]})
    numbered.to_parquet(tmp_path / "ints.parquet")
    assert every_row(open_catalog_rows(tmp_path / "ints.parquet"))[0] == ["7", "8", "9"]

    numbered.assign(id_str=[7.0, 8.0, 9.0]).to_parquet(tmp_path / "floats.parquet")
    with pytest.raises(CatalogError, match=r"floats.parquet.*double.*lost digits"):
        every_row(open_catalog_rows(tmp_path / "floats.parquet"))

    pd.DataFrame({"id_str": ["x"], "path": ["/a.jpg"]}).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(CatalogError, match=r"cols.csv needs an id_str.*\['id_str', 'path'\]"):
        open_catalog_rows(tmp_path / "cols.csv")

    holes = tmp_path / "holes.csv"
    holes.write_text("id_str,file_loc\na,/a.jpg\n,/b.jpg\nc,\n")
    rows = open_catalog_rows(holes)
    with pytest.raises(CatalogError, match=r"holes.csv.*id_str is empty in 1 row\(s\): row 1.*"):
        rows.check([(0, 3)])
    rows.check([(0, 1)])  # only the ranges asked for are checked
    twice = tmp_path / "twice.csv"
    twice.write_text("id_str,file_loc\na,/a.jpg\nb,/b.jpg\na,/c.jpg\n")
    with pytest.raises(CatalogError, match=r"twice.csv.*repeats.*row 2 \(id_str 'a'\)"):
        open_catalog_rows(twice).check([(0, 3)])

    padded = tmp_path / "padded.csv"
    padded.write_text("id_str,file_loc\na,/a.jpg\nb ,/b.jpg\n")
    with pytest.raises(CatalogError, match=r"padded.csv.*leading or trailing spaces.*row 1"):
        open_catalog_rows(padded).check([(0, 2)])
    header_only = tmp_path / "header.csv"
    header_only.write_text("id_str,file_loc\n")
    with pytest.raises(CatalogError, match=r"header.csv: the catalog has no rows"):
        open_catalog_rows(header_only)

    with pytest.raises(CatalogError, match="does not exist"):
        open_catalog_rows(tmp_path / "nowhere.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="holds no .parquet"):
        open_catalog_rows(tmp_path / "empty")


def test_a_changed_file_is_another_catalog_and_sources_pickle(folder):
    rows = open_catalog_rows(folder)
    copy = pickle.loads(pickle.dumps(rows))
    assert every_row(copy) == every_row(rows) and copy.identity == rows.identity
    csv = folder / "b" / "rest.csv"
    stat = csv.stat()
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert open_catalog_rows(folder).identity != rows.identity
