"""The demo's quick mode end to end: every step runs, and the report holds sane numbers.

Needs both frameworks, matplotlib and the data extras (the `demo` / `parity` environments); it is
refused (ImportError) where any is missing. It runs `demo/run_demo.py --quick` in a subprocess, as a user would.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("torch", "tensorflow", "matplotlib", "galsim", "zoobot.torch", "zoobot.tf")
missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
if missing:  # fail loudly rather than skip: this runs in the parity session, which has them all
    raise ImportError(f"the demo needs {missing}")

STEPS = ("data", "torch_pretrain", "compare", "torch_finetune", "tf_finetune")
STEPS += ("torch_predict", "tf_predict")
KERAS_STEPS = ("compare", "tf_finetune", "tf_predict")  # what zoobot.tf runs


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run_demo.py"), "--out", str(out), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return out


def test_every_step_ran_and_the_report_lists_them(demo: Path):
    report = json.loads((demo / "report.json").read_text(encoding="utf-8"))
    assert {s: report["steps"][s]["status"] for s in STEPS} == dict.fromkeys(STEPS, "done")
    assert report["missing"] == []
    text = (demo / "report.md").read_text(encoding="utf-8")
    headings = ("Headline numbers", "Does the model learn", "Per question (torch)", "pretrained")
    for heading in (*headings, "scratch", "Files", "Figures"):
        assert heading in text
    for figure in report["figures"]:
        assert (demo / figure).stat().st_size > 1000, figure
        assert f"]({figure})" in text


def test_outputs_exist(demo: Path):
    for path in (
        "data/survey/catalog.parquet",
        "data/shards/shards.json",
        "data/hf_dataset/README.md",
        "models/zoobot-encoder-demo/config.json",
        "models/zoobot-encoder-demo/model.safetensors",
        "models/zoobot-encoder-demo/README.md",
        "torch/pretrain/best/config.json",
        "torch/predictions/test_friendly.parquet",
        "tf/predictions/test_friendly.parquet",
        "tables/finetune_runs.csv",
        "figures/gallery_test_galaxies.png",
        "figures/interval_calibration.png",
        "figures/finetune_pretrained_vs_scratch.png",
    ):
        assert (demo / path).exists(), path


def test_numbers_are_sane(demo: Path):
    report = json.loads((demo / "report.json").read_text(encoding="utf-8"))
    comparison = report["comparison"]
    assert comparison["preprocessing"]["max_abs_diff"] <= 1e-6
    assert comparison["features"]["max_rel_diff"] < 1e-4
    assert comparison["tree_concentrations"]["max_rel_diff"] < 1e-4
    for framework in ("torch", "tf"):
        for start in ("pretrained", "scratch"):
            auc = report["finetune"][framework][start]["roc_auc"]["mean"]
            assert 0.0 <= auc <= 1.0
    for framework in ("torch", "tf"):
        votes = report["vote_fractions"][framework]
        assert 0.0 < votes["model_mae"] < 0.5 and 0.0 < votes["constant_mae"] < 0.5
        assert 0.0 < votes["noise_floor"] < votes["constant_mae"]
        # the reference sees the true parameters: on any survey it beats the constant
        assert 0.0 < votes["reference_mae"] < votes["constant_mae"]
        assert math.isfinite(votes["gain_captured"])
        low, high = votes["coverage_range"]
        assert 0.0 <= low <= high <= 1.0
        by_question = report["by_question"][framework]
        assert {row["question"] for row in by_question} >= {
            "smooth-or-featured-dr5",
            "disk-edge-on-dr5",
        }
    assert math.isfinite(report["torch_vs_tf_fractions"])
    assert report["torch_vs_tf_fractions"] < 0.1


def test_a_second_run_skips_finished_steps(demo: Path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run_demo.py"), "--out", str(demo), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("already done") == len(STEPS)


def test_the_zoobot_tf_steps_run_on_jax(demo: Path, tmp_path):
    """`--backend jax` on a finished demo redoes only the zoobot.tf steps, with Keras on JAX
    (torch, TensorFlow for the data and JAX in one process for the comparison step)."""
    out = tmp_path / "jax"
    shutil.copytree(demo, out)
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run_demo.py"), "--out", str(out), "--quick",
         "--backend", "jax"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=3600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("already done") == len(STEPS) - len(KERAS_STEPS)
    for step in KERAS_STEPS:
        record = json.loads((out / "steps" / f"{step}.json").read_text(encoding="utf-8"))
        assert record["keras_backend"] == "jax", step
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["comparison"]["features"]["max_rel_diff"] < 1e-4
    assert report["comparison"]["tree_concentrations"]["max_rel_diff"] < 1e-4
    for start in ("pretrained", "scratch"):
        assert 0.0 <= report["finetune"]["jax"][start]["roc_auc"]["mean"] <= 1.0
    assert 0.0 < report["vote_fractions"]["tf"]["model_mae"] < 0.5  # tf/: zoobot.tf's files
    assert report["torch_vs_tf_fractions"] < 0.1
