"""How a Zoobot model trains: which encoder blocks, learning rates, schedule and head dropout.

Every model class of every framework takes these as keyword arguments (`ZoobotTree(schema,
learning_rate=3e-4)`, `FinetuneableZoobotClassifier(2, name=..., n_blocks=1)`), checked here once;
they are saved in the model's task config. Pretraining on votes and finetuning start from different
defaults (`PRETRAINING`, `FINETUNING`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingSettings:
    """Training settings shared by every Zoobot model.

    - `n_blocks`: encoder blocks trained, counted from the head (-1: all; 0: a linear probe on
      frozen features). Frozen blocks get no gradients and keep their BatchNorm statistics.
    - `lr_decay`: block `i` (0 nearest the head) learns at `learning_rate * lr_decay**i`.
    - `learning_rate`: peak learning rate of the head (AdamW).
    - `weight_decay`: AdamW's decoupled weight decay.
    - `warmup_epochs`, `warmup_steps`: linear warmup length (both add up).
    - `cosine`: after warmup, a cosine to 0 over the rest of training (False: flat).
    - `dropout`: dropout before the head's linear layer (also the Monte Carlo dropout of predict).
    """

    n_blocks: int = 0
    lr_decay: float = 0.75
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    cosine: bool = True
    dropout: float = 0.5

    def __post_init__(self):
        problems = []
        if not isinstance(self.n_blocks, int) or isinstance(self.n_blocks, bool):
            problems.append(f"n_blocks must be a whole number, got {self.n_blocks!r}")
        elif self.n_blocks < -1:
            problems.append(f"n_blocks must be -1 (all blocks) or at least 0, got {self.n_blocks}")
        for name, low, high, low_open in (
            ("lr_decay", 0.0, 1.0, True),
            ("learning_rate", 0.0, math.inf, False),
            ("weight_decay", 0.0, math.inf, False),
            ("warmup_epochs", 0.0, math.inf, False),
            ("dropout", 0.0, 1.0, False),
        ):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and (value > low if low_open else value >= low)
            ok = ok and (value < high if name == "dropout" else value <= high)
            if not ok:
                bracket = "(" if low_open else "["
                closing = ")" if name == "dropout" or high == math.inf else "]"
                problems.append(f"{name} must be in {bracket}{low}, {high}{closing}, got {value!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            problems.append(f"warmup_steps must be a whole number >= 0, got {self.warmup_steps!r}")
        if not isinstance(self.cosine, bool):
            problems.append(f"cosine must be True or False, got {self.cosine!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def replace(self, **changes) -> TrainingSettings:
        """These settings with `changes`; an unknown name is an error listing the known ones."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(
                f"unknown training setting(s) {unknown}; the settings are {', '.join(FIELDS)}"
            )
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The settings as saved in a task config."""
        return dataclasses.asdict(self)

    @classmethod
    def split(cls, config: Mapping) -> tuple[dict, dict]:
        """(settings, the rest) of a mapping of keyword arguments."""
        settings = {k: v for k, v in config.items() if k in FIELDS}
        return settings, {k: v for k, v in config.items() if k not in FIELDS}


FIELDS = tuple(f.name for f in dataclasses.fields(TrainingSettings))
PRETRAINING = TrainingSettings(
    n_blocks=-1, lr_decay=1.0, learning_rate=2e-3, weight_decay=0.01, warmup_epochs=1.0, dropout=0.2
)
"""Defaults of `ZoobotTree`: the whole encoder learns from votes at one rate, after a warmup (the
rate and decay that learnt most on the science survey: README, "Does the model learn?")."""
FINETUNING = TrainingSettings()
"""Defaults of the finetuneable models: a linear probe with a careful learning rate."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: float, cosine: bool = True) -> float:
    """Learning-rate factor at `step`: linear warmup to 1, then a cosine to 0 at `total_steps`
    (or constant with `cosine=False`)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
