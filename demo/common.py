"""What every demo step shares: the settings of a run, the output folder layout, results files.

A step runs in its own process (`python demo/run_demo.py --step NAME`), imports only the framework
it needs, and records what it measured in `steps/<name>.json` under the output folder. A step whose
results file exists and was made with the same settings is skipped when the demo runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Folder names under the output folder (the report lists what is in them).
SURVEY = "data/survey"
SHARDS = "data/shards"
HF_DATASET = "data/hf_dataset"
HUBBLE = "data/hubble_deep_field"
LABELS = "data/finetune_labels"  # draw_<seed>.csv: one draw of labels per seed
ENCODER = "models/zoobot-encoder-demo"  # the published encoder: timm Hub layout + model card
TORCH_TREE = "torch/pretrain"  # Lightning run of the pretraining; best/ is the whole tree model
TF_TREE = "tf/pretrain"  # the same pretraining run by zoobot.tf (Keras), with its test predictions
STEPS = "steps"


@dataclass(frozen=True)
class Settings:
    """Sizes and hyperparameters of one demo run (`full` and `quick` presets below)."""

    mode: str = "full"
    seed: int = 0
    n_galaxies: int = 3000
    image_size: int = 64
    schema: str = "decals_dr5"
    # A small BatchNorm ResNet learns from 2,100 galaxies; test_convnext's LayerNorm stem hides
    # the light profile of un-standardised images and captures a fraction of the gain.
    architecture: str = "test_resnet"
    # Split of the survey: pretraining uses train/validation; test galaxies are never trained on.
    split_fractions: tuple = (("train", 0.7), ("validation", 0.1), ("test", 0.2))
    # Pretraining: `train`'s defaults (log-spaced Dirichlet head, dihedral augmentation only).
    pretrain_epochs: int = 40
    pretrain_batch_size: int = 64
    # Finetuning: a binary classifier for a rare feature from a few hundred labels, pretrained vs
    # scratch with the same budget: per seed (labels drawn, initialisation), each start trains at
    # every learning rate of the grid and keeps the one with the lowest class-balanced validation
    # loss. zoobot.tf trains the same classifier for the first seed at `finetune_learning_rate`.
    feature: str = "ring"
    n_labels_train: int = 300
    n_labels_validation: int = 100
    finetune_epochs: int = 8
    finetune_batch_size: int = 32
    finetune_learning_rates: tuple = (1e-3, 3e-3)
    finetune_learning_rate: float = 1e-3
    finetune_seeds: tuple = (0, 1, 2, 3, 4)
    # Predictions with uncertainty: MC dropout passes, credible interval level.
    mc_samples: int = 8
    interval_level: float = 0.9
    hubble_sources: int = 48
    feature_check_galaxies: int = 64
    gallery_galaxies: int = 16

    def digest(self) -> str:
        """A short hash of the settings: results made with other settings are redone."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        values = json.loads(text)
        for key in ("split_fractions", "finetune_seeds", "finetune_learning_rates"):
            values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in values[key])
        return cls(**values)


QUICK = dict(
    mode="quick",
    n_galaxies=400,
    pretrain_epochs=2,
    n_labels_train=120,
    n_labels_validation=40,
    finetune_epochs=2,
    finetune_seeds=(0, 1),
    mc_samples=3,
    hubble_sources=8,
    feature_check_galaxies=16,
    gallery_galaxies=8,
)


# The larger experiment of `nox -s science`: more galaxies and more pixels (the survey's field of
# view is fixed, so 96 px resolve bars and bulges better than 64), trained by both frameworks.
SCIENCE = dict(mode="science", n_galaxies=8000, image_size=96, pretrain_epochs=25)
PRESETS = {"full": {}, "quick": QUICK, "science": SCIENCE}


def settings_for(preset: str, **overrides) -> Settings:
    """The `full`, `quick` or `science` preset, with command-line overrides (None values ignored)."""
    values = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


KERAS_STEPS = ("compare", "tf_finetune", "tf_predict", "tf_pretrain")
"""Steps that run zoobot.tf, on the Keras backend of the run (`--backend`)."""


class Run:
    """The output folder of a demo run, its settings and the backend Keras runs on."""

    def __init__(
        self, out: str | os.PathLike, settings: Settings, keras_backend: str = "tensorflow"
    ):
        self.out = Path(out).resolve()
        self.settings = settings
        self.keras_backend = keras_backend

    def path(self, relative: str) -> Path:
        return self.out / relative

    def step_file(self, step: str) -> Path:
        return self.out / STEPS / f"{step}.json"

    def step_done(self, step: str) -> bool:
        """Whether `step` finished before with these settings (its results file says so)."""
        path = self.step_file(step)
        if not path.exists():
            return False
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return False
        if step in KERAS_STEPS and record.get("keras_backend", "tensorflow") != self.keras_backend:
            return False
        return record.get("settings") == self.settings.digest()

    def results(self, step: str) -> dict:
        """The results a finished step recorded ({} if it has not run)."""
        path = self.step_file(step)
        if not path.exists():
            return {}
        return json.loads(path.read_text(encoding="utf-8")).get("results", {})

    def record(self, step: str, results: dict, seconds: float) -> None:
        """Write a step's results file atomically (its presence marks the step done)."""
        path = self.step_file(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": step, "settings": self.settings.digest(), "seconds": seconds}
        if step in KERAS_STEPS:
            record["keras_backend"] = self.keras_backend
        record["results"] = results
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(jsonable(record), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def jsonable(value):
    """Numbers, arrays and paths made plain JSON (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def say(message: str) -> None:
    """Print a progress line at once (steps run in subprocesses whose output is piped)."""
    print(message, flush=True)


class Timer:
    """Seconds since creation."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def labels_file(seed: int) -> str:
    """The finetuning labels drawn for `seed` (train, validation and every test galaxy)."""
    return f"{LABELS}/draw_{seed}.csv"


def balanced_class_weights(labels) -> list[float]:
    """Weights n / (2 n_c) of classes 0 and 1: a rare class counts as much as the common one."""
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return [float(len(labels) / (2 * c)) if c else 1.0 for c in counts]
