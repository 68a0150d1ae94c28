"""The last step (no deep-learning framework): numbers, tables and plots, then report.md/.json.

Everything is computed from the files the earlier steps wrote (prediction tables, logs, the
survey catalog), with `zoobot.shared` for the vote statistics, as a user would analyse them.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import plots
from common import (
    ENCODER,
    HF_DATASET,
    HUBBLE,
    LABELS,
    SHARDS,
    SURVEY,
    TF_TREE,
    TORCH_TREE,
    Run,
    jsonable,
    say,
)

TABLES = "tables"
FIGURES = "figures"


# -- analysis --------------------------------------------------------------------------------------
def _vote_table(run: Run) -> pd.DataFrame:
    return pd.read_parquet(run.path(SURVEY) / "catalog_with_splits.parquet").set_index("id_str")


def true_parameter_reference(run: Run, ids: list[str]) -> np.ndarray | None:
    """Vote fractions of the `ids` galaxies predicted from the simulator's true parameters by
    gradient boosting fitted on the training galaxies: how well the votes can be predicted at all
    (None, said on screen, without scikit-learn: the `reference` extra of zoobot-data)."""
    try:
        import sklearn  # noqa: F401

        from zoobot.data.synthetic.reference import true_parameter_reference as reference
    except ImportError:
        say("  no true-parameter reference: install zoobot-data[reference] (scikit-learn)")
        return None
    catalog = _vote_table(run)
    train = catalog[catalog["split"] == "train"].reset_index()
    return reference(train, catalog.loc[ids].reset_index(), run.settings.schema, seed=0)


def score_vote_fractions(run: Run, full, reference: np.ndarray | None):
    """(per-question table, vote counts) of predictions `full` (`read_predictions_full`): the
    model's vote-fraction error against the constant baseline, the vote-sampling noise floor and
    the true-parameter `reference` (rows in the predictions' order), the share of the learnable
    gain with its bootstrap interval, and the coverage of the run's credible intervals."""
    from zoobot.shared import constant_fractions, evaluate_vote_fractions

    schema = full.schema
    catalog = _vote_table(run)
    counts = catalog.loc[list(full.id_str), schema.label_cols].to_numpy(np.float64)
    # A baseline that knows nothing about the images: each answer's mean fraction in training.
    train = catalog[catalog["split"] == "train"][schema.label_cols].to_numpy(np.float64)
    constant = constant_fractions(train, schema)
    level = run.settings.interval_level
    table = evaluate_vote_fractions(
        full.concentrations, counts, schema, constant, reference, level=level, bootstrap=1000
    )
    return table, counts


def vote_fraction_analysis(
    run: Run, predictions: Path, label: str, reference: np.ndarray | None
) -> dict:
    """Per question, on the test galaxies: `score_vote_fractions`, written to the run's tables,
    and the calibration of the intervals at several levels."""
    from zoobot.shared import (
        calibration_table,
        expected_vote_fractions,
        read_predictions_full,
        summarise_evaluation,
        vote_fractions,
    )
    from zoobot.shared.votes import answer_totals

    full = read_predictions_full(predictions)
    schema = full.schema
    table, counts = score_vote_fractions(run, full, reference)
    table.to_csv(run.path(f"{TABLES}/{label}_vote_fractions_by_question.csv"), index=False)
    levels = (0.5, 0.68, 0.8, 0.9, 0.95)
    calibration = calibration_table(full.concentrations, counts, schema, levels=levels)
    calibration.to_csv(run.path(f"{TABLES}/{label}_interval_calibration.csv"), index=False)
    summary = {
        "galaxies": len(full.id_str),
        "passes": int(full.concentrations.shape[2]),
        **summarise_evaluation(table),
    }
    return {
        "summary": summary,
        "by_question": table,
        "calibration": calibration,
        "observed": vote_fractions(counts, schema),
        "predicted": expected_vote_fractions(full.concentrations, schema),
        "totals": answer_totals(counts, schema),
        "schema": schema,
        "ids": list(full.id_str),
        "concentrations": full.concentrations,
    }


def finetune_runs(run: Run) -> pd.DataFrame:
    rows = []
    for step in ("torch_finetune", "tf_finetune"):
        results = run.results(step)
        framework = results.get("framework", "torch" if step.startswith("torch") else "tf")
        for record in results.get("runs", []):
            rows.append({"framework": framework, **record})
    return pd.DataFrame(rows)


FINETUNE_METRICS = ("roc_auc", "balanced_accuracy", "accuracy", "predicted_positive_rate")
PAIRED_METRICS = ("roc_auc", "balanced_accuracy")


def finetune_summary(runs: pd.DataFrame) -> dict:
    """Per framework and start: each metric's spread over seeds; with both starts, the paired
    per-seed differences (pretrained - scratch) and a plain verdict."""
    from zoobot.shared import paired_difference, spread

    summary: dict = {}
    if runs.empty:
        return summary
    for framework, group in runs.groupby("framework", sort=False):
        starts: dict = {}
        for start, g in group.groupby("start"):
            g = g.sort_values("seed")
            starts[start] = {m: spread(g[m]) for m in FINETUNE_METRICS} | {
                "seeds": g["seed"].tolist(),
                "learning_rates": g["learning_rate"].tolist(),
                "train_positives": g["train_positives"].tolist(),
                "train_negatives": g["train_negatives"].tolist(),
                "says_one_thing": g.loc[
                    g["predicted_positive_rate"].isin([0.0, 1.0]), "seed"
                ].tolist(),
            }
        if {"pretrained", "scratch"} <= set(starts) and group["seed"].nunique() > 1:
            wide = group.pivot(index="seed", columns="start", values=list(PAIRED_METRICS))
            starts["paired"] = {
                m: paired_difference(wide[m]["pretrained"], wide[m]["scratch"])
                | {"seeds": wide.index.tolist()}
                for m in PAIRED_METRICS
            }
        if {"pretrained", "scratch"} <= set(starts):
            starts["verdict"] = comparison_verdict(starts)
        summary[framework] = starts
    return summary


def _no_better_than_constant(start: dict) -> bool:
    """A constant answer has balanced accuracy 0.5 and ROC AUC 0.5: is either within reach?"""
    for metric in ("balanced_accuracy", "roc_auc"):
        m = start[metric]
        bound = m["low"] if np.isfinite(m["low"]) else m["mean"]
        if bound <= 0.5:
            return True
    return False


def comparison_verdict(starts: dict) -> str:
    """One paragraph a reader can act on: does pretraining help here, and is either model better
    than always giving the same answer."""
    names = {"roc_auc": "ROC AUC", "balanced_accuracy": "balanced accuracy"}
    lines = []
    for start in ("pretrained", "scratch"):
        if _no_better_than_constant(starts[start]):
            lines.append(
                f"The {start} classifier is no better than a constant answer (its balanced "
                "accuracy or ROC AUC reaches 0.5 within the 90% interval over seeds)."
            )
        if starts[start]["says_one_thing"]:
            lines.append(
                f"The {start} classifier gives every test galaxy the same answer on seeds "
                f"{starts[start]['says_one_thing']}."
            )
    if "paired" not in starts:
        lines.append("One seed: no spread, so no verdict on pretraining.")
        return " ".join(lines)
    auc = starts["paired"]["roc_auc"]
    parts = []
    for metric, d in starts["paired"].items():
        parts.append(
            f"{names[metric]} {d['mean']:+.3f} ± {d['std']:.3f} (90% interval {d['low']:+.3f} "
            f"to {d['high']:+.3f}; pretrained ahead on {d['first_ahead']} of {d['n']} seeds)"
        )
    if auc["low"] > 0:
        head = "Pretraining on votes helps here"
    elif auc["high"] < 0:
        head = "Pretraining on votes hurts here"
    else:
        head = "No measurable difference between pretrained and scratch here"
    lines.append(f"{head}: pretrained - scratch, paired by seed: " + "; ".join(parts) + ".")
    return " ".join(lines)


# -- figures -----------------------------------------------------------------------------------------
def _lightning_curve(folder: Path) -> pd.DataFrame | None:
    files = sorted(folder.glob("logs/version_*/metrics.csv"))
    if not files:
        return None
    table = pd.read_csv(files[-1])
    per_epoch = table.groupby("epoch").agg(
        {c: "last" for c in ("train/loss_epoch", "validation/loss") if c in table}
    )
    return pd.DataFrame(
        {
            "epoch": per_epoch.index + 1,
            "train": per_epoch.get("train/loss_epoch"),
            "validation": per_epoch.get("validation/loss"),
        }
    ).reset_index(drop=True)


def _keras_curve(folder: Path) -> pd.DataFrame | None:
    path = folder / "logs" / "metrics.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    return pd.DataFrame(
        {
            "epoch": table["epoch"] + 1,
            "train": table.get("loss"),
            "validation": table.get("val_loss"),
        }
    )


