"""The README's cluster recipes, run as written in both frameworks on 2 local processes: the SLURM
array script (each task with the variables SLURM sets in an array task), the merge, `torchrun`
(torch), and `srun` tasks joining as workers (zoobot-tf). Their tables equal one process's.

What the test changes, and only that: `zoobot-torch` becomes the command of the framework under
test; the array has 2 tasks (the variables of `--array=0-1`) and `torchrun` 2 processes, not the
production counts; each `predict` also gets `--image-size 32 --chunk-rows 8 --batch-size 8
--no-progress`, so 40 galaxies make 5 chunks and the run takes seconds."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from contract import SCHEMA

from zoobot.shared.tables import read_predictions_full

README = Path(__file__).resolve().parents[2] / "README.md"
SMALL = ["--image-size", "32", "--chunk-rows", "8", "--batch-size", "8", "--no-progress"]
RTOL = 1e-4  # as test_scale_out: other processes may sum float32 in another order


def recipe(name: str) -> list[str]:
    """The commands of the README block marked `<!-- cluster recipe: name -->` (comments and
    `#SBATCH` lines dropped, continued lines joined)."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!--\s*cluster recipe:\s*{name}\s*-->\s*```\w*\n(.*?)```", text, re.S)
    assert found, f"README has no cluster recipe {name!r}"
    joined = found.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def adapted(fw, command: str) -> list[str]:
    words = shlex.split(command)
    words = [f"zoobot-{fw.name}" if w == "zoobot-torch" else w for w in words]
    if "predict" in words:
        words += SMALL
    if words[0] == "torchrun":
        words[words.index("--nproc-per-node") + 1] = "2"
    return words


@pytest.fixture
def workdir(fw, survey, tmp_path):
    """A folder as the recipes expect: catalog/ (a Parquet file) and runs/votes/best (a model)."""
    (tmp_path / "catalog").mkdir()
    survey.to_parquet(tmp_path / "catalog" / "part-0000.parquet")
    fw.seed(11)
    fw.package.ZoobotTree(SCHEMA, "resnet10t").save_pretrained(tmp_path / "runs/votes/best")
    return tmp_path


def environment(**extra) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def run_together(commands: list[list[str]], cwd: Path, envs: list[dict]) -> list[str]:
    """Start every command at once; their outputs, after checking each exited 0."""
    processes = [
        subprocess.Popen(c, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c, e in zip(commands, envs, strict=True)
    ]
    outputs = []
    for process in processes:
        out = process.communicate(timeout=900)[0].decode()
        assert process.returncode == 0, out[-4000:]
        outputs.append(out)
    return outputs


def one_process(fw, workdir: Path):
    model = fw.package.from_pretrained(workdir / "runs/votes/best")
    options = {"image_size": 32, "chunk_rows": 8, "batch_size": 8, "progress": False}
    files = fw.package.predict(workdir / "catalog", model, workdir / "one.parquet", **options)
    return read_predictions_full(files.predictions)


def same_as_one_process(fw, workdir: Path) -> None:
    got, want = read_predictions_full(workdir / "predictions.parquet"), one_process(fw, workdir)
    assert list(got.id_str) == list(want.id_str) and len(got.id_str) == 40
    np.testing.assert_allclose(got.concentrations, want.concentrations, rtol=RTOL)
    assert not (workdir / "predictions.parquet.parts").exists()


def test_the_slurm_array_and_its_merge(fw, workdir):
    (script,) = recipe("slurm-array")
    slurm = {
        "SLURM_JOB_ID": "1001",
        "SLURM_ARRAY_JOB_ID": "1000",
        "SLURM_ARRAY_TASK_COUNT": "2",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": "1",
        "SLURM_ARRAY_TASK_STEP": "1",
        "SLURM_JOB_NAME": "zoobot-predict",
        "SLURM_NTASKS": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }
    envs = [environment(**slurm, SLURM_ARRAY_TASK_ID=str(task)) for task in range(2)]
    outputs = run_together([adapted(fw, script)] * 2, workdir, envs)
    merged = [out for out in outputs if "galaxies predicted" in out]
    assert len(merged) <= 1, "one task at most merges"
    (merge,) = recipe("merge")
    out = subprocess.run(
        adapted(fw, merge), cwd=workdir, env=environment(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert ("already complete" in out.stdout) == bool(merged)
    same_as_one_process(fw, workdir)


def test_torchrun_or_srun_tasks(fw, workdir):
    """torch: the torchrun recipe. zoobot-tf: its command started as 2 `srun` tasks would be."""
    (command,) = recipe("torchrun")
    if fw.name == "torch":
        run_together([adapted(fw, command)], workdir, [environment()])
    else:
        words = adapted(fw, command)
        words = words[words.index("--no-python") + 1 :]
        srun = {"SLURM_NTASKS": "2", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "zoobot-predict"}
        envs = [
            environment(**srun, SLURM_PROCID=str(task), SLURM_LOCALID=str(task))
            for task in range(2)
        ]
        run_together([words] * 2, workdir, envs)
    same_as_one_process(fw, workdir)
