"""Where a Zoobot model lives — a local folder or a Hugging Face Hub repo — and the one-commit push.

`ModelSource` parses the names every framework accepts (`hf_hub:owner/repo[@revision]`, a folder,
`local-dir:<folder>`, or a published encoder's repo name such as `zoobot-encoder-convnext_nano`),
fetches files through the Hugging Face cache, and turns offline or missing files into
`HubUnavailableError` messages that say how to fix them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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

from zoobot.models import catalogue
from zoobot.models.layout import (
    CONFIG_NAME,
    LEGACY_NAME,
    SAFETENSORS_NAME,
    WEIGHTS_NAMES,
    parse_config,
)

HUB_PREFIXES = ("hf_hub:", "hf-hub:")
LOCAL_PREFIX = "local-dir:"


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
        elif not (isinstance(name, os.PathLike) or any(c in text for c in "/\\")):
            if is_architecture(text.split(".", 1)[0]):
                return None
            if not Path(text).is_dir():
                return cls._published(text)
        folder = Path(text).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no model folder at {str(folder)!r}; for a Hub repo write hf_hub:{text}"
            )
        return cls(folder=folder)

    @classmethod
    def _published(cls, text: str) -> ModelSource | None:
        """The Hub repo of a published encoder's name (`zoobot-encoder-convnext_nano[@revision]`);
        None for other names, an error naming the close ones for a misspelt encoder name."""
        name, _, revision = text.partition("@")
        if not catalogue.is_published_name(name):
            return None
        return cls(repo_id=catalogue.published_encoder(name).repo_id, revision=revision or None)

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
        where = str(path) if self.folder is not None else f"{self}/{CONFIG_NAME} ({path})"
        return parse_config(path, where)

    def _not_cached_message(self, filename: str) -> str:
        revision = f" --revision {self.revision}" if self.revision else ""
        return (
            f"{self}: {filename} is not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}) and the Hub cannot be reached "
            f"(offline={huggingface_hub.constants.HF_HUB_OFFLINE}). Fix: on a machine with network run "
            f"`hf download {self.repo_id}{revision}` and copy that cache here (or point HF_HUB_CACHE "
            "at it), or download the repo's files into a folder and pass the folder's path instead."
        )


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
