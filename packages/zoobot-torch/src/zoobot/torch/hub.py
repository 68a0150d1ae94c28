"""Save, publish and reload Zoobot models in the timm Hub layout, without pickles.

A folder (or Hub repo) holds `model.safetensors` + `config.json` exactly as timm writes them for the
encoder, so `timm.create_model('hf_hub:owner/repo', pretrained=True, num_classes=0)` and
`load_encoder` read it; a finetuned or tree model adds `head.safetensors`, its task config under
`config["zoobot"]`, and a `README.md` model card.

Protocol for models beyond a bare encoder (implemented by the LightningModules):

- `task: ClassVar[str]` names the task ("tree", "classifier", "regressor"; not "encoder").
- `encoder` (nn.Module): the feature extractor, a timm model or a torchvision ResNet.
- `head` (nn.Module): every other module with weights; saved as `head.state_dict()`.
- `task_config(self) -> dict`: JSON-serialisable arguments that rebuild the model around an encoder
  (e.g. the schema as `Schema.to_dict()`, class names, loss), without the keys "task" and
  "zoobot_version", which `save_pretrained` adds.
- `from_task_config(cls, config: dict, encoder: nn.Module)` (classmethod): the model built from
  `task_config()`'s output, with `model.encoder is encoder` and a freshly initialised head of the
  same structure; `load_from_name` then loads the head weights strictly.
- The class is decorated with `@register_task` and imported by `zoobot.torch`, so names resolve.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from importlib import metadata
from pathlib import Path

import safetensors.torch
import timm
import torchvision
from torch import nn

from zoobot.data.model_hub import (
    CARD_NAME,
    CONFIG_NAME,
    HEAD_NAME,
    ModelSource,
    PushResult,
    TaskRegistry,
    model_card,
    push_folder,
    write_model_folder,
)
from zoobot.torch.encoders import (
    encoder_dim,
    encoder_from_config,
    load_state_dict_file,
    load_strict,
    read_weights,
)

_TASKS = TaskRegistry(builtin="zoobot.torch.finetune")
register_task = _TASKS.register
# torchvision ResNet layouts with their timm twins (same parameter names, same outputs).
_RESNET_LAYOUTS = {
    ("BasicBlock", (2, 2, 2, 2)): "resnet18",
    ("BasicBlock", (3, 4, 6, 3)): "resnet34",
    ("Bottleneck", (3, 4, 6, 3)): "resnet50",
    ("Bottleneck", (3, 4, 23, 3)): "resnet101",
    ("Bottleneck", (3, 8, 36, 3)): "resnet152",
}


def _zoobot_version() -> str:
    return metadata.version("zoobot-torch")


def _split(model: nn.Module) -> tuple[nn.Module, nn.Module | None, dict]:
    """(encoder, head or None, the `zoobot` config) of an encoder or a protocol model."""
    zoobot = _TASKS.zoobot_config(model, _zoobot_version())
    if zoobot["task"] == "encoder":
        return model, None, zoobot
    return model.encoder, model.head, zoobot


def _as_timm(encoder: nn.Module) -> nn.Module:
    """The encoder as a timm model: compiled wrappers unwrapped, torchvision ResNets converted."""
    encoder = getattr(encoder, "_orig_mod", encoder)
    if hasattr(encoder, "pretrained_cfg"):
        return encoder
    if not isinstance(encoder, torchvision.models.ResNet):
        raise TypeError(
            f"cannot save a {type(encoder).__qualname__} encoder in the timm layout; "
            "use load_encoder() for timm or torchvision ResNet encoders"
        )
    layout = (
        type(encoder.layer1[0]).__name__,
        tuple(len(encoder.get_submodule(f"layer{i}")) for i in range(1, 5)),
    )
    architecture = _RESNET_LAYOUTS.get(layout)
    if architecture is None or encoder.groups != 1 or encoder.base_width != 64:
        raise TypeError(f"no timm twin for this torchvision ResNet ({layout})")
    twin = timm.create_model(architecture, num_classes=0, in_chans=encoder.conv1.in_channels)
    load_strict(twin, encoder.state_dict(), f"torchvision {architecture}")
    return twin


def _write_layout(
    model: nn.Module, folder: Path, card: Mapping | None, title: str, repo_id: str | None = None
) -> str:
    """Write every file of the layout into the (new, empty) `folder`; return the task name."""
    encoder, head, zoobot = _split(model)
    encoder = _as_timm(encoder)
    timm.models.save_for_hf(encoder, folder, safe_serialization=True)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    config["zoobot"] = zoobot
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if head is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        safetensors.torch.save_file(tensors, folder / HEAD_NAME, metadata={"format": "pt"})
    card_text = model_card(config, encoder_dim(encoder), card, title, "zoobot-torch", repo_id)
    (folder / CARD_NAME).write_text(card_text, encoding="utf-8")
    return zoobot["task"]


def save_pretrained(
    model: nn.Module, folder: str | os.PathLike, *, card: Mapping | None = None
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
    model: nn.Module,
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


def load_from_name(name: str | os.PathLike) -> nn.Module:
    """Reload what `save_pretrained` wrote (or any timm Hub-layout encoder) from a folder or `hf_hub:`.

    Returns the encoder for encoder-only configs, else the registered class for
    `config["zoobot"]["task"]` rebuilt with `from_task_config` and its head weights loaded strictly.
    Nothing is unpickled.
    """
    source = ModelSource.parse(name, is_architecture=timm.is_model)
    if source is None:
        raise ValueError(
            f"{os.fspath(name)!r} is neither hf_hub:owner/repo nor a folder; "
            "for an untrained architecture use load_encoder"
        )
    config = source.read_config()
    encoder = encoder_from_config(config, read_weights(source))
    zoobot = config.get("zoobot") or {}
    task = zoobot.get("task", "encoder")
    if task == "encoder":
        return encoder
    cls = _TASKS.lookup(task, source)
    task_config = _TASKS.task_config(zoobot)
    model = cls.from_task_config(task_config, encoder)
    if model.encoder is not encoder:
        raise TypeError(f"{cls.__qualname__}.from_task_config must use the encoder it is given")
    head_path = source.fetch(HEAD_NAME)
    if head_path is None:
        raise FileNotFoundError(f"{source} is a {task!r} model but has no {HEAD_NAME}")
    load_strict(model.head, load_state_dict_file(head_path), f"{task} head of {source}")
    return model


from_pretrained = load_from_name
