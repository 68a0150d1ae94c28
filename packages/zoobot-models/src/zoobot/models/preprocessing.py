"""What a model was trained to see, saved with it so `predict` shows it the same images.

`Preprocessing` is the input side of a model: the size images are resized to, the channels (1: the
mean of R, G and B), the per-channel normalisation `(x - mean) / std` of [0, 1] pixels, and the
view (the whole cutout, resized). Training records it on the model (`attach`), `save_pretrained`
writes it to `config["zoobot"]["preprocessing"]`, `from_pretrained` reads it back, and `predict` /
`get_representations` take their image size and normalisation from it (`for_run`), in every
framework.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zoobot.models.layout import building_encoder

logger = logging.getLogger(__name__)

ATTRIBUTE = "zoobot_preprocessing"
"""The model (or encoder) attribute holding its `Preprocessing`."""
CONFIG_KEY = "preprocessing"
"""Its key in `config["zoobot"]`."""
VIEWS = ("cutout",)
"""Views this version can show a model: "cutout", the whole cutout resized to `image_size`."""
DEFAULT_IMAGE_SIZE = 224


def _floats(values: Any, name: str, positive: bool = False) -> tuple[float, ...]:
    items = values if isinstance(values, list | tuple) else [values]
    ok = bool(items) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in items
    )
    if not ok or (positive and min(items) <= 0):
        need = "positive finite numbers" if positive else "finite numbers"
        raise ValueError(f"{name} must be one or more {need}, got {values!r}")
    return tuple(float(v) for v in items)


@dataclass(frozen=True)
class Preprocessing:
    """Image size, channels, normalisation and view a model was trained with (checked)."""

    image_size: int = DEFAULT_IMAGE_SIZE
    channels: int = 3
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    view: str = "cutout"

    def __post_init__(self):
        for name in ("image_size", "channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        mean, std = _floats(self.mean, "mean"), _floats(self.std, "std", positive=True)
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{name} needs 1 or {self.channels} values (one per channel), got {values}"
                )
        if self.view not in VIEWS:
            raise ValueError(
                f"view {self.view!r} is not one this version of zoobot can show a model "
                f"(known: {list(VIEWS)}); upgrade zoobot to predict with this model"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def to_config(self) -> dict:
        """The JSON object saved under `config["zoobot"]["preprocessing"]`."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "view": self.view,
        }

    @classmethod
    def from_config(cls, config: object, where: str) -> Preprocessing:
        """The saved preprocessing of the model at `where`; a bad entry is an error naming it."""
        if not isinstance(config, Mapping):
            raise ValueError(f"{where}: zoobot.preprocessing must be an object, not {config!r}")
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: zoobot.preprocessing has unknown keys {unknown}")
        try:
            return cls(**config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: zoobot.preprocessing: {err}") from err


def attach(model: Any, preprocessing: Preprocessing | None) -> Any:
    """Record on `model` and its encoder what they see (None: nothing recorded); returns `model`.

    Set past the frameworks' attribute tracking: the record is plain data, not model state."""
    if preprocessing is not None:
        for part in (model, getattr(model, "encoder", None)):
            if part is not None:
                object.__setattr__(part, ATTRIBUTE, preprocessing)
    return model


def of(model: Any) -> Preprocessing | None:
    """What `model` was trained to see: its own record, else its encoder's (None: not known)."""
    for part in (model, getattr(model, "encoder", None)):
        found = getattr(part, ATTRIBUTE, None)
        if isinstance(found, Preprocessing):
            return found
    return None


def normalisation(model: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs `model` was trained on ((0,), (1,) when not known)."""
    seen = of(model) or Preprocessing()
    return seen.mean, seen.std


def read(zoobot: Mapping, where: str) -> Preprocessing | None:
    """The preprocessing saved in a model's `config["zoobot"]` (None: none saved)."""
    saved = zoobot.get(CONFIG_KEY)
    return None if saved is None else Preprocessing.from_config(saved, where)


def encoder_from_config(
    config: Mapping, where: str, channels: int | None, build: Callable[[], Any]
) -> Any:
    """`build()`, the encoder of the model config read from `where`, holding the preprocessing
    saved with it (at `channels` inputs when given: then without a per-channel normalisation);
    arguments of the config the architecture does not take are named with `where`."""
    seen = read(config.get("zoobot") or {}, where)
    with building_encoder(config, where):
        encoder = build()
    if seen is not None and channels is not None and channels != seen.channels:
        seen = Preprocessing(seen.image_size, channels, view=seen.view)
    return attach(encoder, seen)


def for_run(model: Any, image_size: int | None, channels: int) -> Preprocessing:
    """What `predict`/`get_representations` show `model` (taking `channels` images): what it was
    trained to see, at `image_size` if given (a size other than the training size is logged as a
    warning), else the size it was trained at (224 when not known), with no normalisation."""
    saved = of(model)
    if saved is None:
        return Preprocessing(image_size or DEFAULT_IMAGE_SIZE, channels)
    if saved.channels != channels:
        raise ValueError(
            f"the model takes {channels}-channel images but records training on {saved.channels}"
        )
    if image_size is None:
        return saved
    if image_size != saved.image_size:
        logger.warning(
            "image_size=%d differs from the %d px the model was trained at: galaxies will look "
            "%.2fx their training size to it",
            image_size,
            saved.image_size,
            image_size / saved.image_size,
        )
    return Preprocessing(image_size, channels, saved.mean, saved.std, saved.view)
