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
from collections.abc import Mapping, Sequence

from zoobot.data.labels import LabelRule
from zoobot.models.layout import RESERVED_KEYS
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