def _fraction_caption(schema, fractions, lower, upper, observed, index, questions) -> str:
    """Two lines per question, names in full: the question and its most likely answer, then the
    predicted fraction, its interval and (for survey galaxies) the volunteers' fraction."""
    lines = []
    for name in questions:
        q = schema.get_question(name)
        best = max(q.answers, key=lambda a: fractions[index, a.index])
        short = name.removesuffix(f"-{q.campaign}") if q.campaign else name
        i = best.index
        line = f"  {fractions[index, i]:.2f} [{lower[index, i]:.2f}, {upper[index, i]:.2f}]"
        if observed is not None and np.isfinite(observed[index, i]):
            line += f", volunteers {observed[index, i]:.2f}"
        lines += [f"{short}: {best.name}", line]
    return "\n".join(lines)


def draw_galleries(run: Run, analysis: dict) -> list[Path]:
    """Test galaxies (predicted, with 90% intervals, vs volunteers) and Hubble Deep Field ones."""
    from zoobot.shared import credible_intervals, expected_vote_fractions

    s = run.settings
    schema = analysis["schema"]
    questions = [q.name for q in schema.questions[:4]]
    catalog = _vote_table(run)
    out = []
    lower, upper = credible_intervals(analysis["concentrations"], schema, s.interval_level)
    n = min(s.gallery_galaxies, len(analysis["ids"]))
    ids = analysis["ids"][:n]
    captions = [
        _fraction_caption(
            schema, analysis["predicted"], lower, upper, analysis["observed"], i, questions
        )
        for i in range(n)
    ]
    titles = [
        f"{i}: true {catalog.loc[i, 'true_kind']}, bar {catalog.loc[i, 'true_bar']}"
        + (", ring" if catalog.loc[i, "true_ring"] else "")
        for i in ids
    ]
    out.append(
        plots.gallery(
            catalog.loc[ids, "file_loc"].tolist(),
            captions,
            titles,
            run.path(f"{FIGURES}/gallery_test_galaxies.png"),
            suptitle="Held-out synthetic galaxies: most likely answer, predicted fraction "
            f"[{s.interval_level:.0%} interval], volunteers' fraction",
        )
    )
    hubble = run.path("torch/predictions/hubble.parquet")
    if hubble.exists():
        from zoobot.shared import read_predictions_full

        full = read_predictions_full(hubble)
        fractions = expected_vote_fractions(full.concentrations, schema)
        lo, hi = credible_intervals(full.concentrations, schema, s.interval_level)
        hdf = pd.read_csv(run.path(HUBBLE) / "catalog.csv", dtype={"id_str": str}).set_index(
            "id_str"
        )
        n = min(s.gallery_galaxies, len(full.id_str))
        ids = list(full.id_str[:n])
        out.append(
            plots.gallery(
                hdf.loc[ids, "file_loc"].tolist(),
                [
                    _fraction_caption(schema, fractions, lo, hi, None, i, questions)
                    for i in range(n)
                ],
                ids,
                run.path(f"{FIGURES}/gallery_hubble_deep_field.png"),
                suptitle="Real Hubble Deep Field galaxies, predicted by the synthetic-trained model",
            )
        )
    return out


