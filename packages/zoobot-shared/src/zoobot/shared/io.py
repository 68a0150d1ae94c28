"""File helpers: atomic writes (a reader sees the old file or the whole new one) and digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp creates files readable only by their owner; finished files get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `destination`; rename it over `destination` if the block succeeds.

    The temporary file lives in the same folder (so the rename is atomic on POSIX) and is removed if
    the block raises, so an interrupted write never leaves a partial file under the final name.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, destination)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(destination: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `destination` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(destination: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `destination` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")


def create_text(destination: str | os.PathLike, text: str) -> bool:
    """Write UTF-8 `text` to `destination` unless it exists; return whether this call wrote it.

    The finished file is linked into place, which fails if another process got there first, so of
    several processes creating the same file at once exactly one succeeds, and readers never see
    a partial file.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.link(tmp, destination)
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks so multi-GB archives and shards fit in memory."""
    # hashlib.file_digest does this from Python 3.11; written out while 3.10 is supported.
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
