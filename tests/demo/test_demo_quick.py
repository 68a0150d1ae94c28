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

import numpy as np
import pandas as pd
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


def test_the_few_label_comparison_is_paired_by_seed_and_reported(demo: Path):
    """Every seed draws its own labels; both starts train on them with the same learning-rate
    grid; the report gives the spread, the paired differences and the class balance."""
    settings = json.loads((demo / "settings.json").read_text(encoding="utf-8"))
    seeds, grid = settings["finetune_seeds"], settings["finetune_learning_rates"]
    assert len(seeds) >= 2 and len(grid) >= 2
    draws = {s: pd.read_csv(demo / "data" / "finetune_labels" / f"draw_{s}.csv") for s in seeds}
    train_ids = [set(d.loc[d["split"] == "train", "id_str"]) for d in draws.values()]
    assert train_ids[0] != train_ids[1]  # a new draw of labels per seed
    assert all(len(ids) == settings["n_labels_train"] for ids in train_ids)

    runs = pd.read_csv(demo / "tables" / "finetune_runs.csv")
    torch_runs = runs[runs["framework"] == "torch"]
    assert sorted(torch_runs["seed"]) == sorted(seeds * 2)
    assert set(torch_runs["learning_rate"]) <= set(grid)
    for _, run in torch_runs.iterrows():
        draw = draws[run["seed"]]
        train = draw[draw["split"] == "train"]["label"]
        test = draw[draw["split"] == "test"]["label"]
        assert (run["train_positives"], run["train_negatives"]) == (train.sum(), (train == 0).sum())
        assert (run["positives"], run["negatives"]) == (test.sum(), (test == 0).sum())
        folders = demo / "torch" / "finetune" / f"{run['start']}-seed{run['seed']}"
        assert sorted(p.name for p in folders.iterdir()) == sorted(f"lr{lr:g}" for lr in grid)

    report = json.loads((demo / "report.json").read_text(encoding="utf-8"))
    torch = report["finetune"]["torch"]
    wide = torch_runs.pivot(index="seed", columns="start", values="roc_auc")
    differences = (wide["pretrained"] - wide["scratch"]).to_numpy()
    paired = torch["paired"]["roc_auc"]
    assert paired["differences"] == pytest.approx(differences.tolist(), abs=1e-12)
    assert paired["mean"] == pytest.approx(differences.mean(), abs=1e-12)
    assert paired["std"] == pytest.approx(differences.std(ddof=1), abs=1e-12)
    assert paired["first_ahead"] == int((differences > 0).sum())
    for start in ("pretrained", "scratch"):
        values = wide[start]
        assert torch[start]["roc_auc"]["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert torch[start]["roc_auc"]["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert "paired" not in report["finetune"]["tf"]  # one seed: a framework check

    text = (demo / "report.md").read_text(encoding="utf-8")
    assert (
        "| framework | start | seeds | learning rate picked | train positives / negatives |" in text
    )
    assert "balanced accuracy | accuracy | predicted positive rate |" in text
    assert "### Paired by seed (torch): pretrained - scratch" in text
    assert f"**Verdict (torch):** {torch['verdict']}" in text
    assert "pretrained - scratch, paired by seed" in torch["verdict"]
    test_positives = report["labels"]["test"]["positives"]
    assert f"({test_positives} with the feature" in text


def test_the_hubble_sample_has_no_saturated_stars(demo: Path):
    """The Hubble Deep Field's brightest star (hdf_0003 before stars were rejected) is not cut out."""
    hdf = pd.read_csv(demo / "data" / "hubble_deep_field" / "catalog.csv")
    assert len(hdf) == json.loads((demo / "settings.json").read_text())["hubble_sources"]
    assert not (np.hypot(hdf["x"] - 754.3, hdf["y"] - 577.9) < 3).any()


def test_gallery_captions_name_questions_and_answers_in_full():
    from zoobot.shared import get_schema

    _fraction_caption = _demo_module("report")._fraction_caption

    schema = get_schema("decals_dr5")
    fractions = np.full((1, len(schema.label_cols)), 0.1)
    fractions[0, schema.get_question("smooth-or-featured-dr5").answers[1].index] = 0.8
    caption = _fraction_caption(
        schema, fractions, fractions - 0.05, fractions + 0.05, fractions, 0,
        ["smooth-or-featured-dr5", "has-spiral-arms-dr5"],
    )  # fmt: skip
    assert caption.splitlines()[:2] == [
        "smooth-or-featured: featured-or-disk",
        "  0.80 [0.75, 0.85], volunteers 0.80",
    ]
    assert caption.splitlines()[2] == "has-spiral-arms: yes"


def _demo_module(name: str):
    sys.path.insert(0, str(ROOT / "demo"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "demo"))


def test_the_report_says_plainly_where_the_model_is_no_better_than_the_constant(demo: Path):
    report = _demo_module("report")
    row = dict(n=100, model_mae=0.10, constant_mae=0.20, gain_low=0.4)
    rows = [
        {**row, "question": "shape"},
        {**row, "question": "bar", "model_mae": 0.21},
        {**row, "question": "winding", "model_mae": 0.19, "gain_low": -0.1},
        {**row, "question": "unasked", "n": 0, "model_mae": 0.5},
    ]
    assert report.constant_sentence("torch", rows) == (
        "torch: **no better than the constant on bar**; not clearly better (the 90% interval "
        "of the gain share reaches 0) on winding."
    )
    assert report.constant_sentence("tf", rows[:1]) == (
        "tf: better than the constant on every question."
    )
    text = (demo / "report.md").read_text(encoding="utf-8")
    by_question = json.loads((demo / "report.json").read_text(encoding="utf-8"))["by_question"]
    for label, table in by_question.items():
        assert f"- {report.constant_sentence(label, table)}" in text


def test_the_science_step_trains_the_tree_in_zoobot_tf_and_reports_it_beside_torch(
    demo: Path, tmp_path
):
    """`tf_pretrain` (a step of `--science`) trains the same tree model with zoobot.tf on the same
    splits, and the report gives its per-question table beside the torch-trained model's."""
    out = tmp_path / "science"
    shutil.copytree(demo, out)
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "run_demo.py"), "--out", str(out), "--quick",
         "--steps", "tf_pretrain"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=1800, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["steps"]["tf_pretrain"]["status"] == "done"
    assert (out / "tf" / "pretrain" / "best" / "config.json").exists()
    torch, trained = report["vote_fractions"]["torch"], report["vote_fractions"]["tf_trained"]
    # the same test galaxies, votes and training-mean constant: only the model differs
    assert trained["galaxies"] == torch["galaxies"]
    assert trained["constant_mae"] == pytest.approx(torch["constant_mae"], rel=1e-12)
    assert trained["reference_mae"] == pytest.approx(torch["reference_mae"], rel=1e-12)
    assert 0.0 < trained["model_mae"] < 0.5
    questions = [row["question"] for row in report["by_question"]["torch"]]
    assert [row["question"] for row in report["by_question"]["tf_trained"]] == questions
    assert (out / "tables" / "tf_trained_vote_fractions_by_question.csv").exists()
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "### Per question (tf_trained)" in text
    assert "- `tf_trained`: trained and predicted by zoobot.tf" in text


