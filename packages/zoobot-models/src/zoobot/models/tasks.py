"""Task models: the protocol they follow, the registry that rebuilds a saved one, and what their
outputs are called in prediction tables.

A task model (a Zoobot model beyond a bare encoder) has, in every framework:

- `task: ClassVar[str]`, the task name saved in `config["zoobot"]["task"]` (not "encoder");
- `encoder` (the feature extractor) and `head` (every other layer with weights);
- `task_config(self) -> dict`: JSON-serialisable arguments that rebuild it around an encoder,
  without the keys "task" and "zoobot_version" (`zoobot.models.layout.RESERVED_KEYS`);
- `from_task_config(cls, config, encoder)`: the model built from them around `encoder` (that very
  object) with a fresh head of the same structure;
- registration with the framework's registry (`@register_task`) so saved models resolve.

Its predictions go to one of three tables (`OUTPUT_TABLES`): a decision tree's vote fractions, a
classifier's class probabilities, or a regressor's values.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from zoobot.data.augmentation import check_augmentation
from zoobot.data.labels import LabelRule
from zoobot.models.layout import RESERVED_KEYS
from zoobot.models.settings import FINETUNING, PRETRAINING
from zoobot.shared.registry import as_schema
from zoobot.shared.schema import Schema

OUTPUT_TABLES = ("tree", "classifier", "regressor")
"""The prediction tables (`zoobot.models.runner.finish_predictions`)."""
_TABLE_OF_TASK = {
    "tree": "tree",
    "finetuneable_tree": "tree",
    "classifier": "classifier",
    "regressor": "regressor",
}


def classifier_args(
    num_classes: int,
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict:
    """A classifier's own task arguments, checked: `class_weights` one per class (or None),
    `class_names` distinct, one per class in index order (kept only when given)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be a whole number of at least 2, got {num_classes!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    weights = None if class_weights is None else [float(w) for w in class_weights]
    if weights is not None and len(weights) != num_classes:
        raise ValueError(f"class_weights has {len(weights)} values for {num_classes} classes")
    args = {
        "num_classes": num_classes,
        "label_smoothing": label_smoothing,
        "class_weights": weights,
    }
    names = checked_class_names(class_names, num_classes)
    if names is not None:  # absent otherwise: configs without names stay as they were
        args["class_names"] = names
    return args


DEFAULT_CONCENTRATION = (0.01, 1000.0)
"""A tree head's default Dirichlet concentration range (low, high), log-spaced: below 1 a rare
answer can be unlikely while its question's total stays low, as split votes need; up to 1000 for
near-unanimous questions."""


def checked_concentration(concentration) -> list[float] | None:
    """A tree head's concentration range as `[low, high]` with 0 < low < high (None: the
    1 + 100 sigmoid head, in (1, 101))."""
    if concentration is None:
        return None
    values = list(concentration) if isinstance(concentration, list | tuple) else [concentration]
    ok = len(values) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
    if not ok or not 0 < values[0] < values[1]:
        raise ValueError(
            f"concentration must be (low, high) with 0 < low < high, or None; got {concentration!r}"
        )
    return [float(values[0]), float(values[1])]


def log_concentration_scale(concentration: Sequence[float]) -> tuple[float, float]:
    """(a, b) of the log-spaced head, concentrations = exp(a + b sigmoid(x)): a = log(low),
    b = log(high / low)."""
    low, high = checked_concentration(concentration)
    return math.log(low), math.log(high / low)


DEFAULT_FRACTION_WEIGHT = 10.0
"""A tree's default weight of the vote-fraction KL beside the Dirichlet-multinomial likelihood
(`zoobot.shared.loss`): per galaxy the two are then of similar size, and on the synthetic survey
the mean answers are learnt as well as by a softmax on the fractions."""


def checked_fraction_weight(fraction_weight) -> float:
    """The vote-fraction KL's weight as a finite float >= 0."""
    ok = isinstance(fraction_weight, int | float) and not isinstance(fraction_weight, bool)
    if not ok or not math.isfinite(fraction_weight) or fraction_weight < 0:
        raise ValueError(f"fraction_weight must be a finite number >= 0, got {fraction_weight!r}")
    return float(fraction_weight)


def tree_args(schema: Schema, concentration, fraction_weight) -> dict:
    """A tree's own task arguments, checked: the schema, the head's concentration range and the
    loss's vote-fraction weight."""
    return {
        "schema": schema.to_dict(),
        "concentration": checked_concentration(concentration),
        "fraction_weight": checked_fraction_weight(fraction_weight),
    }


def saved_tree_args(config: Mapping) -> dict:
    """A saved tree task config as arguments: one without `concentration` predates the option and
    had the 1 + 100 sigmoid head, so it is rebuilt with that head, not today's default; one without
    `fraction_weight` trained on the likelihood alone and goes on doing so."""
    return {"concentration": None, "fraction_weight": 0.0, **config}


def checked_class_names(class_names, num_classes: int) -> list[str] | None:
    """A classifier's class names as strings, one per class in index order (or None)."""
    if class_names is None:
        return None
    names = [str(n) for n in class_names]
    if len(names) != num_classes or len(set(names)) != num_classes:
        raise ValueError(
            f"class_names must be {num_classes} distinct names (one per class), got {names}"
        )
    return names


class TaskRegistry:
    """Task name -> model class, for reloading `config["zoobot"]["task"]` in one framework.

    `builtin` is the module whose import registers the framework's own tasks (tree, classifier,
    regressor), imported on the first lookup of a task not yet registered.
    """

    def __init__(self, builtin: str):
        self.builtin = builtin
        self._tasks: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: make `cls` the model built for its `task`."""
        task = getattr(cls, "task", None)
        if not isinstance(task, str) or task == "encoder":
            raise TypeError(f"{cls.__qualname__}.task must be a task name other than 'encoder'")
        for method in ("task_config", "from_task_config"):
            if not callable(getattr(cls, method, None)):
                raise TypeError(
                    f"{cls.__qualname__} must define {method}() to be saved and reloaded"
                )
        known = self._tasks.get(task)
        if known is not None and (known.__module__, known.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ValueError(f"task {task!r} is already registered to {known.__qualname__}")
        self._tasks[task] = cls
        return cls

    def lookup(self, task: str, source: object) -> type:
        """The class registered for `task` (of the model at `source`), or a clear error."""
        if task not in self._tasks:
            importlib.import_module(self.builtin)
        cls = self._tasks.get(task)
        if cls is None:
            raise ValueError(
                f"{source} holds a {task!r} model but no class is registered for it (registered: "
                f"{sorted(self._tasks)}); import the module that defines it"
            )
        return cls

    def zoobot_config(self, model: object, version: str) -> dict:
        """The `config["zoobot"]` of an encoder (no `task` attribute) or a registered task model."""
        task = getattr(type(model), "task", None)
        if task is None:
            return {"task": "encoder", "zoobot_version": version}
        if self._tasks.get(task) is not type(model):
            raise TypeError(
                f"{type(model).__qualname__} is not registered: decorate it with @register_task "
                f"(a subclass needs its own task name; {task!r} belongs to {self._tasks.get(task)})"
            )
        task_config = dict(model.task_config())
        clash = sorted(set(task_config) & set(RESERVED_KEYS))
        if clash:
            raise ValueError(
                f"task_config() of {type(model).__qualname__} uses reserved keys {clash}"
            )
        return {"task": task, "zoobot_version": version, **task_config}

    @staticmethod
    def task_config(zoobot: Mapping) -> dict:
        """The arguments of `from_task_config`: `config["zoobot"]` without the reserved keys."""
        return {k: v for k, v in zoobot.items() if k not in RESERVED_KEYS}


def output_table(model: object) -> str:
    """Which table a task model's predictions go in: its class's `output_table`, else by task."""
    table = getattr(type(model), "output_table", None) or _TABLE_OF_TASK.get(
        getattr(type(model), "task", None)
    )
    if table not in OUTPUT_TABLES:
        raise ValueError(
            f"predict needs a Zoobot tree, classifier or regressor, not a {type(model).__qualname__}"
            "; for an encoder's features use get_representations"
        )
    return table


def training_augmentation(model: object, augment: str | None) -> str:
    """The augmentation a task model trains with (`zoobot.data.augmentation`): `augment`, or by
    default "dihedral" for a tree, whose vote labels blur, noise and zoom would change, and "full"
    for classifiers and regressors."""
    if augment is None:
        augment = "dihedral" if output_table(model) == "tree" else "full"
    return check_augmentation(augment)


def n_outputs(model: object, table: str) -> int:
    """How many values one pass of a task model predicts per galaxy."""
    if table == "tree":
        return len(model.schema.label_cols)
    return int(model.task_config()["num_classes" if table == "classifier" else "num_outputs"])


def output_names(
    table: str,
    n: int,
    label_cols: Sequence[str] | None,
    schema: Schema | None = None,
    class_names: Sequence[str] | None = None,
) -> list[str]:
    """One name per model output: a tree's schema answers, or `label_cols` (default: a classifier's
    `class_names`, else class_i/output_i)."""
    if table not in OUTPUT_TABLES:
        raise ValueError(f"table must be one of {OUTPUT_TABLES}, got {table!r}")
    if table == "tree":
        names = list(schema.label_cols)
        if label_cols is not None and list(label_cols) != names:
            raise ValueError(
                "a tree model's outputs are its schema's label columns; omit label_cols"
            )
        return names
    if label_cols is None and table == "classifier" and class_names is not None:
        label_cols = class_names
    if label_cols is None:
        return [f"{'class' if table == 'classifier' else 'output'}_{i}" for i in range(n)]
    if len(label_cols) != n:
        raise ValueError(f"label_cols has {len(label_cols)} names but the model has {n} outputs")
    return [str(c) for c in label_cols]


def resolve_encoder(backend, name, encoder, channels: int | None):
    """The encoder given, or the one `backend.load_encoder(name, channels)` builds: exactly one."""
    if (name is None) == (encoder is None):
        raise ValueError("pass exactly one of name= (architecture, hf_hub: or folder) and encoder=")
    return encoder if encoder is not None else backend.load_encoder(name, channels)


def label_rule(model: object, label_cols: Sequence[str]) -> LabelRule:
    """What the `label_cols` a task model trains on must hold (`zoobot.data.labels`): a tree's
    schema answers (in order) as vote counts, a classifier's one column of class indices, or a
    regressor's one column per output of finite targets."""
    table = output_table(model)
    cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
    n = n_outputs(model, table)
    if table == "tree":
        expected = list(model.schema.label_cols)
        unknown = [c for c in cols if c not in expected]
        if unknown:
            raise ValueError(
                f"label columns {unknown} are not answers of the model's schema "
                f"{model.schema.name!r}"
            )
        if cols != expected:
            raise ValueError(
                f"a tree model trains on every answer of its schema {model.schema.name!r}, in "
                f"order; got {len(cols)} of its {len(expected)} label columns"
            )
        return LabelRule.votes(cols)
    if table == "classifier":
        if len(cols) != 1:
            raise ValueError(f"a classifier trains on one column of class indices, got {cols}")
        return LabelRule.classes(cols[0], n)
    if len(cols) != n:
        raise ValueError(
            f"a regressor with {n} output(s) trains on {n} label column(s), got {cols}"
        )
    return LabelRule.targets(cols)


