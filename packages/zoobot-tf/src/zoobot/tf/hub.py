"""Save, publish and reload Zoobot models in the timm Hub layout, without pickles or torch.

The same layout as `zoobot.torch.hub`, so either framework reads what the other wrote: a folder (or
Hub repo) holds `model.safetensors` + `config.json` as timm writes them for the encoder (weights in
timm's names and layouts, `zoobot.tf.encoders.write_timm_folder`), and a finetuned or tree model
adds `head.safetensors` (PyTorch names and layouts: the dense layer of the head is `1.weight`, shape
(out, in), and `1.bias`), its task config under `config["zoobot"]`, and a `README.md` model card.

Protocol for models beyond a bare encoder (implemented by `zoobot.tf.module.ZoobotModel`):

- `task: ClassVar[str]` names the task ("tree", "classifier", "regressor"; not "encoder").
- `encoder` (keras.Model): the feature extractor from `zoobot.tf.encoders.load_encoder`.
- `head` (keras.Sequential): every other layer with weights; layer `i` is module `i` of the torch
  head, and only `Dense` layers hold weights (saved as `{i}.weight` transposed and `{i}.bias`).
- `task_config(self) -> dict`: JSON-serialisable arguments that rebuild the model around an encoder,
  without the keys "task" and "zoobot_version", which `save_pretrained` adds.
- `from_task_config(cls, config: dict, encoder)` (classmethod): the model built from
  `task_config()`'s output, with `model.encoder is encoder` and a freshly initialised head of the
  same structure; `load_from_name` then loads the head weights strictly.
- The class is decorated with `@register_task` and imported by `zoobot.tf`, so names resolve.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import safetensors.numpy

from zoobot.data.model_hub import (
    CARD_NAME,
    HEAD_NAME,
    ModelSource,
    PushResult,
    TaskRegistry,
    check_weights_fit,
    model_card,
    push_folder,
    write_model_folder,
)
from zoobot.tf.encoders import (
    encoder_dim,
    encoder_from_config,
    is_architecture,
    read_weights,
    write_timm_files,
)

_TASKS = TaskRegistry(builtin="zoobot.tf.finetune")
register_task = _TASKS.register


def _zoobot_version() -> str:
    return metadata.version("zoobot-tf")


# -- head weights in PyTorch names and layouts --------------------------------------------------


def head_state(head: keras.Model) -> dict[str, np.ndarray]:
    """The head's weights as `torch.nn.Sequential.state_dict()` would name and lay them out."""
    state = {}
    for i, layer in enumerate(head.layers):
        if isinstance(layer, keras.layers.Dense):
            state[f"{i}.weight"] = np.ascontiguousarray(layer.kernel.numpy().T, dtype=np.float32)
            if layer.use_bias:
                state[f"{i}.bias"] = np.ascontiguousarray(layer.bias.numpy(), dtype=np.float32)
        elif layer.weights:
            raise TypeError(
                f"head layer {i} ({type(layer).__name__}) has weights but no PyTorch layout; "
                "heads hold Dense layers only"
            )
    return state


def load_head_state(head: keras.Model, state: Mapping[str, np.ndarray], what: str) -> None:
    """Load PyTorch-named head weights with every key and shape matching, else name the misfits."""
    expected = {k: tuple(v.shape) for k, v in head_state(head).items()}
    check_weights_fit(expected, {k: tuple(np.shape(v)) for k, v in state.items()}, what)
    for i, layer in enumerate(head.layers):
        if isinstance(layer, keras.layers.Dense):
            layer.kernel.assign(np.asarray(state[f"{i}.weight"], np.float32).T)
            if layer.use_bias:
                layer.bias.assign(np.asarray(state[f"{i}.bias"], np.float32))


# -- writing ---------------------------------------------------------------------------------


def _split(model: keras.Model) -> tuple[keras.Model, keras.Model | None, dict]:
    """(encoder, head or None, the `zoobot` config) of an encoder or a protocol model."""
    zoobot = _TASKS.zoobot_config(model, _zoobot_version())
    if zoobot["task"] == "encoder":
        return model, None, zoobot
    return model.encoder, model.head, zoobot


def _write_layout(
    model: keras.Model, folder: Path, card: Mapping | None, title: str, repo_id: str | None = None
) -> str:
    """Write every file of the layout into the (existing, empty) `folder`; return the task name."""
    encoder, head, zoobot = _split(model)
    config = write_timm_files(encoder, folder, extra_config={"zoobot": zoobot})
    if head is not None:
        safetensors.numpy.save_file(head_state(head), folder / HEAD_NAME, metadata={"format": "pt"})
    card_text = model_card(config, encoder_dim(encoder), card, title, "zoobot-tf", repo_id)
    (folder / CARD_NAME).write_text(card_text, encoding="utf-8")
    return zoobot["task"]


def save_pretrained(
    model: keras.Model, folder: str | os.PathLike, *, card: Mapping | None = None
) -> Path:
    """Write `model` (an encoder or a registered task model) to `folder` in the timm Hub layout.

    The folder is written beside its destination and renamed into place, so readers never see half
    a model; an existing model folder is replaced. `card` may give `description`, `training_data`,
    `metrics` (name -> value) and `license` for the model card.
    """
    return write_model_folder(
        folder, lambda staging: _write_layout(model, staging, card, Path(folder).name)
    )


def push_to_hub(
    model: keras.Model,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    *,
    card: Mapping | None = None,
) -> PushResult:
    """Upload `model` in the `save_pretrained` layout to `repo_id` as one commit.

    `revision` is a branch (created if needed). `dry_run` writes the files locally, lists them and
    touches no network. Offline or unauthenticated pushes fail before uploading, saying how to fix it.
    """
    write = partial(_write_layout, model, card=card, title=repo_id, repo_id=repo_id)
    return push_folder(write, repo_id, private, revision, token, dry_run)


def load_from_name(name: str | os.PathLike) -> keras.Model:
    """Reload what `save_pretrained` (of either framework) wrote, from a folder or `hf_hub:`.

    Returns the encoder for encoder-only configs (any timm Hub-layout encoder), else the registered
    class for `config["zoobot"]["task"]` rebuilt with `from_task_config` and its head weights loaded
    strictly. Nothing is unpickled.
    """
    source = ModelSource.parse(name, is_architecture=is_architecture)
    if source is None:
        raise ValueError(
            f"{os.fspath(name)!r} is neither hf_hub:owner/repo nor a folder; "
            "for an untrained architecture use load_encoder"
        )
    config = source.read_config()
    zoobot = config.get("zoobot") or {}
    task = zoobot.get("task", "encoder")
    cls = None if task == "encoder" else _TASKS.lookup(task, source)
    encoder = encoder_from_config(config, read_weights(source))
    if cls is None:
        return encoder
    task_config = _TASKS.task_config(zoobot)
    model = cls.from_task_config(task_config, encoder)
    if model.encoder is not encoder:
        raise TypeError(f"{cls.__qualname__}.from_task_config must use the encoder it is given")
    head_path = source.fetch(HEAD_NAME)
    if head_path is None:
        raise FileNotFoundError(f"{source} is a {task!r} model but has no {HEAD_NAME}")
    load_head_state(model.head, safetensors.numpy.load_file(head_path), f"{task} head of {source}")
    return model


from_pretrained = load_from_name
