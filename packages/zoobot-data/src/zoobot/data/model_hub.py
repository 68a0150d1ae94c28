"""The timm Hub layout of Zoobot models, without a deep-learning framework.

Both `zoobot.torch.hub` and `zoobot.tf.hub` save and load the same folders (DESIGN.md contract 3):
`config.json` + `model.safetensors` for the encoder as timm writes them, plus `head.safetensors`,
the task config under `config["zoobot"]` and a `README.md` card for task models. Everything here is
the same for both frameworks: where a model lives (`ModelSource`: a folder or `hf_hub:` repo,
downloads and offline errors), atomic folder writes, the task registry, the model card and the
one-commit push. The framework packages only read and write tensors.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from zoobot.shared.schema import Schema

HUB_PREFIXES = ("hf_hub:", "hf-hub:")
LOCAL_PREFIX = "local-dir:"
CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
LEGACY_NAME = "pytorch_model.bin"
WEIGHTS_NAMES = (SAFETENSORS_NAME, LEGACY_NAME)
HEAD_NAME = "head.safetensors"
CARD_NAME = "README.md"
RESERVED_KEYS = ("task", "zoobot_version")
CARD_KEYS = ("description", "training_data", "metrics", "license")
# mkdtemp and safetensors create owner-only paths; a saved model gets the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


class WeightsMismatchError(ValueError):
    """Checkpoint tensors that do not fit the model; the message names each tensor and both shapes."""


def check_weights_fit(
    expected: Mapping[str, tuple[int, ...]],
    found: Mapping[str, tuple[int, ...]],
    what: str,
    ignored: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Raise `WeightsMismatchError` unless `found` has exactly the `expected` names and shapes.

    Shapes are compared as tuples; names in `ignored` (buffers without inference value) may be
    present in `found` or not. The message lists every shape mismatch, missing name (in the
    model's order) and unexpected name (sorted).
    """
    missing = [key for key in expected if key not in found]
    unexpected = sorted(set(found) - set(expected) - set(ignored))
    mismatched = [
        f"{key}: {tuple(found[key])} in the checkpoint, {tuple(expected[key])} in the model"
        for key in expected
        if key in found and tuple(found[key]) != tuple(expected[key])
    ]
    problems = []
    for label, items in (
        ("shape mismatch", mismatched),
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
    ):
        if items:
            problems.append(f"{len(items)} {label}: " + "; ".join(items))
    if problems:
        raise WeightsMismatchError(f"{what} weights do not fit the model: " + " | ".join(problems))


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


class HubUnavailableError(OSError):
    """A Hub file that cannot be had here: offline and not cached, private, or no such repo/revision."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model in the timm Hub layout lives: a local folder, or a Hub repo at a revision."""

    folder: Path | None = None
    repo_id: str | None = None
    revision: str | None = None

    @classmethod
    def parse(
        cls, name: str | os.PathLike, is_architecture: Callable[[str], bool]
    ) -> ModelSource | None:
        """The source `name` points to; None for an architecture name (which wins over a folder)."""
        text = os.fspath(name)
        for prefix in HUB_PREFIXES:
            if text.startswith(prefix):
                repo_id, _, revision = text[len(prefix) :].partition("@")
                if repo_id.count("/") != 1 or not all(repo_id.split("/")):
                    raise ValueError(f"{text!r}: expected hf_hub:owner/repo[@revision]")
                return cls(repo_id=repo_id, revision=revision or None)
        if text.startswith(LOCAL_PREFIX):
            text = text[len(LOCAL_PREFIX) :]
        elif not (isinstance(name, os.PathLike) or any(c in text for c in "/\\")) and (
            is_architecture(text.split(".", 1)[0]) or not Path(text).is_dir()
        ):
            return None
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no model folder at {str(folder)!r}; for a Hub repo write hf_hub:{text}"
            )
        return cls(folder=folder)

    def __str__(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return f"hf_hub:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")

    def fetch(self, filename: str) -> Path | None:
        """A local path to `filename`, downloading (or reading the cache) if needed; None if absent."""
        if self.folder is not None:
            path = self.folder / filename
            return path if path.is_file() else None
        try:
            return Path(
                huggingface_hub.hf_hub_download(self.repo_id, filename, revision=self.revision)
            )
        except RemoteEntryNotFoundError:
            return None
        except LocalEntryNotFoundError as err:
            raise HubUnavailableError(self._not_cached_message(filename)) from err
        except RevisionNotFoundError as err:
            raise HubUnavailableError(f"{self}: the Hub has no revision {self.revision!r}") from err
        except RepositoryNotFoundError as err:
            raise HubUnavailableError(
                f"{self}: no such repo on the Hub, or it is private/gated: check the name, or log in "
                "with `hf auth login` (or set HF_TOKEN)"
            ) from err

    def weights_path(self) -> Path:
        """The encoder weights: `model.safetensors`, else the legacy `pytorch_model.bin`.

        A file the offline cache lacks is skipped for the other; if neither can be had, the first
        such error is raised.
        """
        unavailable = None
        for filename in WEIGHTS_NAMES:
            try:
                path = self.fetch(filename)
            except HubUnavailableError as err:
                unavailable = unavailable or err
                continue
            if path is not None:
                return path
        if unavailable is not None:
            raise unavailable
        raise FileNotFoundError(f"{self} has neither {SAFETENSORS_NAME} nor {LEGACY_NAME}")

    def read_config(self) -> dict:
        """The parsed `config.json`, checked to be in the timm Hub layout."""
        path = self.fetch(CONFIG_NAME)
        if path is None:
            raise FileNotFoundError(
                f"{self} has no {CONFIG_NAME}: not a model in the timm Hub layout"
            )
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "architecture" not in config:
            raise ValueError(
                f"{self}/{CONFIG_NAME} names no 'architecture': not the timm Hub layout"
            )
        return config

    def _not_cached_message(self, filename: str) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return (
            f"{self}: {filename} is not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}) and the Hub cannot be reached "
            f"(offline={huggingface_hub.constants.HF_HUB_OFFLINE}). Fix: on a machine with network run "
            f"`hf download {self.repo_id}{revision}` and copy that cache here (or point HF_HUB_CACHE "
            "at it), or download the repo's files into a folder and pass the folder's path instead."
        )