@dataclass(frozen=True)
class HeadSpec:
    """A task head as every framework builds it: dropout, a linear layer from the encoder's
    features to `outputs` values (module 1 of the head, so its tensors are `1.weight`, `1.bias`),
    then `activation`: None, "sigmoid", or "concentration" (Dirichlet concentrations, log-spaced in
    `concentration` (low, high), or 1 + 100 sigmoid without one)."""

    outputs: int
    dropout: float
    activation: str | None = None
    concentration: Sequence[float] | None = None


class TaskModel:
    """The constructors of the built-in task models, written once for every framework.

    A framework's task class lists one of these subclasses before its own base, which supplies
    `backend`, `settings_and_rest(kwargs)` (the checked `TrainingSettings` among keyword arguments,
    and the rest its base takes), `build_head(spec, in_features)` and `__init__(encoder, head,
    settings, task_args, **rest)`; the task class's `setup_task()` then adds its loss and metrics.
    """

    def _assemble(self, encoder, head: dict, task_args: dict, settings, rest, **attributes):
        """Build the head of `HeadSpec(**head)`, the model around it, set `attributes`, then
        `setup_task()`."""
        spec = HeadSpec(dropout=settings.dropout, **head)
        head = self.build_head(spec, self.backend.encoder_dim(encoder))
        super().__init__(encoder, head, settings, task_args, **rest)
        for name, value in attributes.items():
            setattr(self, name, value)
        self.setup_task()