def draw_figures(run: Run, analysis: dict, runs: pd.DataFrame, finetune: dict) -> list[Path]:
    s = run.settings
    schema = analysis["schema"]
    figures = draw_galleries(run, analysis)
    figures.append(
        plots.predicted_vs_volunteers(
            analysis["observed"],
            analysis["predicted"],
            analysis["totals"],
            list(schema.label_cols),
            run.path(f"{FIGURES}/predicted_vs_volunteer_fractions.png"),
        )
    )
    figures.append(
        plots.calibration(
            analysis["calibration"],
            run.path(f"{FIGURES}/interval_calibration.png"),
            f"Central credible intervals of the predicted votes ({analysis['summary']['passes']} "
            "MC-dropout passes), test galaxies",
        )
    )
    curves = {}
    pretrain = _lightning_curve(run.path(TORCH_TREE))
    if pretrain is not None:
        figures.append(
            plots.training_curves(
                {f"pretraining {s.architecture} (torch)": pretrain},
                run.path(f"{FIGURES}/training_curves_pretraining.png"),
                "Pretraining on votes: Dirichlet-multinomial likelihood + weighted vote-fraction KL",
            )
        )
    seed = s.finetune_seeds[0]
    first_seed = runs[runs["seed"] == seed] if not runs.empty else runs
    for _, r in first_seed.iterrows():
        if r["framework"] == "torch":
            folder = run.path(f"torch/finetune/{r['start']}-seed{seed}/lr{r['learning_rate']:g}")
            curve = _lightning_curve(folder)
        else:
            curve = _keras_curve(run.path(f"tf/finetune/{r['start']}-seed{seed}"))
        if curve is not None:
            curves[f"{r['framework']} {r['start']}, lr {r['learning_rate']:g}"] = curve
    if curves:
        figures.append(
            plots.training_curves(
                curves,
                run.path(f"{FIGURES}/training_curves_finetuning.png"),
                f"Finetuning the '{s.feature}' classifier, seed {seed} at the learning rate each "
                "start picked: class-balanced cross-entropy",
            )
        )
    if not runs.empty:
        notes = [
            f"{framework}, pretrained - scratch paired by seed: ROC AUC {d['mean']:+.3f} "
            f"(90% interval {d['low']:+.3f} to {d['high']:+.3f})"
            for framework, starts in finetune.items()
            if "paired" in starts
            for d in [starts["paired"]["roc_auc"]]
        ]
        figures.append(
            plots.finetune_comparison(
                runs,
                run.path(f"{FIGURES}/finetune_pretrained_vs_scratch.png"),
                s.feature,
                "\n".join(notes),
            )
        )
    features = run.path("comparison/features.npz")
    if features.exists():
        data = np.load(features)
        figures.append(
            plots.feature_agreement(
                data["torch"], data["tf"], run.path(f"{FIGURES}/torch_vs_tf_features.png")
            )
        )
    return figures


