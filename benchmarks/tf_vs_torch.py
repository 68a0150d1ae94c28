"""zoobot.tf against zoobot.torch: same machine, same run, same weights and images; figures are ratios.

TensorFlow and torch never share a process here: `benchmarks/tf_vs_torch_worker.py` is started once
per framework (same Python, `OMP_NUM_THREADS` and --threads compute threads for both: torch's
`set_num_threads`, TensorFlow's intra- and inter-op pools) and both get the same tasks. Inputs:
a synthetic survey rendered once at 424 px JPEG (cached between runs), its catalog, the same
images as TFRecord shards (`zoobot.data.shards.write_shards`), and per architecture a randomly
initialised `zoobot.torch.ZoobotTree` (decals_dr5 head) saved once with `zoobot.torch.save_pretrained`
that both sides load with their `from_pretrained`. Within each round the measurements of a group
run one after the other, the order reversing every round, and only one side computes at a time;
figures are medians over rounds, each ratio is ours (TF) / baseline. These shared 2-core machines
are often busy, so each measurement records the cores other processes used meanwhile (machine busy
time from /proc/stat minus the worker's own); before each group the driver waits (up to
--wait-quiet s) for a quiet machine and repeats a group (up to --retries times) when others used
more than --busy-cores during it, keeping the quietest and most even attempt.

Figures (issue 7):
1. predictions, per architecture (efficientnet_b0, convnext_nano): `zoobot.tf.predictions` from the
   image files over `zoobot.torch.predictions` from the same files, 424 px JPEGs -> 224 px, fp32
   defaults, n_samples=1, same batch size and decoding workers (target >= 0.8x);
2. predictions from TFRecord shards over predictions from image files, both `zoobot.tf` (>= 1.0x);
   and (informative) TF from shards over torch from files;
3. training images/s, `zoobot.tf` (Keras fit, `train_dataset`) over `zoobot.torch` (Lightning,
   `GalaxyDataModule`), same architecture and batch, fp32, after warm-up steps (no target).
The TF and torch predictions of the same weights are compared (max |difference| of the expected
vote fractions, aligned by id_str) to show both ran the same model on the same images.

Run: python benchmarks/tf_vs_torch.py [--json out.json] [--rounds 3] [--images 256]
     [--architectures efficientnet_b0,convnext_nano] [--quick]
     (about 15-25 minutes on 2 idle cores; the workers' output goes to <cache-dir>/tf_vs_torch.log)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoobot.data.shards import write_shards
from zoobot.data.synthetic import make_survey
from zoobot.shared import get_schema
from zoobot.shared.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_vs_original_worker import machine_busy_seconds, tree_cpu_seconds  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER = HERE / "tf_vs_torch_worker.py"
BUSY_LOAD = 2.5
FIGURES = ("predict", "train")


class Side:
    """A worker process of one framework, answering one task at a time."""

    def __init__(self, name: str, threads: int, scratch: Path, log: Path):
        self.name = name
        self.log = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {sys.executable}\n")
        self.log.flush()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": str(threads),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), "--framework", name, "--threads", str(threads)]
            + ["--scratch", str(scratch / name)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
            env=env,
        )
        if not self.process.stdout.readline():
            raise RuntimeError(f"the {name} worker did not start; see {log}")

    def ask(self, task: dict) -> dict:
        """The worker's reply, with `others_cpu`: cores that other processes (and the hypervisor's
        steal) kept busy meanwhile, i.e. machine busy time minus this worker's, over wall time."""
        pid = self.process.pid
        wall, busy, ours = time.perf_counter(), machine_busy_seconds(), tree_cpu_seconds(pid)
        self.process.stdin.write(json.dumps(task) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker died during {task['task']}; see its log")
        wall = time.perf_counter() - wall
        others = (machine_busy_seconds() - busy) - (tree_cpu_seconds(pid) - ours)
        reply = json.loads(line)
        reply["others_cpu"] = max(0.0, others / wall) if wall > 0 else 0.0
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@dataclass
class Figure:
    """One row of the table: a value per side per round, the ratio of medians, a target."""

    key: str
    title: str
    unit: str
    target: float | None
    baseline_is: str
    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.ours or not self.baseline:
            return None
        return statistics.median(self.ours) / statistics.median(self.baseline)

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "baseline_is": self.baseline_is,
            "ours_median": statistics.median(self.ours) if self.ours else None,
            "baseline_median": statistics.median(self.baseline) if self.baseline else None,
            "ratio": self.ratio,
            "round_ratios": [o / b for o, b in zip(self.ours, self.baseline, strict=False)],
            "target": self.target,
            "target_is": ">=",
            "target_on": "ratio",
            "met": self.met,
            "errors": self.errors,
            **self.extra,
        }


