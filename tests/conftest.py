"""Fixtures every test folder shares: what a run did to the files of a folder, and an offline
Hugging Face cache laid out as the Hub serves a download."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


class FolderState:
    """Every file below a folder: relative path -> (size, modification time, content digest)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.files = {
            path.relative_to(self.folder).as_posix(): (
                path.stat().st_size,
                path.stat().st_mtime_ns,
                hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest(),
            )
            for path in self.folder.rglob("*")
            if path.is_file()
        }

    def changes(self) -> dict[str, set[str]]:
        """{"added", "removed", "modified"} file names since this state was taken."""
        now = FolderState(self.folder).files
        return {
            "added": set(now) - set(self.files),
            "removed": set(self.files) - set(now),
            "modified": {
                name for name in now.keys() & self.files.keys() if now[name] != self.files[name]
            },
        }

    def touched(self) -> set[str]:
        """Every file added, removed or modified since this state was taken."""
        return set().union(*self.changes().values())


@pytest.fixture
def folder_state():
    """`folder_state(folder)`: the files of `folder` now, to ask later what a run touched."""
    return FolderState


class HubCache:
    """A Hugging Face cache folder, filled as huggingface_hub caches downloads (blobs, snapshots,
    refs), so Hub names load offline."""

    def __init__(self, path: Path):
        self.path = path

    def fill(self, repo_id: str, folder: Path, ref: str = "main") -> str:
        """Cache the files of `folder` as `repo_id` at `ref`; return the commit hash."""
        repo = self.path / f"models--{repo_id.replace('/', '--')}"
        files = sorted(f for f in folder.iterdir() if f.is_file())
        commit = hashlib.sha1(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()
        for file in files:
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo / "snapshots" / commit / file.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        return commit


@pytest.fixture(scope="session")
def hub_cache():
    """`hub_cache(folder)`: a `HubCache` over a cache folder of your own (e.g. a subprocess's)."""
    return HubCache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> HubCache:
    """An empty Hugging Face cache, with the Hub unreachable (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return HubCache(cache)