# -- report ------------------------------------------------------------------------------------------
def _share(value) -> str:
    """A share as a whole percentage ("-" when not defined)."""
    return "-" if value is None or not np.isfinite(value) else f"{value:.0%}"


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


FILE_NOTES = {
    f"{SURVEY}/": "synthetic survey: images/, catalog.parquet/.csv (votes + true_* columns), "
    "catalog_with_splits.parquet",
    f"{SHARDS}/": "TFRecord shards + shards.json sidecar (zoobot.data.shards; read by zoobot.tf.data)",
    f"{HF_DATASET}/": "Hugging Face dataset in the Hub layout (datasets.load_dataset(folder))",
    f"{HUBBLE}/": "real galaxies cut out of the Hubble Deep Field + catalog.csv",
    f"{LABELS}/": "finetuning labels, one draw per seed (draw_<seed>.csv; with the held-out test "
    "galaxies' labels)",
    f"{ENCODER}/": "the pretrained encoder, timm Hub layout + model card (README.md): load it "
    "with zoobot.torch.load_encoder or zoobot.tf.encoders.load_encoder",
    f"{TORCH_TREE}/best/": "the whole pretrained tree model (encoder + Dirichlet head), Hub layout",
    f"{TORCH_TREE}/logs/": "Lightning CSV logs of pretraining",
    "torch/predictions/": "torch predictions: full tables (concentrations per MC pass) and "
    "*_friendly.parquet (fractions with credible intervals), test + Hubble",
    "tf/predictions/": "TensorFlow predictions of the same tree model (loaded from the torch folder)",
    f"{TF_TREE}/": "the same tree model trained by zoobot.tf (Keras CSV log, best/ model, "
    "predictions/ of the test galaxies)",
    "torch/finetune/": "torch finetuning runs, <start>-seed<seed>/lr<rate>/ (Lightning logs, best/ "
    "model; test_predictions for the rate picked)",
    "tf/finetune/": "TensorFlow finetuning runs (Keras CSV logs, best/ model, test_predictions)",
    "comparison/features.npz": "the same galaxies' features from zoobot.torch and zoobot.tf",
    f"{TABLES}/": "CSV tables behind the numbers below",
    f"{FIGURES}/": "the plots",
    "steps/": "one JSON per step: its results and time",
}


