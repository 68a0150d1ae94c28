"""zoobot.models.distributed with a NumPy backend (`numpy_backend`): shares partition the chunks;
slices and spawned ranks fill one parts folder and the last to finish merges the same tables as one
process; runs resume with any number of processes without redoing a chunk; `merge` finishes a run
whose slices are all done, or says it is complete; failures in a rank reach the caller."""

from __future__ import annotations

import json
import operator
import os
import socket
import threading

import numpy as np
import numpy_backend
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from zoobot.models import distributed, inference
from zoobot.models.cli import HELP_KEYS, ModelCommand, run_command
from zoobot.models.distributed import (
    MERGE_LOCK,
    PendingRun,
    Rank,
    RankError,
    Share,
    merge,
    slurm_array_share,
    spawn,
)
from zoobot.models.runner import MANIFEST, RunSettings, open_parts

BACKEND = numpy_backend.BACKEND
ROWS = 50
RUN = {"batch_size": 4, "chunk_rows": 8, "image_size": numpy_backend.SIZE, "progress": False}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """50 small PNGs of different colours, as a Parquet catalog of 4 row groups."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(ROWS):
        path = folder / f"g{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
        rows.append({"id_str": f"{i:04d}", "file_loc": path.name})
    table = pa.Table.from_pandas(pd.DataFrame(rows))
    pq.write_table(table, folder / "catalog.parquet", row_group_size=13)
    return folder / "catalog.parquet"


def predict(catalog, save_loc, **kwargs):
    return inference.predict(
        BACKEND, catalog, numpy_backend.MeanColour(), save_loc, **RUN, **kwargs
    )


@pytest.fixture(scope="module")
def reference(catalog, tmp_path_factory) -> pd.DataFrame:
    """The table of one process, with 3 Monte Carlo passes."""
    files = predict(catalog, tmp_path_factory.mktemp("one") / "p.parquet", n_samples=3)
    return pd.read_parquet(files.predictions)


def same_table(files, reference: pd.DataFrame) -> None:
    got = pd.read_parquet(files.predictions)
    assert got["id_str"].tolist() == reference["id_str"].tolist()
    # every chunk computed by one process with the same batches and the chunk's seed: bit for bit
    pd.testing.assert_frame_equal(got, reference, check_exact=True)


@given(st.integers(0, 500), st.integers(1, 40))
def test_shares_are_contiguous_balanced_blocks_covering_every_chunk(n_chunks, count):
    blocks = [Share(i, count).chunks(n_chunks) for i in range(count)]
    assert [c for block in blocks for c in block] == list(range(n_chunks))
    sizes = [len(block) for block in blocks]
    assert max(sizes) - min(sizes) <= 1


def test_shares_are_parsed_from_text_pairs_and_slurm_arrays():
    assert Share.parse("3/10") == Share(3, 10) and Share.parse((1, 2)) == Share(1, 2)
    assert Share.parse(None) is None and str(Share(2, 5)) == "2/5"
    assert Share(1, 3).within(Rank(1, 2)) == Share(3, 6)
    # sbatch --array=1-4 (task 2 is the second) and --array=1-7:2 (task 5 is the third)
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert Share.parse("slurm", env) == Share(1, 4)
    stepped = env | {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_STEP": "2"}
    assert slurm_array_share(stepped) == Share(2, 4)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT not set"):
        Share.parse("slurm", {})
    with pytest.raises(ValueError, match="not one of 4 evenly spaced"):
        slurm_array_share(env | {"SLURM_ARRAY_TASK_ID": "9"})
    for bad in ("3", "a/b", "4/4"):
        with pytest.raises(ValueError):
            Share.parse(bad)


def test_slices_fill_one_folder_and_the_last_merges_the_one_process_table(
    catalog, reference, tmp_path
):
    save_loc = tmp_path / "sliced.parquet"
    numpy_backend.DECODED.clear()
    first = predict(catalog, save_loc, n_samples=3, catalog_slice="0/3")
    assert isinstance(first, PendingRun) and (first.done, first.n_chunks) == (2, 7)
    assert "2 of 7 chunks done" in str(first) and not save_loc.exists()
    assert len(numpy_backend.DECODED) == 16  # its 2 chunks of 8 rows, no more
    third = predict(catalog, save_loc, n_samples=3, catalog_slice=(2, 3))
    assert isinstance(third, PendingRun) and third.done == 5  # chunks 0, 1 and 4, 5, 6
    merged = predict(catalog, save_loc, n_samples=3, catalog_slice=Share(1, 3))
    same_table(merged, reference)
    assert merged.n_predicted == ROWS and not (tmp_path / "sliced.parquet.parts").exists()
    assert len(numpy_backend.DECODED) == ROWS
    assert merge(save_loc) is None  # already complete: nothing to do


def test_an_interrupted_run_resumes_with_other_counts_without_redoing_chunks(
    catalog, reference, tmp_path, monkeypatch
):
    save_loc = tmp_path / "resumed.parquet"
    monkeypatch.setenv("NUMPY_BACKEND_FAIL", "0:1")  # each slice stops after 1 of its chunks
    for index in range(2):
        with pytest.raises(KeyboardInterrupt):
            predict(catalog, save_loc, n_samples=3, catalog_slice=(index, 2))
    parts = sorted(p.name for p in (tmp_path / "resumed.parquet.parts").glob("part-*"))
    assert parts == ["part-000000.parquet", "part-000003.parquet"]
    monkeypatch.setenv("NUMPY_BACKEND_FAIL", "0:2")
    with pytest.raises(KeyboardInterrupt):
        predict(catalog, save_loc, n_samples=3, catalog_slice="2/3")  # chunks 4, 5 of 4-6
    monkeypatch.delenv("NUMPY_BACKEND_FAIL")
    numpy_backend.DECODED.clear()
    with pytest.raises(ValueError, match="resume=False.*several independent"):
        predict(catalog, save_loc, n_samples=3, catalog_slice="0/2", resume=False)
    same_table(predict(catalog, save_loc, n_samples=3), reference)
    # chunks 1, 2 (8 rows each) and 6 (the last 2 rows) were all that was left
    assert len(numpy_backend.DECODED) == 8 + 8 + 2


def test_merge_finishes_a_run_whose_slices_are_done_and_refuses_an_unfinished_one(
    catalog, reference, tmp_path, capsys
):
    save_loc = tmp_path / "m.parquet"
    folder = tmp_path / "m.parquet.parts"
    predict(catalog, save_loc, n_samples=3, catalog_slice="0/2")
    with pytest.raises(ValueError, match=r"4 of 7 chunks are not done yet \(first: 3, 4, 5, 6\)"):
        merge(save_loc)
    lock = folder / MERGE_LOCK
    lock.write_text(distributed._lock_owner())  # a live process (this one) is merging
    pending = predict(catalog, save_loc, n_samples=3, catalog_slice="1/2")
    assert pending.merging_elsewhere and "another process is merging" in str(pending)
    with pytest.raises(ValueError, match="another process is merging"):
        merge(save_loc)
    lock.write_text(f"{socket.gethostname()} 999999999")  # a merge that died: taken over
    command = ModelCommand("zoobot-np", "NumPy", BACKEND, "", dict.fromkeys(HELP_KEYS, ""))
    assert run_command(command, ["merge", str(save_loc)]) == 0
    assert f"{ROWS} galaxies predicted: {save_loc}" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(save_loc), reference, check_exact=True)
    assert run_command(command, ["merge", str(save_loc)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert run_command(command, ["merge", str(tmp_path / "none.parquet")]) == 1
    assert "holds no manifest.json" in capsys.readouterr().err


def test_spawned_ranks_give_the_one_process_tables(catalog, reference, tmp_path):
    files = predict(catalog, tmp_path / "two.parquet", n_samples=3, devices=2)
    same_table(files, reference)
    one = inference.get_representations(
        BACKEND, catalog, "mean_colour", tmp_path / "f1.parquet", **RUN
    )
    two = inference.get_representations(
        BACKEND, catalog, "mean_colour", tmp_path / "f2.parquet", devices=2, **RUN
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(two.representations), pd.read_parquet(one.representations), check_exact=True
    )


def test_a_rank_that_fails_stops_the_others_and_raises_here(catalog, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMPY_BACKEND_FAIL", "1:0")
    monkeypatch.setenv("NUMPY_BACKEND_DELAY", "0.05")
    with pytest.raises(KeyboardInterrupt, match="rank 1 stopped") as raised:
        predict(catalog, tmp_path / "x.parquet", devices=2)
    assert isinstance(raised.value.__cause__, RankError) and "rank 1" in str(raised.value.__cause__)
    with pytest.raises(TypeError) as raised:  # a job that cannot run on a Rank
        spawn(operator.itemgetter(0), [{}, {}], [None, None])
    assert "not subscriptable" in str(raised.value)
    assert spawn(operator.attrgetter("count"), [{}, {}], [None, None]) == 2


def test_the_manifest_is_created_once_when_processes_start_together(tmp_path):
    folder = tmp_path / "p.parts"
    created, barrier = [], threading.Barrier(6)

    def start():
        barrier.wait()
        created.append(open_parts(folder, {"a": 1}, True, {"kind": "x"}, exclusive=False))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 6  # no process saw the others' half-made manifest as a foreign folder
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST]
    assert json.loads((folder / MANIFEST).read_text())["run"] == {"a": 1}
    with pytest.raises(ValueError, match="different run"):
        open_parts(folder, {"a": 2}, True, exclusive=False)
    with pytest.raises(ValueError, match="delete the parts other processes"):
        open_parts(folder, {"a": 1}, False, exclusive=False)
    assert RunSettings().resume and os.path.isdir(folder)