def test_the_science_preset_is_the_larger_experiment_in_both_frameworks():
    common, run_demo = _demo_module("common"), _demo_module("run_demo")
    full, science = common.settings_for("full"), common.settings_for("science")
    assert science.n_galaxies > full.n_galaxies and science.image_size > full.image_size
    assert science.mode == "science" and common.settings_for("quick").mode == "quick"
    assert {"torch_pretrain", "tf_pretrain"} <= set(run_demo.SCIENCE_STEPS)
    assert "tf_pretrain" not in run_demo.DEMO_STEPS


def test_the_pixel_ceiling_scores_a_truth_trained_net_on_the_reports_galaxies(demo: Path, tmp_path):
    """`demo/pixel_ceiling.py` on a finished run: its targets are the catalog's own galaxies, and
    it scores the same test galaxies with the report's constant, reference and vote-trained model."""
    out = tmp_path / "ceiling"
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "pixel_ceiling.py"), "--run", str(demo),
         "--out", str(out), "--max-epochs", "1", "--minutes", "5"],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["check"]["max_abs_difference_drawn_vs_catalog"] == 0.0
    ours = pd.read_csv(out / "ceiling_table.csv").set_index("question")
    report = pd.read_csv(demo / "tables" / "torch_vote_fractions_by_question.csv")
    report = report.set_index("question").loc[ours.index]
    assert (ours["n"] == report["n"]).all()
    for column in ("constant_mae", "reference_mae"):
        assert np.allclose(ours[column], report[column], rtol=1e-12, equal_nan=True), column
    assert np.allclose(ours["vote_model_mae"], report["model_mae"], rtol=1e-12, equal_nan=True)
    # The noise-free probabilities the net is trained on predict the votes better than the
    # training mean wherever enough galaxies were asked (vote noise alone separates them).
    easy = ours.loc[["smooth-or-featured-dr5", "disk-edge-on-dr5"]]
    assert (easy["oracle_mae"] < easy["constant_mae"]).all()
    assert np.isfinite(ours["ceiling_mae"]).all()


def test_the_recipe_sweep_trains_with_its_settings_and_scores_as_the_report(demo: Path, tmp_path):
    """`demo/recipe_sweep.py` on a finished run: a tree trained with the changed setting saves it,
    and scoring the run's own tree gives the report's constant, reference and model errors."""
    sweep = [sys.executable, str(ROOT / "demo" / "recipe_sweep.py"), "--run", str(demo)]
    runs = {
        "trained": ["--out", str(tmp_path / "trained"), "--set", "learning_rate=5e-4"],
        "scored": ["--out", str(tmp_path / "scored"), "--model", str(demo / "torch/pretrain/best")],
    }
    for name, options in runs.items():
        result = subprocess.run(
            [*sweep, *options], capture_output=True, text=True, timeout=1800, check=False
        )
        assert result.returncode == 0, name + result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads((tmp_path / "trained/tree/best/config.json").read_text(encoding="utf-8"))
    assert config["zoobot"]["learning_rate"] == 5e-4
    for name in runs:
        summary = json.loads((tmp_path / name / "result.json").read_text(encoding="utf-8"))
        assert set(summary) >= {"mc_dropout", "dropout_free"}
        assert math.isfinite(summary["dropout_free"]["mean_gain_share"])
    ours = pd.read_csv(tmp_path / "scored/table_mc_dropout.csv").set_index("question")
    report = pd.read_csv(demo / "tables" / "torch_vote_fractions_by_question.csv")
    report = report.set_index("question").loc[ours.index]
    assert (ours["n"] == report["n"]).all()
    for column in ("constant_mae", "reference_mae"):  # the same float64 arithmetic on the same rows
        assert np.allclose(ours[column], report[column], rtol=1e-12, equal_nan=True), column
    # The same tree, seed and MC passes as the report's predict step; float32 concentrations
    # averaged over hundreds of galaxies: any difference is far below 1e-6 of a vote fraction.
    assert np.allclose(ours["model_mae"], report["model_mae"], rtol=0, atol=1e-6, equal_nan=True)
