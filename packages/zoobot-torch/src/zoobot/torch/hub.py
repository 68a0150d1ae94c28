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

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import huggingface_hub
import safetensors.torch
import timm
import torchvision
from huggingface_hub.errors import HfHubHTTPError
from torch import nn

from zoobot.shared.schema import Schema
from zoobot.torch.encoders import (
    CONFIG_NAME,
    HubUnavailableError,
    ModelSource,
    encoder_dim,
    encoder_from_config,
    load_state_dict_file,
    load_strict,
)

HEAD_NAME = "head.safetensors"
CARD_NAME = "README.md"
RESERVED_KEYS = ("task", "zoobot_version")
CARD_KEYS = ("description", "training_data", "metrics", "license")
_TASKS: dict[str, type] = {}
# mkdtemp and safetensors create owner-only paths; a saved model gets the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)
# torchvision ResNet layouts with their timm twins (same parameter names, same outputs).
_RESNET_LAYOUTS = {
    ("BasicBlock", (2, 2, 2, 2)): "resnet18",
    ("BasicBlock", (3, 4, 6, 3)): "resnet34",
    ("Bottleneck", (3, 4, 6, 3)): "resnet50",
    ("Bottleneck", (3, 4, 23, 3)): "resnet101",
    ("Bottleneck", (3, 8, 36, 3)): "resnet152",
}


def register_task(cls: type) -> type:
    """Class decorator: make `cls` the model `load_from_name` builds for `config["zoobot"]["task"]`."""
    task = getattr(cls, "task", None)
    if not isinstance(task, str) or task == "encoder":
        raise TypeError(f"{cls.__qualname__}.task must be a task name other than 'encoder'")
    for method in ("task_config", "from_task_config"):
        if not callable(getattr(cls, method, None)):
            raise TypeError(f"{cls.__qualname__} must define {method}() to be saved and reloaded")
    known = _TASKS.get(task)
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise ValueError(f"task {task!r} is already registered to {known.__qualname__}")
    _TASKS[task] = cls
    return cls


def _zoobot_version() -> str:
    return metadata.version("zoobot-torch")


def _split(model: nn.Module) -> tuple[nn.Module, nn.Module | None, dict]:
    """(encoder, head or None, the `zoobot` config) of an encoder or a protocol model."""
    task = getattr(type(model), "task", None)
    if task is None:
        return model, None, {"task": "encoder", "zoobot_version": _zoobot_version()}
    if _TASKS.get(task) is not type(model):
        raise TypeError(
            f"{type(model).__qualname__} is not registered: decorate it with @register_task "
            f"(a subclass needs its own task name; {task!r} belongs to {_TASKS.get(task)})"
        )
    task_config = dict(model.task_config())
    clash = sorted(set(task_config) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"task_config() of {type(model).__qualname__} uses reserved keys {clash}")
    zoobot = {"task": task, "zoobot_version": _zoobot_version(), **task_config}
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
    card_text = model_card(config, encoder, card, title, repo_id)
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
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / CONFIG_NAME).is_file():
        raise FileExistsError(f"{folder} exists and is not a saved model; refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        _write_layout(model, staging, card, title=folder.name)
        for path in staging.iterdir():
            os.chmod(path, 0o666 & ~_UMASK)
        os.chmod(staging, 0o777 & ~_UMASK)
        _replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _replace_folder(new: Path, destination: Path) -> None:
    """Rename `new` to `destination`, moving an old `destination` aside first and deleting it after."""
    if not destination.exists():
        os.replace(new, destination)
        return
    old = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent)
    )
    os.replace(destination, old / "model")
    try:
        os.replace(new, destination)
    except OSError:
        os.replace(old / "model", destination)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def model_card(
    config: Mapping,
    encoder: nn.Module,
    card: Mapping | None,
    title: str,
    repo_id: str | None = None,
) -> str:
    """The README.md: front matter, architecture, task (schema or classes), data, metrics, usage."""
    card = dict(card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model card fields {unknown}; allowed: {list(CARD_KEYS)}")
    zoobot = config["zoobot"]
    channels = config["pretrained_cfg"]["input_size"][0]
    hub_name = f"hf_hub:{repo_id}" if repo_id else "hf_hub:<owner>/<repo>"
    front = ["---", "library_name: timm", "tags:"]
    front += [f"- {tag}" for tag in ("image-classification", "timm", "zoobot", "galaxy-zoo")]
    if card.get("license"):
        front.append(f"license: {card['license']}")
    lines = [*front, "---", "", f"# {title}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    lines += [
        f"A Zoobot `{zoobot['task']}` model (zoobot-torch {zoobot['zoobot_version']}).",
        "",
        "## Architecture",
        "",
        f"- encoder: timm `{config['architecture']}`, {encoder_dim(encoder)} pooled features, "
        f"{channels} input channel(s)",
    ]
    lines += _task_lines(zoobot)
    if card.get("training_data"):
        lines += ["", "## Training data", "", card["training_data"]]
    if card.get("metrics"):
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in card["metrics"].items()]
    lines += ["", "## Usage", "", "```python", "from zoobot.torch import load_from_name", ""]
    lines += [f"model = load_from_name('{hub_name}')  # or the folder's path", "```", ""]
    lines += ["The encoder alone loads with timm:", "", "```python", "import timm", ""]
    in_chans = f", in_chans={channels}" if channels != 3 else ""
    lines += [
        f"encoder = timm.create_model('{hub_name}', pretrained=True, num_classes=0{in_chans})",
        "```",
        "",
    ]
    return "\n".join(lines)


