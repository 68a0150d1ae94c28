"""zoobot.models.outputs: the files of one predict/represent run are locked while it works, checked
before it starts (files zoobot did not write are never replaced, an earlier run's only with
overwrite=True) and replaced as one set; and a resumed run must have the same images."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zoobot.models import outputs
from zoobot.models.outputs import (
    OutputSet,
    RunLockedError,
    check_save_loc,
    claim,
    remove_stale,
    run_lock,
)
from zoobot.models.runner import RunSettings, read_catalog, start_parts


def table(path, outputs_set: OutputSet | None = None, ours: bool = True) -> None:
    """A one-row parquet table at `path`: a zoobot table recording `outputs_set`'s members, or
    someone else's."""
    metadata = {"zoobot.format": "zoobot-predictions-table/1"} if ours else {}
    if outputs_set is not None:
        metadata |= outputs_set.metadata()
    pq.write_table(pa.table({"id_str": ["a"]}).replace_schema_metadata(metadata), path)


def test_a_folder_is_not_a_save_loc(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"save_loc {tmp_path} is a folder.*predictions"):
        check_save_loc(tmp_path)
    check_save_loc(tmp_path / "new.parquet")


def test_claim_refuses_what_zoobot_did_not_write(tmp_path, folder_state):
    save_loc = tmp_path / "p.parquet"
    run = OutputSet.of(
        save_loc, friendly=tmp_path / "p_friendly.parquet", failed=f"{save_loc}.failed.csv"
    )
    table(save_loc, ours=False)
    before = folder_state(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(
            FileExistsError, match=f"{save_loc} exists and was not written by zoobot"
        ):
            claim(run, overwrite)
    save_loc.unlink()
    (tmp_path / "p_friendly.parquet").write_text("their friendly table")
    with pytest.raises(
        FileExistsError, match="p_friendly.parquet exist.*zoobot did not write them"
    ):
        claim(run, overwrite=True)
    (tmp_path / "p_friendly.parquet").unlink()
    (tmp_path / "p_friendly.parquet").mkdir()
    with pytest.raises(IsADirectoryError, match="p_friendly.parquet is a folder"):
        claim(run, overwrite=True)
    assert before.touched() == {"p.parquet"}  # only what the test itself removed


def test_an_earlier_run_is_replaced_only_with_overwrite_and_its_other_files_go(tmp_path):
    save_loc = tmp_path / "p.parquet"
    tree_run = OutputSet.of(
        save_loc, friendly=tmp_path / "p_friendly.parquet", failed=tmp_path / "p.parquet.failed.csv"
    )
    table(save_loc, tree_run)
    for member in tree_run.members.values():
        member.write_text("written by the tree run")
    classifier_run = OutputSet.of(save_loc, failed=tmp_path / "p.parquet.failed.csv")
    with pytest.raises(FileExistsError, match="results of an earlier run; pass overwrite=True"):
        claim(classifier_run, overwrite=False)
    stale = claim(classifier_run, overwrite=True)
    assert stale == [tmp_path / "p_friendly.parquet"]
    remove_stale(stale)
    assert not (tmp_path / "p_friendly.parquet").exists()
    assert (tmp_path / "p.parquet.failed.csv").exists()  # rewritten by the new run, not removed


def test_members_an_interrupted_run_was_writing_are_its_own(tmp_path):
    """Killed while finishing: its failures CSV is on disk, its table is not; the parts manifest
    says the CSV is the run's, so the next run may replace it."""
    save_loc = tmp_path / "p.parquet"
    run = OutputSet.of(save_loc, failed=f"{save_loc}.failed.csv")
    run.parts.mkdir()
    (run.parts / "manifest.json").write_text(json.dumps({"run": {"outputs": run.run_record()}}))
    (tmp_path / "p.parquet.failed.csv").write_text("id_str,file_loc,error\n")
    assert claim(run, overwrite=False) == []


def test_a_second_run_is_refused_naming_the_first(tmp_path):
    run = OutputSet.of(tmp_path / "p.parquet")
    with run_lock(run):
        assert run.lock.is_file()
        holder = rf"\(pid {os.getpid()} on {socket.gethostname()}, started "
        message = rf"p.parquet is being written by another run {holder}"
        with pytest.raises(RunLockedError, match=message), run_lock(run):
            pass
    assert not run.lock.exists()
    with run_lock(run):  # free again
        pass


HOLDER = """
import sys, time
from pathlib import Path
from zoobot.models.outputs import OutputSet, run_lock
with run_lock(OutputSet.of(sys.argv[1])):
    Path(sys.argv[1] + ".held").write_text("held")
    time.sleep(60)
"""


def test_the_lock_of_a_killed_run_is_free(tmp_path):
    save_loc = tmp_path / "p.parquet"
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(HOLDER))
    process = subprocess.Popen([sys.executable, str(script), str(save_loc)], env=os.environ)
    deadline = time.monotonic() + 60
    while not (tmp_path / "p.parquet.held").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with (
        pytest.raises(RunLockedError, match=f"pid {process.pid}"),
        run_lock(OutputSet.of(save_loc)),
    ):
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert OutputSet.of(save_loc).lock.exists()  # left behind, but no process holds it
    with run_lock(OutputSet.of(save_loc)):
        pass


def test_without_flock_a_dead_process_lock_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "fcntl", None)
    run = OutputSet.of(tmp_path / "p.parquet")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "earlier"}
    run.lock.write_text(json.dumps(record))
    with run_lock(run):
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"), run_lock(run):
            pass
    assert not run.lock.exists()


@pytest.fixture
def images(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        path = tmp_path / f"g{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
        rows.append({"id_str": f"g{i}", "file_loc": str(path)})
    return read_catalog(pd.DataFrame(rows))


@pytest.mark.parametrize("hash_images", [False, True])
def test_a_run_resumes_only_with_the_same_images(images, tmp_path, hash_images):
    """Changed in place after an interruption (same path): the parts of the old image are not
    mixed in. With hash_images, even a change that keeps the size and modification time."""
    settings = RunSettings(chunk_rows=2, progress=False, hash_images=hash_images)
    save_loc = tmp_path / "p.parquet"
    start_parts(images, save_loc, (1,), settings, {"model": "m"})
    start_parts(images, save_loc, (1,), settings, {"model": "m"})  # unchanged: resumes
    path = images["file_loc"][3]
    stat = os.stat(path)
    data = bytearray(Path(path).read_bytes())
    data[-20] ^= 0xFF  # same size
    Path(path).write_bytes(bytes(data))
    if hash_images:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same time
    with pytest.raises(ValueError, match=r"differs in: images\); pass resume=False"):
        start_parts(images, save_loc, (1,), settings, {"model": "m"})
