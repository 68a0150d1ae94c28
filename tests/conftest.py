"""Fixtures every test folder shares: what a run did to the files of a folder."""

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