def constant_sentence(label: str, rows: list[dict]) -> str:
    """Plainly: on which questions the model is no better than always predicting the mean, and on
    which it is not clearly better (the bootstrap interval of its gain share reaches 0)."""
    rated = [r for r in rows if r["n"] > 0]
    worse = [r["question"] for r in rated if not r["model_mae"] < r["constant_mae"]]
    unclear = [
        r["question"]
        for r in rated
        if r["question"] not in worse and r["gain_low"] is not None and r["gain_low"] <= 0
    ]
    parts = []
    if worse:
        parts.append(f"**no better than the constant on {', '.join(worse)}**")
    else:
        parts.append("better than the constant on every question")
    if unclear:
        parts.append(
            f"not clearly better (the 90% interval of the gain share reaches 0) on {', '.join(unclear)}"
        )
    return f"{label}: " + "; ".join(parts) + "."


def _mean_std(m: dict) -> str:
    std = "" if not np.isfinite(m["std"]) else f" ± {m['std']:.3f}"
    return f"{m['mean']:.3f}{std}"


def finetune_section(s, report: dict, ft: dict) -> list[str]:
    """The few-label comparison: what was compared, the table, the paired differences, the verdict."""
    test = report["labels"].get("test", {})
    n_test, positives = test.get("n", 0), test.get("positives", 0)
    grid = ", ".join(f"{lr:g}" for lr in s.finetune_learning_rates)
    lines = [
        "",
        f"## Finetuning a '{s.feature}' classifier from {s.n_labels_train} labels: pretrained vs scratch",
        "",
        f"The same classifier (`{s.architecture}`, every layer trained, head dropout 0.2) starts "
        "either from the encoder pretrained on the votes or from random weights, with the same "
        "budget: a class-balanced cross-entropy (the rare class weighs as much as the common one), "
        f"{s.finetune_epochs} epochs, the same augmentation, and the same learning-rate grid "
        f"({grid}; {len(s.finetune_learning_rates)} points, smaller than a real search to keep the "
        "demo short), each start keeping the rate with the lowest class-balanced loss on "
        f"{s.n_labels_validation} validation labels. Each seed draws its own "
        f"{s.n_labels_train} + {s.n_labels_validation} labels and initialisation; both starts "
        f"share them. Scored on all {n_test} held-out test galaxies ({positives} with the feature, "
        f"{n_test - positives} without): a model that always answers 'no' would be "
        f"{(n_test - positives) / max(n_test, 1):.1%} accurate, with balanced accuracy 0.5 and "
        "ROC AUC 0.5. Mean ± standard deviation over seeds; balanced accuracy and the predicted "
        "positive rate at probability 0.5. zoobot.tf trains the same classifier on the first "
        f"seed's labels at learning rate {s.finetune_learning_rate:g}: a check that it finetunes "
        "the torch-trained encoder, not part of the comparison.",
        "",
        "| framework | start | seeds | learning rate picked | train positives / negatives | "
        "ROC AUC | balanced accuracy | accuracy | predicted positive rate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for framework, starts in ft.items():
        for start in ("pretrained", "scratch"):
            if start not in starts:
                continue
            m = starts[start]
            rates = ", ".join(f"{lr:g}" for lr in m["learning_rates"])
            balance = ", ".join(
                f"{p}/{n}" for p, n in zip(m["train_positives"], m["train_negatives"], strict=True)
            )
            lines.append(
                f"| {framework} | {start} | {len(m['seeds'])} | {rates} | {balance} | "
                + " | ".join(_mean_std(m[k]) for k in FINETUNE_METRICS)
                + " |"
            )
    for framework, starts in ft.items():
        if "verdict" not in starts:
            continue
        if "paired" in starts:
            lines += _paired_table(framework, starts["paired"])
        lines += ["", f"**Verdict ({framework}):** {starts['verdict']}"]
    return lines


def _paired_table(framework: str, paired: dict) -> list[str]:
    """Pretrained - scratch per metric, seed by seed (2 or more seeds)."""
    lines = [
        "",
        f"### Paired by seed ({framework}): pretrained - scratch",
        "",
        "| metric | mean ± std | 90% interval of the mean | per seed | pretrained ahead |",
        "| --- | --- | --- | --- | --- |",
    ]
    for metric, d in paired.items():
        per_seed = ", ".join(f"{v:+.3f}" for v in d["differences"])
        lines.append(
            f"| {metric.replace('_', ' ')} | {d['mean']:+.3f} ± {d['std']:.3f} | "
            f"{d['low']:+.3f} to {d['high']:+.3f} | {per_seed} | {d['first_ahead']} of {d['n']} |"
        )
    return lines


def write_report(run: Run, report: dict, figures: list[Path]) -> Path:
    s = run.settings
    h = report["headline"]
    title = "Zoobot science report" if s.mode == "science" else "Zoobot demo report"
    lines = [
        f"# {title}",
        "",
        f"Mode `{s.mode}`: {s.n_galaxies} synthetic galaxies ({s.schema} decision tree, "
        f"{s.image_size} px), encoder `{s.architecture}`, rare feature `{s.feature}`. "
        f"This invocation took {_fmt(report['total_seconds'], 0)} s; the steps' own wall times "
        f"sum to {_fmt(report['steps_seconds'], 0)} s, on {report['machine']['cpus']} CPUs "
        f"(load average at the end {report['machine']['load_average']}).",
        "",
        "## Headline numbers",
        "",
        "| what | value |",
        "| --- | --- |",
    ]
    for key, value in h.items():
        lines.append(f"| {key} | {_fmt(value) if isinstance(value, float) else value} |")
    ft = report.get("finetune", {})
    if ft:
        lines += finetune_section(s, report, ft)
    votes = report.get("vote_fractions", {})
    if votes:
        lines += [
            "",
            "## Does the model learn from the votes? (test galaxies)",
            "",
            "| model | galaxies | MC passes | model MAE | constant MAE | noise floor | "
            "true-parameter reference MAE | gain share, mean (pooled, worst question) | "
            "beats the constant on every question | 90% interval coverage (range over questions) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for label, v in votes.items():
            low, high = v["coverage_range"]
            lines.append(
                f"| {label} | {v['galaxies']} | {v['passes']} | {v['model_mae']:.3f} | "
                f"{v['constant_mae']:.3f} | {v['noise_floor']:.3f} | {_fmt(v['reference_mae'])} | "
                f"{_share(v['gain_captured'])} ({_share(v['pooled_gain_captured'])}, "
                f"{_share(v['min_gain_captured'])}) | {'yes' if v['beats_constant'] else 'NO'} | "
                f"{low:.3f}-{high:.3f} |"
            )
        lines += [""] + [f"- `{label}`: {TRAINED_BY[label]}" for label in votes]
        lines += [
            "",
            "Per question, over the test galaxies with at least 5 votes for it: MAE is the mean "
            "absolute error of the expected vote fraction against the volunteers' fraction; the "
            "constant always predicts the training galaxies' mean fraction; the noise floor is the "
            "error a perfect model would still make because a few votes scatter around the crowd's "
            "fraction; the reference is gradient boosting on the simulator's true parameters "
            "(fitted on the training galaxies): about what the images can teach. The gain share "
            "is (constant - model) / (constant - reference), with its 90% bootstrap interval. "
            "Coverage: share of the observed votes inside the central 90% posterior-predictive "
            "interval (0.9 when calibrated).",
            "",
        ]
        lines += [f"- {constant_sentence(label, t)}" for label, t in report["by_question"].items()]
        for label, table in report.get("by_question", {}).items():
            lines += [
                "",
                f"### Per question ({label})",
                "",
                "| question | galaxies | model MAE | constant | noise floor | reference | "
                "gain share [90% CI] | coverage | verdict |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for row in table:
                share = f"{_share(row['gain_captured'])} "
                share += f"[{_share(row['gain_low'])}, {_share(row['gain_high'])}]"
                lines.append(
                    f"| {row['question']} | {row['n']} | {_fmt(row['model_mae'])} | "
                    f"{_fmt(row['constant_mae'])} | {_fmt(row['noise_floor'])} | "
                    f"{_fmt(row['reference_mae'])} | {share} | {_fmt(row['coverage'])} | "
                    f"{row['verdict']} |"
                )
    cmp_ = report.get("comparison", {})
    if cmp_:
        lines += [
            "",
            "## The same weights in PyTorch and TensorFlow",
            "",
            "| check | max abs diff | max rel diff (to scale) | shape |",
            "| --- | --- | --- | --- |",
        ]
        for name in ("preprocessing", "features", "tree_concentrations"):
            if name in cmp_:
                d = cmp_[name]
                lines.append(
                    f"| {name} | {d['max_abs_diff']:.2e} | {d['max_rel_diff']:.2e} | "
                    f"{tuple(d['shape'])} |"
                )
    lines += [
        "",
        "## Steps",
        "",
        "Wall time of each step's process, and the CPU time it used (with its workers): on a "
        "shared machine the wall time grows with the other load, the CPU time much less.",
        "",
        "| step | wall seconds | CPU seconds | status |",
        "| --- | --- | --- | --- |",
    ]
    for step, info in report["steps"].items():
        status = info.get("status", "")
        if info.get("skipped"):
            status += " (earlier run)"
        lines.append(
            f"| {step} | {_fmt(info.get('seconds'), 1)} | {_fmt(info.get('cpu'), 1)} | {status} |"
        )
    lines += ["", "## Files", "", "| path | what |", "| --- | --- |"]
    for path, note in FILE_NOTES.items():
        if run.path(path.rstrip("/")).exists():
            lines.append(f"| `{path}` | {note} |")
    lines += ["", "## Figures", ""]
    for figure in figures:
        rel = figure.relative_to(run.out).as_posix()
        lines += [f"### {figure.stem.replace('_', ' ')}", "", f"![{figure.stem}]({rel})", ""]
    if report.get("missing"):
        lines += ["## Not run or failed", ""]
        lines += [f"- {m}: {report['steps'][m].get('status')}" for m in report["missing"]] + [""]
    path = run.path("report.md")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Who trained and who predicted, for each row of the vote-fraction tables.
TRAINED_BY = {
    "torch": "trained and predicted by zoobot.torch",
    "tf": "the torch-trained model predicted by zoobot.tf",
    "tf_trained": "trained and predicted by zoobot.tf",
}


def headline(report: dict) -> dict:
    h: dict = {}
    survey = report.get("survey", {})
    if survey:
        h["galaxies (train/validation/test)"] = "/".join(
            str(survey["splits"].get(k, 0)) for k in ("train", "validation", "test")
        )
    votes = report.get("vote_fractions", {})
    for label in ("torch", "tf_trained"):
        if label not in votes:
            continue
        v = votes[label]
        who = "" if "tf_trained" not in votes else f"{TRAINED_BY[label]}: "
        h[f"{who}vote fraction MAE, test (constant; true-parameter reference)"] = (
            f"{v['model_mae']:.3f} ({v['constant_mae']:.3f}; {_fmt(v['reference_mae'])})"
        )
        h[f"{who}share of the learnable gain, mean over questions (worst)"] = (
            f"{_share(v['gain_captured'])} ({_share(v['min_gain_captured'])})"
        )
        h[f"{who}beats the constant on every question"] = "yes" if v["beats_constant"] else "NO"
        low, high = v["coverage_range"]
        h[f"{who}coverage of 90% credible intervals, per question"] = f"{low:.3f}-{high:.3f}"
    for framework, starts in report.get("finetune", {}).items():
        if "pretrained" in starts and "scratch" in starts:
            pre, scratch = starts["pretrained"]["roc_auc"], starts["scratch"]["roc_auc"]
            text = (
                f"{_mean_std(pre)} vs {_mean_std(scratch)} ({pre['n']} seed{'s' * (pre['n'] > 1)})"
            )
            if "paired" in starts:
                d = starts["paired"]["roc_auc"]
                text += (
                    f"; paired difference {d['mean']:+.3f} (90% interval {d['low']:+.3f} to "
                    f"{d['high']:+.3f}), pretrained ahead on {d['first_ahead']} of {d['n']} seeds"
                )
            h[f"{framework}: {report['feature']} ROC AUC, pretrained vs scratch"] = text
    cmp_ = report.get("comparison", {})
    if "features" in cmp_:
        h["torch vs TF features, max rel diff"] = f"{cmp_['features']['max_rel_diff']:.1e}"
    if "tree_concentrations" in cmp_:
        h["torch vs TF tree outputs, max rel diff"] = (
            f"{cmp_['tree_concentrations']['max_rel_diff']:.1e}"
        )
    if "torch_vs_tf_fractions" in report:
        h["torch vs TF predicted fractions (MC dropout), mean abs diff"] = round(
            report["torch_vs_tf_fractions"], 4
        )
    return h


def _rows(reference: pd.DataFrame | None, predictions: Path) -> np.ndarray | None:
    """The reference's rows in the order of the galaxies of `predictions` (None without one)."""
    if reference is None:
        return None
    from zoobot.shared import read_predictions_full

    return reference.loc[list(read_predictions_full(predictions).id_str)].to_numpy()


def make_report(run: Run, steps: dict, total_seconds: float) -> dict:
    """Analyse, draw and write report.md + report.json; returns the report dictionary."""
    import os

    s = run.settings
    run.path(TABLES).mkdir(parents=True, exist_ok=True)
    data = run.results("data")
    report: dict = {
        "settings": json.loads(s.to_json()),
        "feature": s.feature,
        "survey": data.get("survey", {}),
        "labels": data.get("labels", {}).get("splits", {}),
        "pretrain": run.results("torch_pretrain"),
        "comparison": run.results("compare"),
        "steps": steps,
        "total_seconds": total_seconds,
        "steps_seconds": sum(info.get("seconds") or 0.0 for info in steps.values()),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "vote_fractions": {},
        "missing": [name for name, info in steps.items() if info.get("status") != "done"],
    }
    analysis = None
    report["by_question"] = {}
    reference = None
    torch_test = run.path("torch/predictions/test.parquet")
    tf_test = run.path("tf/predictions/test.parquet")
    tf_trained_test = run.path(f"{TF_TREE}/predictions/test.parquet")
    tests = [path for path in (torch_test, tf_test, tf_trained_test) if path.exists()]
    if tests:
        from zoobot.shared import read_predictions_full

        ids = sorted({i for path in tests for i in read_predictions_full(path).id_str})
        values = true_parameter_reference(run, ids)
        reference = None if values is None else pd.DataFrame(values, index=ids)
    if torch_test.exists():
        analysis = vote_fraction_analysis(run, torch_test, "torch", _rows(reference, torch_test))
        report["vote_fractions"]["torch"] = analysis["summary"]
        report["by_question"]["torch"] = analysis["by_question"].to_dict("records")
    if tf_test.exists():
        tf_analysis = vote_fraction_analysis(run, tf_test, "tf", _rows(reference, tf_test))
        report["vote_fractions"]["tf"] = tf_analysis["summary"]
        report["by_question"]["tf"] = tf_analysis["by_question"].to_dict("records")
        if analysis is not None:
            order = pd.Index(tf_analysis["ids"]).get_indexer(analysis["ids"])
            report["torch_vs_tf_fractions"] = float(
                np.nanmean(np.abs(analysis["predicted"] - tf_analysis["predicted"][order]))
            )
    if tf_trained_test.exists():
        label = "tf_trained"
        trained = vote_fraction_analysis(
            run, tf_trained_test, label, _rows(reference, tf_trained_test)
        )
        report["vote_fractions"][label] = trained["summary"]
        report["by_question"][label] = trained["by_question"].to_dict("records")
        report["tf_pretrain"] = run.results("tf_pretrain")
    runs = finetune_runs(run)
    if not runs.empty:
        runs.to_csv(run.path(f"{TABLES}/finetune_runs.csv"), index=False)
    report["finetune"] = finetune_summary(runs)
    figures = draw_figures(run, analysis, runs, report["finetune"]) if analysis is not None else []
    report["headline"] = headline(report)
    report["figures"] = [f.relative_to(run.out).as_posix() for f in figures]
    md = write_report(run, report, figures)
    run.path("report.json").write_text(
        json.dumps(jsonable(report), indent=2) + "\n", encoding="utf-8"
    )
    say(
        f"  wrote {md.name}, report.json, {len(figures)} figures in {FIGURES}/, tables in {TABLES}/"
    )
    return report