def write_model_folder(folder: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Let `write` fill a staging folder beside `folder`, then rename it into place atomically.

    Readers never see half a model; an existing model folder is replaced, any other non-empty
    folder is refused.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / CONFIG_NAME).is_file():
        raise FileExistsError(f"{folder} exists and is not a saved model; refusing to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        write(staging)
        for path in staging.iterdir():
            os.chmod(path, 0o666 & ~_UMASK)
        os.chmod(staging, 0o777 & ~_UMASK)
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def replace_folder(new: Path, destination: Path) -> None:
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


def model_card(
    config: Mapping,
    num_features: int,
    card: Mapping | None,
    title: str,
    package: str,
    repo_id: str | None = None,
) -> str:
    """The README.md: front matter, architecture, task (schema or classes), data, metrics, usage.

    `package` ("zoobot-torch" or "zoobot-tf") is the one that wrote the model; the usage section
    shows both frameworks and timm, which all read the same files.
    """
    card = dict(card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model card fields {unknown}; allowed: {list(CARD_KEYS)}")
    zoobot = config["zoobot"]
    channels = (config.get("pretrained_cfg") or {}).get("input_size", [3])[0]
    hub_name = f"hf_hub:{repo_id}" if repo_id else "hf_hub:<owner>/<repo>"
    front = ["---", "library_name: timm", "tags:"]
    front += [f"- {tag}" for tag in ("image-classification", "timm", "zoobot", "galaxy-zoo")]
    if card.get("license"):
        front.append(f"license: {card['license']}")
    lines = [*front, "---", "", f"# {title}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    lines += [
        f"A Zoobot `{zoobot['task']}` model ({package} {zoobot['zoobot_version']}).",
        "",
        "## Architecture",
        "",
        f"- encoder: timm `{config['architecture']}`, {num_features} pooled features, "
        f"{channels} input channel(s)",
    ]
    lines += _task_lines(zoobot)
    if card.get("training_data"):
        lines += ["", "## Training data", "", card["training_data"]]
    if card.get("metrics"):
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in card["metrics"].items()]
    lines += ["", "## Usage", "", "PyTorch or TensorFlow read the same files:", "", "```python"]
    lines += ["from zoobot.torch import load_from_name  # or: from zoobot.tf import load_from_name"]
    lines += ["", f"model = load_from_name('{hub_name}')  # or the folder's path", "```", ""]
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


def push_folder(
    write: Callable[[Path], str],
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
) -> PushResult:
    """Let `write` fill a temporary folder (returning the task name), then upload it as one commit.

    `revision` is a branch (created if needed). `dry_run` writes the files locally, lists them and
    touches no network. Offline or unauthenticated pushes fail before uploading, saying how to fix it.
    """
    if not dry_run:
        check_can_push(token)
    with tempfile.TemporaryDirectory(prefix="zoobot-push-") as tmp:
        folder = Path(tmp)
        task = write(folder)
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


def check_can_push(token: str | None) -> None:
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
