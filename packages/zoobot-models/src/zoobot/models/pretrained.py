"""Save, reload and publish Zoobot models in the Hub layout, for any framework, without pickles.

`save_pretrained(backend, model, folder)` writes an encoder or a task model (`zoobot.models.tasks`)
as `zoobot.models.layout` describes; `from_pretrained(backend, name)` reads what either framework
wrote (or any timm Hub-layout encoder) from a folder or `hf_hub:owner/repo[@revision]`;
`push_to_hub` uploads the same files as one commit. `PretrainedMixin` gives every Zoobot model
class these as methods, as Hugging Face and timm users expect (`model.save_pretrained(folder)`,
`FinetuneableZoobotClassifier.from_pretrained(name, num_classes=2)`, `model.push_to_hub(repo)`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import safetensors.numpy

from zoobot.models import preprocessing
from zoobot.models.hub import ModelSource, PushResult, push_folder
from zoobot.models.layout import (
    CARD_NAME,
    CONFIG_NAME,
    HEAD_NAME,
    SAFETENSORS_NAME,
    WeightsFileError,
    check_finite,
    model_card,
    nonfinite_message,
    nonfinite_tensors,
    read_safetensors,
    write_model_folder,
)
from zoobot.models.tasks import TaskRegistry

if TYPE_CHECKING:
    from zoobot.models.backend import Backend


def _write_layout(
    backend: Backend,
    model: Any,
    folder: Path,
    card: Mapping | None,
    title: str,
    repo_id: str | None = None,
) -> str:
    """Write every file of the layout into the (new, empty) `folder`; return the task name.

    Weights holding NaN or infinity are refused (`WeightsFileError` naming the tensors).
    """
    zoobot = backend.tasks.zoobot_config(model, backend.version())
    seen = preprocessing.of(model)
    if seen is not None:
        zoobot[preprocessing.CONFIG_KEY] = seen.to_config()
    is_encoder = zoobot["task"] == "encoder"
    encoder = model if is_encoder else model.encoder
    config = backend.write_encoder(encoder, folder)
    bad = nonfinite_tensors(folder / SAFETENSORS_NAME)
    if bad:
        raise WeightsFileError(nonfinite_message(f"{title} (encoder)", bad))
    config["zoobot"] = zoobot
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if not is_encoder:
        state = backend.head_state(model.head)
        check_finite(state, f"{title} (head)")
        safetensors.numpy.save_file(state, folder / HEAD_NAME, metadata={"format": "pt"})
    text = model_card(config, backend.encoder_dim(encoder), card, title, backend.package, repo_id)
    (folder / CARD_NAME).write_text(text, encoding="utf-8")
    return zoobot["task"]


def save_pretrained(
    backend: Backend, model: Any, folder: str | os.PathLike, *, card: Mapping | None = None
) -> Path:
    """Write `model` (an encoder or a registered task model) to `folder` in the Hub layout.

    The folder is written beside its destination and renamed into place, so readers never see half
    a model; an existing model folder zoobot saved is replaced, any other non-empty folder refused
    (`zoobot.models.layout.write_model_folder`), and weights holding NaN or infinity are never
    written. `card` may give `description`, `training_data`, `metrics` (name -> value) and
    `license`.
    """
    title = Path(folder).name
    return write_model_folder(
        folder, lambda staging: _write_layout(backend, model, staging, card, title)
    )


def push_to_hub(
    backend: Backend,
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    card: Mapping | None = None,
) -> PushResult:
    """Upload `model` in the `save_pretrained` layout to `repo_id` as one commit.

    `revision` is a branch (created if needed). `dry_run` writes the files locally, lists them and
    touches no network. Offline or unauthenticated pushes fail before uploading, saying how to fix it.
    """
    write = partial(_write_layout, backend, model, card=card, title=repo_id, repo_id=repo_id)
    return push_folder(write, repo_id, private, revision, token, dry_run)


def source_of(backend: Backend, name: str | os.PathLike) -> ModelSource:
    """The folder or Hub repo `name` points to; an architecture name is an error here."""
    source = ModelSource.parse(name, is_architecture=backend.is_architecture)
    if source is None:
        raise ValueError(
            f"{os.fspath(name)!r} is neither hf_hub:owner/repo nor a folder; "
            "for an untrained architecture use load_encoder"
        )
    return source


def from_pretrained(backend: Backend, name: str | os.PathLike) -> Any:
    """What `save_pretrained` (of any framework) wrote, or any timm Hub-layout encoder.

    Returns the encoder for encoder-only configs, else the registered class of
    `config["zoobot"]["task"]` rebuilt with `from_task_config`, its head loaded strictly.
    Nothing is unpickled.
    """
    source = source_of(backend, name)
    config = source.read_config()
    zoobot = config.get("zoobot") or {}
    task = zoobot.get("task", "encoder")
    cls = None if task == "encoder" else backend.tasks.lookup(task, source)
    encoder = _encoder(backend, config, source, None)
    if cls is None:
        return encoder
    return _rebuild(backend, cls, TaskRegistry.task_config(zoobot), encoder, source, task)


def _encoder(backend: Backend, config: dict, source: ModelSource, channels: int | None):
    """The encoder of a model folder or repo, holding the preprocessing it was saved with;
    arguments of its config the architecture does not take are named with the config file."""
    return preprocessing.encoder_from_config(
        config,
        f"{source}/{CONFIG_NAME}",
        channels,
        lambda: backend.encoder_from_config(config, source.weights_path(), channels),
    )


def _rebuild(backend: Backend, cls: type, task_config: dict, encoder, source, task: str):
    """`cls` rebuilt around `encoder` from its task config, with the saved head weights."""
    model = cls.from_task_config(task_config, encoder)
    if model.encoder is not encoder:
        raise TypeError(f"{cls.__qualname__}.from_task_config must use the encoder it is given")
    head_path = source.fetch(HEAD_NAME)
    if head_path is None:
        raise FileNotFoundError(f"{source} is a {task!r} model but has no {HEAD_NAME}")
    state = read_safetensors(head_path, safetensors.numpy.load_file)
    backend.load_head_state(model.head, state, f"{task} head of {source}")
    return model


class PretrainedMixin:
    """`save_pretrained`, `push_to_hub` and `from_pretrained` as methods of a Zoobot model class.

    The class sets `backend` (its framework's `Backend`).
    """

    backend: ClassVar[Backend]

    def save_pretrained(self, folder: str | os.PathLike, *, card: Mapping | None = None) -> Path:
        """Write this model to `folder` in the Hub layout (`zoobot.models.pretrained`)."""
        return save_pretrained(self.backend, self, folder, card=card)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        token: str | None = None,
        dry_run: bool = False,
        card: Mapping | None = None,
    ) -> PushResult:
        """Upload this model to `repo_id` as one commit (`dry_run`: list the files only)."""
        return push_to_hub(
            self.backend,
            self,
            repo_id,
            private=private,
            revision=revision,
            token=token,
            dry_run=dry_run,
            card=card,
        )

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike, **kwargs):
        """A model of this class from a folder or `hf_hub:` repo.

        A saved model of this class (or a subclass) is rebuilt as saved, and `kwargs` are refused;
        from an encoder-only repo (such as the published Zoobot encoders) a new model is built
        around the pretrained encoder with `cls(encoder=..., **kwargs)`, e.g.
        `FinetuneableZoobotClassifier.from_pretrained("hf_hub:mwalmsley/zoobot-encoder-convnext_nano",
        num_classes=2)`.
        """
        backend = cls.backend
        source = source_of(backend, name)
        config = source.read_config()
        zoobot = config.get("zoobot") or {}
        task = zoobot.get("task", "encoder")
        saved_cls = None if task == "encoder" else backend.tasks.lookup(task, source)
        if saved_cls is not None and not issubclass(saved_cls, cls):
            raise TypeError(
                f"{source} holds a {saved_cls.__qualname__} ({task!r}), not a {cls.__qualname__}; "
                f"load it with {saved_cls.__qualname__}.from_pretrained or from_pretrained"
            )
        if saved_cls is not None and kwargs:
            raise TypeError(
                f"{source} is a saved {task!r} model, rebuilt as saved; it takes no arguments "
                f"(got {sorted(kwargs)})"
            )
        encoder = _encoder(backend, config, source, kwargs.pop("channels", None))
        if saved_cls is None:
            return cls(encoder=encoder, **kwargs)
        return _rebuild(backend, saved_cls, TaskRegistry.task_config(zoobot), encoder, source, task)


def bound(backend_module: str) -> tuple:
    """(`save_pretrained`, `from_pretrained`, `push_to_hub`) of this module taking their backend
    from `backend_module.BACKEND`: a framework package's own functions."""
    from zoobot.models.backend import bind

    return tuple(bind(f, backend_module) for f in (save_pretrained, from_pretrained, push_to_hub))
