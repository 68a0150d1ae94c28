"""`predict` and `get_representations` in several processes, the same in every framework: two
processes started by the framework's launcher (torch: Lightning; TensorFlow: one worker per device)
give the tables of one process; two processes started as `torchrun` / `TF_CONFIG` start them, one
killed mid-run, resume with one process to the same tables without redoing a finished chunk."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
from contract import FAST, SCHEMA, free_port

from zoobot.shared.tables import read_predictions_full

# Each chunk is computed by one process, in the same batches, with its dropout seeded from the
# chunk: a process of a launch gives the numbers of one process up to the kernels and thread
# count it runs with (the sum order of float32 reductions), a few ulps per layer; over ~20 layers
# 1e-4 relative bounds it with room, as in test_predict.
RTOL = 1e-4


@pytest.fixture(scope="module")
def tree(fw):
    fw.seed(3)
    return fw.package.ZoobotTree(SCHEMA, "resnet10t")


def test_two_processes_give_the_tables_of_one(fw, survey, tree, tmp_path):
    catalog = tmp_path / "catalog.parquet"
    survey.to_parquet(catalog)
    options = {**FAST, "num_workers": 0}
    one = fw.package.predict(catalog, tree, tmp_path / "one.parquet", 2, **options)
    two = fw.package.predict(catalog, tree, tmp_path / "two.parquet", 2, devices=2, **options)
    got, want = (read_predictions_full(f.predictions) for f in (two, one))
    assert list(got.id_str) == list(want.id_str) == list(survey["id_str"])
    np.testing.assert_allclose(got.concentrations, want.concentrations, rtol=RTOL)
    assert (two.n_predicted, two.n_failed) == (40, 0)
    assert not (tmp_path / "two.parquet.parts").exists()

    one = fw.package.get_representations(catalog, tree, tmp_path / "f1.parquet", **options)
    two = fw.package.get_representations(
        catalog, tree, tmp_path / "f2.parquet", devices=2, n_components=None, **options
    )
    got, want = (pd.read_parquet(f.representations) for f in (two, one))
    assert got["id_str"].tolist() == want["id_str"].tolist()
    np.testing.assert_allclose(got.iloc[:, 1:], want.iloc[:, 1:], rtol=RTOL, atol=1e-6)


RANK = """
import sys, time, importlib
package = importlib.import_module({package!r})
reader = importlib.import_module({reader_module!r})
read_image = getattr(reader, {reader_name!r})
def slow_read_image(*args, **kwargs):
    time.sleep(0.15)  # a slow disk, so the run is still going when it is killed
    return read_image(*args, **kwargs)
setattr(reader, {reader_name!r}, slow_read_image)
if {threads!r} is not None:  # the parent's: thread counts change float sums
    importlib.import_module({package!r} + ".backend").BACKEND.set_threads({threads!r})
print(package.predict(sys.argv[1], sys.argv[2], sys.argv[3], n_samples=2, num_workers=0,
                      **{fast!r}))
"""


def test_a_killed_rank_resumes_with_one_process(fw, survey, tree, tmp_path, monkeypatch):
    """Two ranks as their launcher starts them (40 rows in chunks of 16: rank 0 computes chunk 0,
    rank 1 chunks 1 and 2); rank 1 is killed once its first chunk is on disk, rank 0 once its
    chunk is (torch's rank 0 would wait for rank 1 until torchrun stopped it); one process
    then computes chunk 2 alone and merges."""
    model_dir = tree.save_pretrained(tmp_path / "model")
    catalog = tmp_path / "catalog.parquet"
    survey.to_parquet(catalog)
    save_loc = tmp_path / "killed.parquet"
    script = tmp_path / "rank.py"
    reader_module, reader_name = fw.reader
    script.write_text(
        textwrap.dedent(RANK).format(
            package=fw.package.__name__,
            reader_module=reader_module,
            reader_name=reader_name,
            threads=fw.threads(),
            fast=FAST,
        )
    )
    port = free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(catalog), str(model_dir), str(save_loc)],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **fw.launched_env(i, 2, port)},
        )
        for i in range(2)
    ]
    parts = tmp_path / "killed.parquet.parts"
    deadline = time.monotonic() + 180
    for rank, chunk in ((1, 1), (0, 0)):
        part = parts / f"part-{chunk:06d}.parquet"
        while not part.exists() and ranks[rank].poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        ranks[rank].send_signal(signal.SIGKILL)
        ranks[rank].wait()
        assert ranks[rank].returncode == -signal.SIGKILL, f"rank {rank} ended before it was killed"
    done = sorted(p.name for p in parts.glob("part-*.parquet"))
    assert done == ["part-000000.parquet", "part-000001.parquet"] and not save_loc.exists()

    decoded = []  # decoded in this process (num_workers=0), so the reads are counted here
    reader = importlib.import_module(reader_module)
    read = getattr(reader, reader_name)
    monkeypatch.setattr(
        reader, reader_name, lambda path, *a: decoded.append(path) or read(path, *a)
    )
    resumed = fw.package.predict(catalog, str(model_dir), save_loc, 2, num_workers=0, **FAST)
    assert len(decoded) == 8  # chunk 2 only
    reference = fw.package.predict(
        survey, tree, tmp_path / "reference.parquet", 2, num_workers=0, **FAST
    )
    got, want = (read_predictions_full(f.predictions) for f in (resumed, reference))
    assert list(got.id_str) == list(want.id_str)
    # the killed ranks ran with this process's thread count, the same batches and seeds
    np.testing.assert_array_equal(got.concentrations, want.concentrations)
    assert not parts.exists()
