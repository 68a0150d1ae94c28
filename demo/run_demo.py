"""The Zoobot demo, end to end on a synthetic Galaxy Zoo survey: `python demo/run_demo.py --out DIR`.

1. make a survey with volunteer votes through a real decision tree; validate it; write TFRecord
   shards and a Hub-layout Hugging Face dataset; cut real galaxies out of the Hubble Deep Field;
2. pretrain a small encoder on the votes (zoobot.torch, `train`'s defaults) and publish it
   to a local Hub-layout folder with a model card;
3. load the published weights in PyTorch and in TensorFlow and compare their numbers;
4. finetune a classifier for a rare feature from a few hundred labels against the same classifier
   trained from scratch with the same budget, over several seeds (torch), and in TF for one;
5. predict vote fractions with MC-dropout uncertainty for held-out and Hubble Deep Field galaxies;
6. write tables, plots, report.md and report.json into DIR.

`--science` runs the larger experiment instead (`nox -s science`): a bigger survey at more pixels,
the same tree model pretrained by zoobot.torch and by zoobot.tf, and the same per-question tables
for both (steps data, torch_pretrain, torch_predict, tf_pretrain).

Each step runs in its own Python process, importing only the framework it needs, as a user would
(step 3 alone imports both). Steps whose results exist (`DIR/steps/*.json`, same settings) are
skipped, so an interrupted demo carries on; `--fresh` starts over. `--quick` is a ~2 minute version
with tiny sizes, for tests. `--backend jax` runs the zoobot.tf steps with Keras on JAX (their
results are redone when the backend changes). Step output goes to the terminal; library warnings
to DIR/logs/.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from common import KERAS_STEPS, Run, Settings, Timer, say, settings_for

# name -> (what it does, steps it needs)
STEPS = {
    "data": ("make the survey, shards, Hugging Face dataset and Hubble Deep Field sample", ()),
    "torch_pretrain": ("pretrain an encoder on the votes (torch) and publish it", ("data",)),
    "compare": ("load the published weights in torch and TF and compare", ("torch_pretrain",)),
    "torch_finetune": (
        "finetune a rare-feature classifier in torch vs scratch",
        ("torch_pretrain",),
    ),
    "tf_finetune": ("finetune the same classifier in TensorFlow vs scratch", ("torch_pretrain",)),
    "torch_predict": ("predict vote fractions with uncertainty (torch)", ("torch_pretrain",)),
    "tf_predict": ("predict vote fractions with the same model in TensorFlow", ("torch_pretrain",)),
    "tf_pretrain": (
        "pretrain the same tree model in zoobot.tf and predict the test galaxies",
        ("data",),
    ),
}
# What a run does unless `--steps` says otherwise, by preset.
SCIENCE_STEPS = ("data", "torch_pretrain", "torch_predict", "tf_pretrain")
DEMO_STEPS = tuple(step for step in STEPS if step != "tf_pretrain")
SETTINGS_FILE = "settings.json"


def run_one_step(run: Run, step: str) -> dict:
    """Run a step in this process (called in the step's subprocess)."""
    if step == "data":
        import steps_data

        return steps_data.run_step(run)
    if step == "torch_pretrain":
        import steps_torch

        return steps_torch.pretrain(run)
    if step == "torch_finetune":
        import steps_torch

        return steps_torch.finetune(run)
    if step == "torch_predict":
        import steps_torch

        return steps_torch.predict_votes(run)
    if step == "compare":
        import steps_compare

        return steps_compare.compare(run)
    if step == "tf_finetune":
        import steps_tf

        return steps_tf.finetune(run)
    if step == "tf_predict":
        import steps_tf

        return steps_tf.predict_votes(run)
    if step == "tf_pretrain":
        import steps_tf

        return steps_tf.pretrain(run)
    raise ValueError(f"unknown step {step!r}")


def step_main(out: Path, step: str) -> int:
    """Entry point of a step's subprocess: run it and record its results."""
    settings = Settings.from_json((out / SETTINGS_FILE).read_text(encoding="utf-8"))
    run = Run(out, settings, os.environ.get("KERAS_BACKEND", "tensorflow"))
    timer = Timer()
    results = run_one_step(run, step)
    run.record(step, results, timer())
    return 0


def clear(out: Path) -> None:
    """Delete a previous demo output folder (only one that looks like a demo's)."""
    if not out.exists():
        return
    if any(out.iterdir()) and not (out / SETTINGS_FILE).exists():
        raise SystemExit(f"{out} exists and is not a demo output folder; not deleting it")
    shutil.rmtree(out)


def launch(run: Run, step: str) -> tuple[bool, str, float]:
    """Run `step` in a fresh Python process; stdout to the terminal, stderr to logs/<step>.log."""
    log = run.path(f"logs/{step}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    if step in KERAS_STEPS:
        env["KERAS_BACKEND"] = run.keras_backend
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TQDM_DISABLE", "1")
    command = [sys.executable, str(Path(__file__).resolve()), "--out", str(run.out), "--step", step]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w", encoding="utf-8") as stderr:
        code = subprocess.run(command, stderr=stderr, env=env, check=False).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if code == 0:
        return True, "", cpu
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-25:]
    return False, "\n".join(tail), cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="tiny sizes: about two minutes")
    preset.add_argument(
        "--science",
        action="store_true",
        help="the larger experiment, pretrained by both frameworks (nox -s science)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete earlier results and redo all")
    parser.add_argument(
        "--steps", help=f"comma-separated steps to run (default: the preset's): {', '.join(STEPS)}"
    )
    parser.add_argument(
        "--feature", help="rare feature to finetune on: ring, bar, strong_bar, merger"
    )
    parser.add_argument("--architecture", help="timm encoder (default test_resnet)")
    parser.add_argument("--n-galaxies", type=int, help="survey size")
    parser.add_argument("--pretrain-epochs", type=int, help="epochs of pretraining on the votes")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax"],
        default=os.environ.get("KERAS_BACKEND", "tensorflow"),
        help="Keras backend of the zoobot.tf steps (default: KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step in this process
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.step:
        return step_main(out, args.step)

    settings = settings_for(
        "quick" if args.quick else "science" if args.science else "full",
        feature=args.feature,
        architecture=args.architecture,
        n_galaxies=args.n_galaxies,
        pretrain_epochs=args.pretrain_epochs,
        seed=args.seed,
    )
    if args.fresh:
        clear(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS_FILE).write_text(settings.to_json() + "\n", encoding="utf-8")
    run = Run(out, settings, args.backend)
    default = SCIENCE_STEPS if settings.mode == "science" else DEMO_STEPS
    chosen = list(default) if not args.steps else [s.strip() for s in args.steps.split(",")]
    unknown = [s for s in chosen if s not in STEPS and s != "report"]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {list(STEPS)}")

    say(f"Zoobot demo ({settings.mode}, zoobot.tf on Keras's {args.backend} backend) -> {out}")
    statuses: dict[str, dict] = {}
    steps = {step: STEPS[step] for step in STEPS if step in chosen or run.step_done(step)}
    total = Timer()
    for number, (step, (what, needs)) in enumerate(steps.items(), start=1):
        header = f"[{number}/{len(steps) + 1}] {step}: {what}"
        if step not in chosen:
            statuses[step] = {"status": "done"}
            continue
        if run.step_done(step):
            seconds = _recorded_seconds(run, step)
            say(f"{header} -- already done ({seconds:.0f}s earlier), skipped")
            statuses[step] = {"status": "done", "seconds": seconds, "skipped": True}
            continue
        blocked = [n for n in needs if statuses.get(n, {}).get("status") != "done"]
        if blocked:
            say(f"{header} -- skipped: needs {blocked}")
            statuses[step] = {"status": f"skipped (needs {', '.join(blocked)})"}
            continue
        say(header)
        timer = Timer()
        ok, error, cpu = launch(run, step)
        statuses[step] = {"status": "done" if ok else "failed", "seconds": timer(), "cpu": cpu}
        if ok:
            say(f"    done in {timer():.1f}s (CPU time {cpu:.1f}s)")
        else:
            statuses[step]["error"] = error
            say(f"    FAILED after {timer():.1f}s (full log: logs/{step}.log):\n{error}")

    say(f"[{len(steps) + 1}/{len(steps) + 1}] report: tables, plots, report.md, report.json")
    timer = Timer()
    try:
        import report

        result = report.make_report(run, statuses, total())
    except Exception:
        traceback.print_exc()
        say("    the report could not be written")
        return 1
    say(f"    done in {timer():.1f}s")
    say("")
    say("Headline numbers:")
    for key, value in result["headline"].items():
        say(f"  {key}: {value}")
    say(f"Total {total():.0f}s ({time.strftime('%H:%M:%S')}); report: {out / 'report.md'}")
    failed = [s for s, info in statuses.items() if info["status"] == "failed"]
    if failed:
        say(f"FAILED steps: {failed} (see {out / 'logs'})")
        return 1
    return 0


def _recorded_seconds(run: Run, step: str) -> float:
    import json

    return float(json.loads(run.step_file(step).read_text(encoding="utf-8")).get("seconds", 0.0))


if __name__ == "__main__":
    sys.exit(main())