class TreeTask(TaskModel):
    """`ZoobotTree`: pretrain an encoder on Galaxy Zoo votes, predicting Dirichlet concentrations
    for every answer of `schema`.

    The loss is the Dirichlet-multinomial negative log-likelihood of the votes plus
    `fraction_weight` times the KL divergence of the expected from the observed vote fractions
    (`zoobot.shared.loss`), summed over questions and averaged over the batch. `architecture` is
    any name `load_encoder` takes; `encoder=` uses a model instead. `settings` are
    `zoobot.models.settings.TrainingSettings` (defaults `PRETRAINING`: the whole encoder trains at
    `learning_rate=2e-3`, `weight_decay=0.01` after a one-epoch warmup, head dropout 0.2).
    `concentration` is the head's log-spaced (low, high) range (None: 1 + 100 sigmoid, the head of
    models saved before the option); `fraction_weight` the weight of the vote-fraction KL (0: the
    likelihood alone). Predictions are concentrations, `(batch, answer, n_samples)`.
    """

    task = "tree"
    default_settings = PRETRAINING

    def __init__(
        self,
        schema: Schema | str | Mapping,
        architecture: str | os.PathLike = "convnext_nano",
        encoder=None,
        channels: int = 3,
        concentration: Sequence[float] | None = DEFAULT_CONCENTRATION,
        fraction_weight: float = DEFAULT_FRACTION_WEIGHT,
        **settings,
    ):
        schema = as_schema(schema)
        settings, rest = self.settings_and_rest(settings)
        task_args = tree_args(schema, concentration, fraction_weight)
        if encoder is None:
            encoder = self.backend.load_encoder(architecture, channels)
        head = {
            "outputs": len(schema.label_cols),
            "activation": "concentration",
            "concentration": task_args["concentration"],
        }
        self._assemble(
            encoder,
            head,
            task_args,
            settings,
            rest,
            schema=schema,
            fraction_weight=task_args["fraction_weight"],
        )

    @classmethod
    def from_task_config(cls, config: dict, encoder):
        return super().from_task_config(saved_tree_args(config), encoder)