@dataclass
class Step:
    """One task for one side; its result's images/s goes to each (figure, "ours" | "baseline")."""

    label: str
    side: str
    task: dict
    targets: list[tuple[Figure, str]]


class Bench:
    benchmark_name = "zoobot.tf vs zoobot.torch"
    ours_is = "zoobot.tf"

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.figures: dict[str, Figure] = {}
        self.loads: list[float] = []
        self.agreement: dict[str, list[float]] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="zoobot-tf-vs-torch-"))
        self.schema = get_schema("decals_dr5")

    def figure(self, key: str, *args) -> Figure:
        if key not in self.figures:
            self.figures[key] = Figure(key, *args)
        return self.figures[key]

    # ------------------------------------------------------------------------------- inputs

    def prepare(self) -> None:
        """Render (or reuse) the survey; write its catalog, shards and small warm-up sources."""
        a = self.args
        start = time.perf_counter()
        folder = a.cache_dir / f"tf-vs-torch-survey-424-{a.images}"
        survey = make_survey(a.images, folder, image_size=424, workers=2, progress=False)
        columns = ["id_str", "file_loc", *self.schema.label_cols]
        self.catalog = self.scratch / "catalog.parquet"
        survey[columns].to_parquet(self.catalog, index=False)
        self.shards = self.scratch / "shards"
        write_shards(
            survey[columns], self.shards, schema=self.schema, shard_size=a.shard_size,
            splits={"train": 1.0}, workers=2, progress=False,
        )  # fmt: skip
        warm = survey[columns].iloc[: a.batch_size]
        self.warm_catalog = self.scratch / "warm.parquet"
        warm.to_parquet(self.warm_catalog, index=False)
        self.warm_shards = self.scratch / "warm-shards"
        write_shards(
            warm, self.warm_shards, schema=self.schema, shard_size=a.shard_size,
            splits={"train": 1.0}, workers=1, progress=False,
        )  # fmt: skip
        for path in [*survey["file_loc"], *self.shards.glob("**/*.tfrecord*")]:
            Path(path).read_bytes()  # page cache: both sides read warm files
        print(
            f"survey: {len(survey)} galaxies at 424 px, catalog and shards "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    # ------------------------------------------------------------------------------- running

    def others_now(self, seconds: float = 2.0) -> float:
        """Cores other processes keep busy now (nothing of ours computes meanwhile)."""
        busy = machine_busy_seconds()
        time.sleep(seconds)
        return (machine_busy_seconds() - busy) / seconds

    def wait_quiet(self) -> None:
        """Wait (up to --wait-quiet seconds) until other processes use at most --busy-cores."""
        deadline = time.monotonic() + self.args.wait_quiet
        while True:
            others = self.others_now()
            if others <= self.args.busy_cores or time.monotonic() >= deadline:
                return
            print(f"  waiting for a quieter machine (others use {others:.2f} cores)", flush=True)
            time.sleep(3)

    def group(self, sides: dict[str, Side], r: int, steps: list[Step]) -> list[dict | None]:
        """Run `steps` back to back, in the given order in even rounds and reversed in odd ones;
        repeat the group (up to --retries times) when others were busy, keep the quietest."""
        steps = steps if r % 2 == 0 else steps[::-1]
        best, best_score, attempts = None, math.inf, []
        for attempt in range(1 + self.args.retries):
            self.wait_quiet()
            results = []
            for step in steps:
                self.loads.append(os.getloadavg()[0])
                reply = sides[step.side].ask(step.task)
                label = f"  {step.label:<36}"
                if not reply["ok"]:
                    print(f"{label} ERROR {reply['error']}", flush=True)
                    results.append({"error": reply["error"], "others_cpu": 0.0})
                    continue
                result = {**reply["result"], "others_cpu": reply["others_cpu"]}
                results.append(result)
                print(
                    f"{label} {result['images_per_second']:8.2f} img/s"
                    f"  others' CPU {reply['others_cpu']:.2f} cores",
                    flush=True,
                )
            others = [result["others_cpu"] for result in results]
            busy = max(others)
            score = busy + (busy - min(others))  # quietest, then most even
            attempts.append(
                [{"step": s.label, **res} for s, res in zip(steps, results, strict=True)]
            )
            if score < best_score:
                best, best_score = results, score
            if busy <= self.args.busy_cores:
                break
            if attempt < self.args.retries:
                print(f"  others used {busy:.2f} cores: repeating this group", flush=True)
        for step, result in zip(steps, best, strict=True):
            for figure, role in step.targets:
                if "error" in result:
                    figure.errors.append(f"{step.label}: {result['error']}")
                    continue
                (figure.ours if role == "ours" else figure.baseline).append(
                    result["images_per_second"]
                )
                figure.extra.setdefault("runs", []).append({"step": step.label, **result})
        if len(attempts) > 1:
            steps[0].targets[0][0].extra.setdefault("all_attempts", []).append(attempts)
        return [None if "error" in result else result for result in best]

    def save_models(self, torch_side: Side) -> None:
        self.models = {}
        for architecture in self.args.architectures:
            folder = self.scratch / "models" / architecture
            reply = torch_side.ask(
                {"task": "save_model", "architecture": architecture, "folder": str(folder)}
            )
            if not reply["ok"]:
                raise RuntimeError(f"saving {architecture} failed: {reply['error']}")
            self.models[architecture] = folder

    def round_predict(self, sides: dict[str, Side], r: int) -> None:
        a = self.args
        for arch in a.architectures:
            versus = self.figure(
                f"predict_{arch}_tf_vs_torch",
                f"predict {arch}, TF vs torch, image files, fp32",
                "img/s",
                0.8,
                "zoobot.torch from image files",
            )
            shards = self.figure(
                f"predict_{arch}_shards_vs_files",
                f"predict {arch}, TF from shards vs TF from files",
                "img/s",
                1.0,
                "zoobot.tf from image files",
            )
            shards_torch = self.figure(
                f"predict_{arch}_tf_shards_vs_torch",
                f"predict {arch}, TF from shards vs torch from files",
                "img/s",
                None,
                "zoobot.torch from image files",
            )
            base = {
                "task": "predict",
                "model": str(self.models[arch]),
                "batch_size": a.batch_size,
                "num_workers": a.num_workers,
                "image_size": 224,
            }
            files = {
                "kind": "files",
                "source": str(self.catalog),
                "warm_source": str(self.warm_catalog),
            }
            shard = {
                "kind": "shards",
                "source": str(self.shards),
                "warm_source": str(self.warm_shards),
            }
            out = {
                name: str(self.scratch / f"fractions-{arch}-{name}-{r}.npz")
                for name in ("torch", "tf_files", "tf_shards")
            }
            steps = [
                Step(f"{arch} torch files", "torch", base | files | {"fractions_out": out["torch"]},
                     [(versus, "baseline"), (shards_torch, "baseline")]),
                Step(f"{arch} tf files", "tf", base | files | {"fractions_out": out["tf_files"]},
                     [(versus, "ours"), (shards, "baseline")]),
                Step(f"{arch} tf shards", "tf", base | shard | {"fractions_out": out["tf_shards"]},
                     [(shards, "ours"), (shards_torch, "ours")]),
            ]  # fmt: skip
            if all(self.group(sides, r, steps)):
                self.compare(arch, out)

    def compare(self, arch: str, out: dict[str, str]) -> None:
        """Max |difference| of expected vote fractions: TF files and TF shards against torch."""
        index = np.asarray(self.schema.answer_question_index)

        def fractions(path: str) -> dict[str, np.ndarray]:
            data = np.load(path)
            alpha = data["concentrations"].astype(np.float64)
            totals = np.zeros((len(alpha), index.max() + 1))
            np.add.at(totals.T, index, alpha.T)
            return dict(zip(data["ids"], alpha / totals[:, index], strict=True))

        torch_f = fractions(out["torch"])
        for name in ("tf_files", "tf_shards"):
            tf_f = fractions(out[name])
            if set(tf_f) != set(torch_f):
                diff = math.inf  # not the same galaxies
            else:
                diff = max(float(np.abs(tf_f[k] - torch_f[k]).max()) for k in torch_f)
            self.agreement.setdefault(f"{arch} {name} vs torch", []).append(diff)

    def round_train(self, sides: dict[str, Side], r: int) -> None:
        a = self.args
        arch = a.train_architecture
        figure = self.figure(
            f"train_{arch}",
            f"train {arch}, TF vs torch, batch {a.train_batch}, fp32",
            "img/s",
            None,
            "zoobot.torch (Lightning)",
        )
        task = {
            "task": "train",
            "catalog": str(self.catalog),
            "architecture": arch,
            "batch_size": a.train_batch,
            "num_workers": a.num_workers,
            "warmup_steps": a.train_warmup,
            "steps": a.train_steps,
        }
        self.group(
            sides,
            r,
            [
                Step(f"train {arch} torch", "torch", task, [(figure, "baseline")]),
                Step(f"train {arch} tf", "tf", task, [(figure, "ours")]),
            ],
        )

    # ------------------------------------------------------------------------------- main

    def start_sides(self, log: Path) -> dict[str, Side]:
        """The workers: torch first (it saves the models every side loads), then TF."""
        sides = {"torch": Side("torch", self.args.threads, self.scratch, log)}
        if "predict" in self.args.figures:
            self.save_models(sides["torch"])
        sides["tf"] = Side("tf", self.args.threads, self.scratch, log)
        return sides

    def main(self) -> int:
        a = self.args
        a.cache_dir.mkdir(parents=True, exist_ok=True)
        log = a.cache_dir / "tf_vs_torch.log"
        idle_load = os.getloadavg()[0]
        print(f"load average before starting: {idle_load:.2f} on {os.cpu_count()} CPUs", flush=True)
        started = time.perf_counter()
        sides: dict[str, Side] = {}
        hello = {}
        try:
            self.prepare()
            sides.update(self.start_sides(log))
            for name, side in sides.items():
                reply = side.ask({"task": "hello"})
                if not reply["ok"]:
                    raise RuntimeError(f"the {name} worker failed to start: {reply['error']}")
                hello[name] = reply["result"]
                print(f"{name}: {hello[name]}", flush=True)
            for r in range(a.rounds):
                print(f"round {r + 1} of {a.rounds}", flush=True)
                if "predict" in a.figures:
                    self.round_predict(sides, r)
                if "train" in a.figures:
                    self.round_train(sides, r)
            self.report(hello, idle_load, time.perf_counter() - started)
        finally:
            for side in sides.values():
                side.close()
            if not a.keep_scratch:
                shutil.rmtree(self.scratch, ignore_errors=True)
        return 0

    def report(self, hello: dict, idle_load: float, seconds: float) -> None:
        a = self.args
        print()
        header = (
            f"{'figure':<58} {'ours':>9} {'baseline':>9} {'ratio':>7} {'target':>7}  met?"
            "  others' CPU"
        )
        print(header)
        print("-" * len(header))
        for figure in self.figures.values():
            ours = statistics.median(figure.ours) if figure.ours else math.nan
            base = statistics.median(figure.baseline) if figure.baseline else math.nan
            ratio = figure.ratio if figure.ratio is not None else math.nan
            target = "" if figure.target is None else f">={figure.target:g}x"
            met = {True: "yes", False: "NO", None: ""}[figure.met]
            others = max((run["others_cpu"] for run in figure.extra.get("runs", [])), default=0.0)
            print(
                f"{figure.title + ' (' + figure.unit + ')':<58} {ours:9.2f} {base:9.2f} "
                f"{ratio:6.2f}x {target:>7}  {met:<4}  {others:.2f}"
            )
            for error in figure.errors:
                print(f"  error: {error}")
        for name, diffs in self.agreement.items():
            print(f"same model: max |vote fraction difference|, {name}: {max(diffs):.1e}")
        print(f"ours is {self.ours_is}; medians of {a.rounds} alternating rounds.")
        busiest = max(self.loads, default=idle_load)
        note = (
            f"load average {idle_load:.2f} before starting, up to {busiest:.2f} during the run "
            f"on {os.cpu_count()} CPUs"
        )
        if idle_load > BUSY_LOAD:
            note = f"MACHINE BUSY: {note}; absolute figures are depressed, ratios less so"
        print(note)
        print(f"measured in {seconds / 60:.1f} min")
        if a.json:
            for name, diffs in self.agreement.items():
                arch = name.split()[0]
                key = f"predict_{arch}_tf_vs_torch"
                if key in self.figures:
                    self.figures[key].extra.setdefault("max_abs_vote_fraction_diff", {})[name] = (
                        diffs
                    )
            payload = {
                "benchmark": self.benchmark_name,
                "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                "sides": hello,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_before": idle_load,
                "load_max": busiest,
                "busy": idle_load > BUSY_LOAD,
                "seconds": seconds,
                "figures": {k: f.to_json() for k, f in self.figures.items()},
            }
            atomic_write_text(a.json, json.dumps(payload, indent=2) + "\n")
            print(f"wrote {a.json}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=256, help="424 px JPEGs predicted")
    parser.add_argument(
        "--architectures",
        default="efficientnet_b0,convnext_nano",
        help="comma-separated, predicted by both",
    )
    parser.add_argument(
        "--figures", default=",".join(FIGURES), help="subset of " + ",".join(FIGURES)
    )
    parser.add_argument("--threads", type=int, default=2, help="compute threads, both sides")
    parser.add_argument(
        "--num-workers", type=int, default=2, help="decoding workers (torch processes, TF threads)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="predict batch, both sides")
    parser.add_argument("--shard-size", type=int, default=128, help="galaxies per TFRecord shard")
    parser.add_argument("--train-architecture", default="convnext_nano")
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--train-warmup", type=int, default=2, help="untimed training steps")
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 64 images, 1 round, efficientnet_b0, 1 + 2 training steps, no waiting",
    )
    parser.add_argument("--keep-scratch", action="store_true", help="keep models and predictions")
    parser.add_argument(
        "--busy-cores",
        type=float,
        default=0.5,
        help="repeat a group of measurements when other processes used more cores than this",
    )
    parser.add_argument("--retries", type=int, default=1, help="repeats of a busy group")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        help="before each group, wait up to this many seconds for the machine to be quiet",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "zoobot-bench-cache",
        help="rendered survey (reused between runs) and the workers' log",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds, args.architectures = 64, 1, "efficientnet_b0"
        args.train_warmup, args.train_steps, args.retries, args.wait_quiet = 1, 2, 0, 0.0
        args.train_architecture = "efficientnet_b0"
    args.architectures = [s.strip() for s in args.architectures.split(",") if s.strip()]
    args.figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {FIGURES}")
    return args


if __name__ == "__main__":
    sys.exit(Bench(parse_args()).main())
