"""The files of one `predict` / `get_representations` run: locked while it runs, checked before it
starts, and replaced as one set.

A run writes a main table at `save_loc` and members beside it (a tree's friendly table, the
failures CSV, a PCA projection), working in `<save_loc>.parts/`. Its set is recorded in the main
table's parquet metadata (`zoobot.run_files`), written last, so a later run knows which files an
earlier one wrote:

- `<save_loc>.lock` is held while a run works (an `flock`, which the kernel releases when the
  process dies, so a killed run never blocks the next; it records the holder's pid, host and start
  time for the message a second run gets);
- before the run, `claim` refuses a `save_loc` that is a folder, a main table or member that zoobot
  did not write, and an earlier run's results unless `overwrite=True`;
- after it, the members of the earlier set this run does not write (a tree's friendly table beside
  a later classifier table) are removed, so the files on disk always come from one run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

try:  # POSIX; elsewhere the lock is an exclusively created file (`_ExclusiveFile`)
    import fcntl
except ImportError:
    fcntl = None

RUN_FILES_KEY = "zoobot.run_files"
"""Parquet metadata key of a main table: {role: path relative to its folder} of its members."""
FORMAT_KEY = b"zoobot.format"
PARTS_MANIFEST = "manifest.json"


class RunLockedError(OSError):
    """Another run holds the lock of this `save_loc`."""


@dataclass(frozen=True)
class OutputSet:
    """The files a run writes: `main` (the table at `save_loc`) and its members by role."""

    main: Path
    members: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def of(cls, save_loc: str | os.PathLike, **members: str | os.PathLike | None) -> OutputSet:
        """The set of a run writing `save_loc` and the given members (None: not written)."""
        given = {role: Path(path) for role, path in members.items() if path is not None}
        return cls(Path(save_loc), given)

    @property
    def parts(self) -> Path:
        return Path(f"{self.main}.parts")

    @property
    def lock(self) -> Path:
        return Path(f"{self.main}.lock")

    def metadata(self) -> dict[str, str]:
        """The main table's record of its members (`RUN_FILES_KEY`)."""
        folder = self.main.parent
        members = {role: os.path.relpath(path, folder) for role, path in self.members.items()}
        return {RUN_FILES_KEY: json.dumps(members, sort_keys=True)}

    def run_record(self) -> dict[str, str]:
        """The members as the parts manifest records them (the run's fingerprint includes them)."""
        return {role: os.fspath(path) for role, path in sorted(self.members.items())}


def check_save_loc(save_loc: str | os.PathLike, what: str = "save_loc") -> None:
    """Refuse a `save_loc` that is an existing folder: it must name the table to write."""
    path = Path(save_loc)
    if path.is_dir():
        raise IsADirectoryError(
            f"{what} {path} is a folder; give the path of the file to write, e.g. "
            f"{path / 'predictions.parquet'}"
        )


def recorded_members(main: Path) -> dict[str, Path] | None:
    """The members an earlier run recorded in `main`; None if `main` is not a zoobot table."""
    try:
        metadata = pq.read_schema(main).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    if FORMAT_KEY not in metadata:
        return None
    try:
        members = json.loads(metadata.get(RUN_FILES_KEY.encode(), b"{}"))
    except ValueError:
        members = {}
    return {role: main.parent / relative for role, relative in members.items()}


def _unfinished_members(outputs: OutputSet) -> set[Path]:
    """Members an interrupted run (its parts manifest) was writing: ours if found on disk."""
    try:
        manifest = json.loads((outputs.parts / PARTS_MANIFEST).read_text(encoding="utf-8"))
        return {Path(p) for p in manifest["run"]["outputs"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def claim(outputs: OutputSet, overwrite: bool) -> list[Path]:
    """Check the files of a run before it starts; return the earlier run's members this run will
    not write, to remove once it has finished (`remove_stale`).

    Refused, naming the file: a main table or member that is a folder; a main table zoobot did not
    write; a member that no earlier run of ours recorded; an earlier run's results without
    `overwrite=True`.
    """
    for path in (outputs.main, *outputs.members.values()):
        check_save_loc(path, "output")
    previous: dict[str, Path] = {}
    if outputs.main.exists():
        found = recorded_members(outputs.main)
        if found is None:
            raise FileExistsError(
                f"{outputs.main} exists and was not written by zoobot; move it away or choose "
                "another save_loc"
            )
        if not overwrite:
            raise FileExistsError(
                f"{outputs.main} holds the results of an earlier run; pass overwrite=True to "
                "replace them (with the files that run wrote beside it), or choose another save_loc"
            )
        previous = found
    ours = set(previous.values()) | _unfinished_members(outputs)
    foreign = [p for p in outputs.members.values() if p.exists() and p not in ours]
    if foreign:
        raise FileExistsError(
            f"{', '.join(map(str, foreign))} exist(s) and zoobot did not write them for "
            f"{outputs.main}; move them away or choose another save_loc"
        )
    planned = set(outputs.members.values())
    return [p for p in previous.values() if p not in planned and p.exists()]


def remove_stale(paths: list[Path]) -> None:
    """Remove the members of an earlier set that this run replaced without rewriting them."""
    for path in paths:
        path.unlink(missing_ok=True)


def _holder(path: Path) -> str:
    """Who holds a lock, from what it recorded."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _record() -> str:
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})


def _locked_message(outputs: OutputSet) -> str:
    return (
        f"{outputs.main} is being written by another run ({_holder(outputs.lock)}); wait for it to "
        f"finish or stop it. Its lock is {outputs.lock}"
    )


@contextlib.contextmanager
def run_lock(outputs: OutputSet) -> Iterator[None]:
    """Hold `<save_loc>.lock` for the block, or raise `RunLockedError` naming its holder."""
    outputs.main.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        with _exclusive_file(outputs):
            yield
        return
    path = outputs.lock
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(_locked_message(outputs)) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, _record().encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def _exclusive_file(outputs: OutputSet) -> Iterator[None]:
    """Where `flock` is missing: the lock file is created exclusively; one left by a dead process
    of this host (its recorded pid is gone) is taken over."""
    path = outputs.lock
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            if not _is_dead(path):
                raise RunLockedError(_locked_message(outputs)) from None
            path.unlink(missing_ok=True)
    else:
        raise RunLockedError(_locked_message(outputs))
    try:
        os.write(fd, _record().encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def _is_dead(path: Path) -> bool:
    """Whether the process that wrote a lock file is gone (on this host)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["host"] != socket.gethostname():
            return False
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return False
