"""Pretraining recipe sweep: `zoobot.torch.train` with changed settings, scored as the report does.

On a finished science run (`nox -s science`), pretrains the same tree as its `torch_pretrain` step
(same survey, split, architecture, epochs and batch size) with `--set` training settings and `--opt`
trainer options changed, predicts the test galaxies twice (the report's MC-dropout passes, and one
dropout-free pass) and scores each with the report's own `score_vote_fractions` (constant,
true-parameter reference, share of the gain), writing the per-question tables and `result.json`
with the mean share. `--model` scores an already trained tree instead. Run in the `parity`/`demo`
environment, one training thread by default (two sweeps at a time on 2 cores):

    python demo/recipe_sweep.py --run science-output --out sweep/lr2e-3 \
        --set learning_rate=2e-3 --set weight_decay=0.01
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import report
from common import Run, Settings
from run_demo import SETTINGS_FILE
from steps_torch import survey_catalog


def key_values(pairs: list[str]) -> dict:
    """`name=value` strings as a dict, values read as JSON where they parse (numbers, null)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected name=value, got {pair!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished science run's output folder")
    parser.add_argument("--out", required=True, help="folder for this sweep point")
    parser.add_argument("--model", help="score this trained tree folder instead of training")
    parser.add_argument("--set", action="append", default=[], help="training setting name=value")
    parser.add_argument("--opt", action="append", default=[], help="trainer option name=value")
    parser.add_argument("--seed", type=int, help="seed (default: the run's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    import torch

    from zoobot.shared import read_predictions_full
    from zoobot.torch import train
    from zoobot.torch.predictions import predict

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = Path(args.run) / SETTINGS_FILE
    run = Run(args.run, Settings.from_json(settings_file.read_text(encoding="utf-8")))
    config = run.settings
    seed = config.seed if args.seed is None else args.seed
    catalog = survey_catalog(run)
    settings, options = key_values(args.set), key_values(args.opt)
    timer = time.monotonic()
    if args.model:
        folder = Path(args.model)
    else:
        torch.manual_seed(seed)
        train(
            catalog,
            config.schema,
            out / "tree",
            architecture=config.architecture,
            epochs=config.pretrain_epochs,
            batch_size=config.pretrain_batch_size,
            image_size=config.image_size,
            num_workers=1,
            patience=config.pretrain_epochs,
            seed=seed,
            model_kwargs=settings,
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            **options,
        )
        folder = out / "tree" / "best"
    result = {"settings": settings, "options": options, "seed": seed}
    result["train_seconds"] = time.monotonic() - timer
    test = catalog[catalog["split"] == "test"]
    reference = report.true_parameter_reference(run, list(test["id_str"]))
    for label, n_samples in (("mc_dropout", config.mc_samples), ("dropout_free", 1)):
        path = out / f"test_{label}.parquet"
        predict(
            test,
            folder,
            path,
            n_samples=n_samples,
            mc_dropout=n_samples > 1,
            image_size=config.image_size,
            num_workers=0,
            progress=False,
            resume=False,
            overwrite=True,
            seed=seed,
        )
        predictions = read_predictions_full(path)
        if list(predictions.id_str) != list(test["id_str"]):
            raise RuntimeError(f"{path}: predictions are not in the test galaxies' order")
        table = report.score_vote_fractions(run, predictions, reference)[0]
        table.to_csv(out / f"table_{label}.csv", index=False)
        result[label] = {
            "mean_gain_share": float(table["gain_captured"].mean()),
            "mean_mae": float(table["model_mae"].mean()),
            "gain_share": dict(
                zip(table["question"], table["gain_captured"].round(3), strict=True)
            ),
        }
        print(f"{label}: mean share of the reference gain {result[label]['mean_gain_share']:.1%}")
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