class FinetuneableTreeTask:
    """`FinetuneableZoobotTree`: finetune on votes for a (new) decision tree `schema`, as the tree
    (listed after this class) does for pretraining; only the encoder source (`name=` for
    `load_encoder`, or `encoder=`) and the finetuning defaults differ."""

    task = "finetuneable_tree"
    default_settings = FINETUNING

    def __init__(
        self,
        schema: Schema | str | Mapping,
        name: str | os.PathLike | None = None,
        encoder=None,
        channels: int = 3,
        **settings,
    ):
        encoder = resolve_encoder(self.backend, name, encoder, channels)
        super().__init__(schema, encoder=encoder, **settings)


class ClassifierTask(TaskModel):
    """`FinetuneableZoobotClassifier`: classify galaxies into `num_classes` classes; labels are
    class indices 0..num_classes-1.

    Cross-entropy with optional `label_smoothing` and per-class `class_weights`; accuracy is logged.
    Predictions are softmax probabilities, `(batch, num_classes, n_samples)`, ready for calibration.
    `class_names` (one per class, in index order) are kept in the task config, so a saved model
    says what its outputs are (`model.class_names`; None if not given).
    """

    task = "classifier"
    default_settings = FINETUNING

    def __init__(
        self,
        num_classes: int,
        name: str | os.PathLike | None = None,
        encoder=None,
        channels: int = 3,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
        **settings,
    ):
        settings, rest = self.settings_and_rest(settings)
        task_args = classifier_args(num_classes, label_smoothing, class_weights, class_names)
        encoder = resolve_encoder(self.backend, name, encoder, channels)
        self._assemble(
            encoder,
            {"outputs": num_classes},
            task_args,
            settings,
            rest,
            num_classes=num_classes,
            class_names=task_args.get("class_names"),
            label_smoothing=label_smoothing,
        )


class RegressorTask(TaskModel):
    """`FinetuneableZoobotRegressor`: predict `num_outputs` continuous values per galaxy with a
    mean squared (`loss="mse"`) or absolute (`"mae"`) error loss.

    `unit_interval=True` squashes outputs into (0, 1) with a sigmoid, for fractions. MAE and MSE are
    logged. Predictions are `(batch, num_outputs, n_samples)`.
    """

    task = "regressor"
    default_settings = FINETUNING

    def __init__(
        self,
        name: str | os.PathLike | None = None,
        encoder=None,
        channels: int = 3,
        loss: str = "mse",
        unit_interval: bool = False,
        num_outputs: int = 1,
        **settings,
    ):
        if loss not in ("mse", "mae"):
            raise ValueError(f"loss must be 'mse' or 'mae', got {loss!r}")
        settings, rest = self.settings_and_rest(settings)
        encoder = resolve_encoder(self.backend, name, encoder, channels)
        task_args = {"loss": loss, "unit_interval": unit_interval, "num_outputs": num_outputs}
        head = {"outputs": num_outputs, "activation": "sigmoid" if unit_interval else None}
        self._assemble(
            encoder, head, task_args, settings, rest, loss_name=loss, num_outputs=num_outputs
        )
