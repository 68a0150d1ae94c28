"""One side of `benchmarks/torch_vs_original.py`: this project's `zoobot.torch`, or the original zoobot.

The driver starts this script twice, each time with the Python of one side's environment (ours:
zoobot-shared/-data/-torch; the original: `zoobot==2.9.0` from PyPI, which cannot share an
environment with ours), and sends both the same tasks, alternating between them. Protocol: one JSON
task per line on stdin, one JSON result per line on this process's original stdout; whatever the
libraries print (Lightning banners, warnings) is sent to stderr, which the driver keeps in a log.

Tasks (every figure is timed here, around exactly the call being compared):

- `hello`: versions and thread settings.
- `predict`: a tree model's prediction over a catalog of JPEGs through each side's `predict` with
  its default data pipeline; images/s of the whole call (warmed up once per process and setting).
- `loss`: forward + backward of the Dirichlet-multinomial training objective on a fixed batch
  (median time per call in each of 5 blocks, the lowest block kept).
- `train`: training images/s of a Lightning `Trainer.fit` of each side's `ZoobotTree` with its
  default training data module, timed over the steps after the warm-up steps.
- `memory`: peak memory of our `predict`: the RSS high-water mark of this process (`ru_maxrss`,
  and sampled), and the peak PSS of this process plus its DataLoader workers (sampled); the driver
  runs it in a fresh process each time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

SYSTEMS = ("ours", "original")


# --------------------------------------------------------------------------------------- helpers


def _rss_kb(pid: int) -> int:
    """Resident set size of one process in KiB (0 if it has gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def process_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its reaped children, in seconds (0 if it has gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the command name
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, its reaped children and its live descendants, in seconds."""
    return process_cpu_seconds(pid) + sum(process_cpu_seconds(c) for c in descendants(pid))


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (steal included), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def _pss_kb(pid: int) -> int:
    """Proportional set size of one process in KiB: shared pages split among their sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


class PeakMemory:
    """Peak RSS of this process, and peak PSS of this process plus its children (its DataLoader
    workers, which share most pages with it), sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.self_kb, self.tree_pss_kb = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        pid = os.getpid()
        self.self_kb = max(self.self_kb, _rss_kb(pid))
        tree = _pss_kb(pid) + sum(_pss_kb(c) for c in descendants(pid))
        self.tree_pss_kb = max(self.tree_pss_kb, tree)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _vote_fractions(concentrations: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Expected vote fractions (galaxy, answer): each concentration over its question's total."""
    totals = np.zeros((len(concentrations), index.max() + 1))
    np.add.at(totals.T, index, concentrations.T.astype(np.float64))
    return concentrations / totals[:, index]


def _quiet_seconds(step, repeats: int, blocks: int = 5) -> float:
    """Seconds per call of `step`: the median over `repeats` calls, taken in `blocks` blocks, the
    lowest block kept (a short microbenchmark is otherwise at the mercy of other processes)."""
    step()
    step()
    medians = []
    for _ in range(blocks):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        medians.append(float(np.median(times)))
    return min(medians)


def _timer_callback(base):
    """A Lightning callback (of the side's Lightning) timing the training steps after warm-up."""

    class StepTimer(base):
        def __init__(self, warmup_steps: int, batch_size: int):
            self.warmup_steps, self.batch_size = warmup_steps, batch_size
            self.start = self.end = None
            self.steps = self.timed_steps = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            # counted here, not by batch_idx, which restarts at 0 in each epoch
            now = time.perf_counter()
            self.steps += 1
            if self.steps == self.warmup_steps:
                self.start = now
            elif self.steps > self.warmup_steps:
                self.end, self.timed_steps = now, self.timed_steps + 1

        def result(self) -> dict:
            if self.start is None or self.end is None or self.timed_steps == 0:
                raise RuntimeError("training ended before any timed step")
            seconds = self.end - self.start
            images = self.timed_steps * self.batch_size
            return {"seconds": seconds, "images": images, "images_per_second": images / seconds}

    return StepTimer


def _trainer_kwargs(steps: int, precision: str, timer) -> dict:
    """The same Trainer settings on both sides: CPU, no validation, no logging or checkpoints."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "precision": precision,
        "max_steps": steps,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [timer],
    }


def fold_batchnorm(model):
    """A copy of an eval-mode model with each BatchNorm that follows a Conv2d folded into it.

    timm's BatchNormAct2d keeps its activation (and drop) as the module that replaces it. Used by
    the `fold_batchnorm` diagnostic, to measure what inference-time folding would gain.
    """
    import copy

    import torch
    from timm.layers import BatchNormAct2d
    from torch import nn

    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        names = list(parent._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = parent._modules[first], parent._modules[second]
            if not (
                isinstance(conv, nn.Conv2d)
                and isinstance(norm, nn.BatchNorm2d)
                and norm.track_running_stats
                and norm.affine
            ):
                continue
            with torch.no_grad():
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                conv.bias = nn.Parameter(norm.bias + (bias - norm.running_mean) * scale)
            if isinstance(norm, BatchNormAct2d):
                parent._modules[second] = nn.Sequential(norm.drop, norm.act)
            else:
                parent._modules[second] = nn.Identity()
    return model


# ------------------------------------------------------------------------------------------ ours


class Ours:
    """This project's zoobot.torch: `zoobot.torch.predictions.predict`, `ZoobotTree`, its loss."""

    name = "ours"

    def __init__(self):
        import pytorch_lightning as pl
        import torch

        from zoobot.shared import get_schema

        self.torch, self.pl = torch, pl
        self.schema = get_schema("decals_dr5")

    def versions(self) -> dict:
        from importlib.metadata import version

        return {p: version(p) for p in ("zoobot-torch", "torch", "timm", "pytorch-lightning")}

    def model(self, architecture: str):
        from zoobot.torch import ZoobotTree

        self.torch.manual_seed(0)
        return ZoobotTree(self.schema, architecture=architecture)

    def predict(self, catalog: pd.DataFrame, model, save_loc: Path, task: dict):
        from zoobot.shared.tables import read_predictions_full
        from zoobot.torch.predictions import predict

        options = {
            "batch_size": task["batch_size"],
            "num_workers": task["num_workers"],
            "image_size": task.get("image_size", 224),
            "precision": task.get("precision", "32"),
            "progress": False,
        }
        if task.get("channels_last") is not None:
            options["channels_last"] = task["channels_last"]
        if task.get("fold_batchnorm"):  # diagnostic: what folding would gain (not in our predict)
            model = fold_batchnorm(model)
        start = time.perf_counter()
        predict(catalog, model, save_loc, n_samples=1, **options)
        seconds = time.perf_counter() - start
        concentrations = read_predictions_full(save_loc).concentrations[:, :, 0]
        return seconds, concentrations

    def loss_step(self, counts: np.ndarray, concentrations: np.ndarray):
        from zoobot.torch.loss import DirichletMultinomialLoss

        torch = self.torch
        loss = DirichletMultinomialLoss(self.schema)
        counts_t = torch.as_tensor(counts, dtype=torch.float32)
        alpha = torch.as_tensor(concentrations, dtype=torch.float32).requires_grad_(True)

        def step():
            alpha.grad = None
            value = loss(counts_t, alpha)
            value.backward()
            return value

        return step, alpha

    def train(self, catalog: pd.DataFrame, task: dict) -> dict:
        from zoobot.torch import GalaxyDataModule

        model = self.model(task["architecture"])
        datamodule = GalaxyDataModule(
            catalog,
            self.schema.label_cols,
            image_size=224,
            batch_size=task["batch_size"],
            num_workers=task["num_workers"],
        )
        timer = _timer_callback(self.pl.Callback)(task["warmup_steps"], task["batch_size"])
        steps = task["warmup_steps"] + task["steps"]
        trainer = self.pl.Trainer(**_trainer_kwargs(steps, task["precision"], timer))
        trainer.fit(model, datamodule)
        return timer.result()


# -------------------------------------------------------------------------------------- original


class Original:
    """The original zoobot 2.9.0: `predict_on_catalog.predict`, `ZoobotTree`, per-question loss."""

    name = "original"

    def __init__(self):
        import lightning as L
        import torch

        from zoobot.shared import schemas

        self.torch, self.L = torch, L
        self.schema = schemas.decals_dr5_ortho_schema

    def versions(self) -> dict:
        from importlib.metadata import version

        names = ("zoobot", "galaxy-datasets", "torch", "timm", "lightning")
        return {p: version(p) for p in names}

    def model(self, architecture: str):
        # The original's predict_step reads batch['image'], which only its Finetuneable* models do
        # (ZoobotTree.predict_step passes the whole dict to forward); FinetuneableZoobotTree is its
        # tree model for prediction, with the same timm encoder and dropout + Dirichlet head.
        import timm

        from zoobot.pytorch.training.finetune import FinetuneableZoobotTree

        self.torch.manual_seed(0)
        encoder = timm.create_model(architecture, num_classes=0)
        return FinetuneableZoobotTree(schema=self.schema, encoder=encoder)

    def predict(self, catalog: pd.DataFrame, model, save_loc: Path, task: dict):
        from galaxy_datasets.transforms import get_galaxy_transform, minimal_view_config

        from zoobot.pytorch.predictions.predict_on_catalog import predict

        if task.get("precision", "32") != "32" or task.get("channels_last"):
            raise ValueError("the original is measured with its default (fp32) settings only")
        start = time.perf_counter()
        table = predict(
            catalog,
            model,
            save_loc=str(save_loc),
            label_cols=self.schema.label_cols,
            # what its CatalogDataModule uses when given no transform: the default inference view
            inference_transform=get_galaxy_transform(minimal_view_config()),
            datamodule_kwargs={
                "batch_size": task["batch_size"],
                "num_workers": task["num_workers"],
            },
            trainer_kwargs={
                "accelerator": "cpu",
                "devices": 1,
                "logger": False,
                "enable_progress_bar": False,
            },
        )
        seconds = time.perf_counter() - start
        return seconds, table[self.schema.label_cols].to_numpy(np.float32)

    def loss_step(self, counts: np.ndarray, concentrations: np.ndarray):
        from zoobot.pytorch.estimators.define_model import get_dirichlet_loss_func

        torch = self.torch
        loss_func = get_dirichlet_loss_func(self.schema.question_answer_pairs)
        # as its data module delivers labels: one tensor per answer column
        targets = {
            col: torch.as_tensor(counts[:, i], dtype=torch.float32)
            for i, col in enumerate(self.schema.label_cols)
        }
        alpha = torch.as_tensor(concentrations, dtype=torch.float32).requires_grad_(True)

        def step():
            alpha.grad = None
            # ZoobotTree.calculate_loss_and_update_loss_metrics: sum over questions, batch mean
            value = torch.mean(torch.sum(loss_func(alpha, targets), dim=1))
            value.backward()
            return value

        return step, alpha

    def train(self, catalog: pd.DataFrame, task: dict) -> dict:
        from galaxy_datasets.pytorch.galaxy_datamodule import CatalogDataModule

        from zoobot.pytorch.estimators.define_model import ZoobotTree

        self.torch.manual_seed(0)
        model = ZoobotTree(
            output_dim=len(self.schema.label_cols),
            question_answer_pairs=self.schema.question_answer_pairs,
            dependencies=self.schema.dependencies,
            architecture_name=task["architecture"],
        )
        # its default training view transform (RandomAffine, flips, erasing) and prefetch
        datamodule = CatalogDataModule(
            label_cols=self.schema.label_cols,
            catalog=catalog,
            batch_size=task["batch_size"],
            num_workers=task["num_workers"],
        )
        timer = _timer_callback(self.L.Callback)(task["warmup_steps"], task["batch_size"])
        steps = task["warmup_steps"] + task["steps"]
        trainer = self.L.Trainer(**_trainer_kwargs(steps, task["precision"], timer))
        trainer.fit(model, datamodule)
        return timer.result()


# ----------------------------------------------------------------------------------------- tasks


class Worker:
    def __init__(self, system: str, threads: int, scratch: Path):
        self.side = Ours() if system == "ours" else Original()
        self.side.torch.set_num_threads(threads)
        self.threads, self.scratch = threads, scratch
        self.warm: set[tuple] = set()
        self.count = 0

    def hello(self, task: dict) -> dict:
        import torch

        return {
            "system": self.side.name,
            "python": platform.python_version(),
            "executable": sys.executable,
            "versions": self.side.versions(),
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }

    def _save_loc(self, suffix: str) -> Path:
        self.count += 1
        return self.scratch / f"{self.side.name}-{self.count:04d}{suffix}"

    def predict(self, task: dict) -> dict:
        catalog = pd.read_parquet(task["catalog"])
        model = self.side.model(task["architecture"])
        suffix = ".parquet" if self.side.name == "ours" else ".csv"
        key = (task["architecture"], task.get("precision"), task.get("channels_last"))
        if key not in self.warm:  # first call of a setting: oneDNN kernels, worker start-up
            warm = catalog.iloc[: task["batch_size"]]
            self.side.predict(warm, model, self._save_loc(suffix), task)
            self.warm.add(key)
        gc.collect()
        seconds, concentrations = self.side.predict(catalog, model, self._save_loc(suffix), task)
        result = {
            "seconds": seconds,
            "images": len(catalog),
            "images_per_second": len(catalog) / seconds,
        }
        if task.get("fractions_out"):
            index = np.asarray(task["answer_question_index"])
            np.save(task["fractions_out"], _vote_fractions(concentrations, index))
        return result

    def loss(self, task: dict) -> dict:
        counts = np.load(task["counts"])
        concentrations = np.load(task["concentrations"])
        step, alpha = self.side.loss_step(counts, concentrations)
        value = float(step())
        gradient = alpha.grad.detach().numpy().copy()
        np.save(task["gradient_out"], gradient)
        seconds = _quiet_seconds(step, task["repeats"])
        return {
            "seconds": seconds,
            "images": len(counts),
            "images_per_second": len(counts) / seconds,
            "loss": value,
        }

    def train(self, task: dict) -> dict:
        catalog = pd.read_parquet(task["catalog"])
        return self.side.train(catalog, task)

    def memory(self, task: dict) -> dict:
        if self.side.name != "ours":
            raise ValueError("the memory figure is of our predict only")
        catalog = pd.read_parquet(task["catalog"])
        model = self.side.model(task["architecture"])
        gc.collect()
        before_kb = _rss_kb(os.getpid())
        with PeakMemory() as peak:
            seconds, _ = self.side.predict(catalog, model, self._save_loc(".parquet"), task)
        max_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "rows": len(catalog),
            "seconds": seconds,
            "rss_before_mb": before_kb / 1024,
            "peak_rss_mb": max(peak.self_kb, max_rss_kb) / 1024,
            "peak_tree_pss_mb": peak.tree_pss_kb / 1024,
        }

    def run(self, task: dict) -> dict:
        kind = task["task"]
        if kind not in ("hello", "predict", "loss", "train", "memory"):
            raise ValueError(f"unknown task {kind!r}")
        try:
            return getattr(self, kind)(task)
        finally:
            gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=SYSTEMS, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scratch", type=Path, required=True)
    args = parser.parse_args()

    # Keep the real stdout for results; everything else printed goes to stderr.
    results = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    args.scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(args.scratch)  # Lightning writes lightning_logs/ etc. here
    worker = Worker(args.system, args.threads, args.scratch)
    results.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        task = json.loads(line)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                reply = {"ok": True, "result": worker.run(task)}
        except Exception as err:  # reported to the driver, which shows it in the table
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        results.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