def _task_lines(zoobot: Mapping) -> list[str]:
    """Model card lines describing the task config: the schema's questions, then other settings."""
    lines = []
    settings = {k: v for k, v in zoobot.items() if k not in (*RESERVED_KEYS, "schema")}
    if settings:
        lines += [f"- {key}: {json.dumps(value)}" for key, value in settings.items()]
    if "schema" in zoobot:
        schema = Schema.from_dict(zoobot["schema"])
        lines += [
            "",
            "## Schema",
            "",
            f"`{schema.name}`: {len(schema.questions)} questions, {len(schema.label_cols)} answers "
            "(head outputs in this order).",
            "",
        ]
        for question in schema.questions:
            after = f" (asked after `{question.asked_after}`)" if question.asked_after else ""
            answers = ", ".join(a.name for a in question.answers)
            lines.append(f"- `{question.name}`{after}: {answers}")
    return lines


@dataclass(frozen=True)
class PushResult:
    """What `push_to_hub` uploaded (or, in a dry run, would upload) and the commit it made."""

    repo_id: str
    files: list[str]
    commit_url: str | None = None


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
    if not dry_run:
        _check_can_push(token)
    with tempfile.TemporaryDirectory(prefix="zoobot-push-") as tmp:
        folder = Path(tmp)
        task = _write_layout(model, folder, card, title=repo_id, repo_id=repo_id)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if dry_run:
            return PushResult(repo_id, files)
        api = huggingface_hub.HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=f"Upload Zoobot {task} model",
            )
        except HfHubHTTPError as err:
            raise HubUnavailableError(
                f"pushing to {repo_id} failed: {err}. Check the token has write access "
                "(`hf auth login`, HF_TOKEN, or token=...)"
            ) from err
        except Exception as err:  # transport errors differ between huggingface_hub versions
            raise HubUnavailableError(
                f"pushing to {repo_id} failed ({type(err).__name__}: {err}). If the Hub cannot be "
                "reached, save with save_pretrained(model, folder) and upload it later with `hf upload`"
            ) from err
        return PushResult(repo_id, files, commit.commit_url)


def _check_can_push(token: str | None) -> None:
    """Fail early, with the fix, when offline or without credentials."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise HubUnavailableError(
            "cannot push: HF_HUB_OFFLINE is set. Unset it on a machine with network, or save with "
            "save_pretrained(model, folder) and upload the folder later with `hf upload`"
        )
    if token is None and huggingface_hub.get_token() is None:
        raise HubUnavailableError(
            "cannot push: not logged in to the Hugging Face Hub. Run `hf auth login`, set HF_TOKEN, "
            "or pass token=..."
        )


def load_from_name(name: str | os.PathLike) -> nn.Module:
    """Reload what `save_pretrained` wrote (or any timm Hub-layout encoder) from a folder or `hf_hub:`.

    Returns the encoder for encoder-only configs, else the registered class for
    `config["zoobot"]["task"]` rebuilt with `from_task_config` and its head weights loaded strictly.
    Nothing is unpickled.
    """
    source = ModelSource.parse(name)
    if source is None:
        raise ValueError(
            f"{os.fspath(name)!r} is neither hf_hub:owner/repo nor a folder; "
            "for an untrained architecture use load_encoder"
        )
    config = source.read_config()
    encoder = encoder_from_config(config, source.read_weights())
    zoobot = config.get("zoobot") or {}
    task = zoobot.get("task", "encoder")
    if task == "encoder":
        return encoder
    if task not in _TASKS:
        importlib.import_module("zoobot.torch.finetune")  # registers the built-in tasks
    cls = _TASKS.get(task)
    if cls is None:
        raise ValueError(
            f"{source} holds a {task!r} model but no class is registered for it (registered: "
            f"{sorted(_TASKS)}); import the module that defines it"
        )
    task_config = {k: v for k, v in zoobot.items() if k not in RESERVED_KEYS}
    model = cls.from_task_config(task_config, encoder)
    if model.encoder is not encoder:
        raise TypeError(f"{cls.__qualname__}.from_task_config must use the encoder it is given")
    head_path = source.fetch(HEAD_NAME)
    if head_path is None:
        raise FileNotFoundError(f"{source} is a {task!r} model but has no {HEAD_NAME}")
    load_strict(model.head, load_state_dict_file(head_path), f"{task} head of {source}")
    return model


from_pretrained = load_from_name
