"""`predict` and `get_representations` in several processes, written once for every framework.

A run's chunks (`zoobot.models.runner.Parts`) are shared out between processes, each filling the
same parts folder with its own chunks: the ranks of one launch (several GPUs of a machine, or nodes,
started by the framework's launcher, `torchrun`, SLURM or `TF_CONFIG`), and independent tasks that
each take a slice of the catalog (`catalog_slice`, e.g. a SLURM array: `Share.parse("slurm")`).

- `Share`: which chunks a process computes: the `index`-th of `count` contiguous blocks of the
  run's chunks, so each process reads one contiguous slice of the catalog. A launch of `n` ranks
  within slice `i` of `m` takes share `i * n + rank` of `m * n`. Parts are per chunk, whoever wrote
  them, so a run resumes with any number of processes: finished chunks are never redone.
- `Rank`: where this process stands in its launch (index, count, device), and the launch's
  collective operations when it has them (a `torch.distributed` group).
- Finishing (`complete`): with collectives, every rank waits for the others and rank 0 merges;
  without, each process, once its share is done, merges if every chunk of the run is then on disk.
  The last process to finish always sees that, and an exclusive lock file makes exactly one process
  merge. A process that does not merge returns a `PendingRun`; `merge(save_loc)` (the `merge`
  command) merges a run whose slices have all finished, or says it is already merged.
- `spawn`: start one rank per device on this machine in fresh processes (for frameworks without a
  launcher of their own) and return the merged files.

The merged tables are those of a one-process run: the same rows in catalog order, each chunk's
values computed in the same batches with the same seeds whichever process computed it.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoobot.models.outputs import OutputSet, run_lock
from zoobot.models.runner import (
    Parts,
    PredictionFiles,
    RepresentationFiles,
    finish_run,
    stored_parts,
)

MERGE_LOCK = "merging.lock"
Files = PredictionFiles | RepresentationFiles


@dataclass(frozen=True)
class Share:
    """The `index`-th (0-based) of `count` contiguous blocks of a run's chunks."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"share {self.index}/{self.count}: need 0 <= index < count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def chunks(self, n_chunks: int) -> range:
        """This share's chunks of a run of `n_chunks`: blocks differ in size by at most one."""
        return range(n_chunks * self.index // self.count, n_chunks * (self.index + 1) // self.count)

    def within(self, rank: Rank) -> Share:
        """The share of `rank` of a launch that runs this share."""
        return Share(self.index * rank.count + rank.index, self.count * rank.count)

    @classmethod
    def parse(cls, value: Share | str | tuple[int, int] | None, env=None) -> Share | None:
        """A share from `Share`, (index, count), "index/count", or "slurm" (this task of a SLURM
        array job, from the variables SLURM sets: `slurm_array_share`)."""
        if value is None or isinstance(value, Share):
            return value
        if isinstance(value, str) and value.strip().lower() == "slurm":
            return slurm_array_share(os.environ if env is None else env)
        if isinstance(value, str):
            index, sep, count = value.partition("/")
            if not sep or not index.strip().isdigit() or not count.strip().isdigit():
                raise ValueError(
                    f"a catalog slice is INDEX/COUNT (0-based) or slurm, not {value!r}"
                )
            return cls(int(index), int(count))
        index, count = value
        return cls(int(index), int(count))


def slurm_array_share(env: Mapping[str, str]) -> Share:
    """This SLURM array task's slice: (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN`) /
    `SLURM_ARRAY_TASK_STEP` of `SLURM_ARRAY_TASK_COUNT` (arrays such as `--array=0-9` or `1-20:2`)."""
    missing = [
        name for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT") if name not in env
    ]
    if missing:
        raise ValueError(
            f"catalog slice 'slurm' needs a SLURM array job ({', '.join(missing)} not set); "
            "submit with sbatch --array=0-N, or give the slice as INDEX/COUNT"
        )
    task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
    first, step = int(env.get("SLURM_ARRAY_TASK_MIN", 0)), int(env.get("SLURM_ARRAY_TASK_STEP", 1))
    index, rest = divmod(task - first, max(1, step))
    if rest or not 0 <= index < count:
        raise ValueError(
            f"SLURM array task {task} is not one of {count} evenly spaced tasks from {first}; "
            "use --array=FIRST-LAST[:STEP], or give the slice as INDEX/COUNT"
        )
    return Share(index, count)


def slurm_step_tasks(env: Mapping[str, str]) -> int | None:
    """The task count of the SLURM job step this process is a task of, when it has several and
    is not an interactive shell's (`srun --pty bash`); else None."""
    tasks = int(env.get("SLURM_NTASKS", 1))
    interactive = env.get("SLURM_JOB_NAME") in ("bash", "interactive")
    return tasks if tasks > 1 and not interactive else None


@dataclass(frozen=True)
class Rank:
    """This process's place in a launch: `index` of `count` ranks, the device it runs on, and the
    launch's collectives if it has them: `barrier()` and `broadcast(value)` (rank 0's value)."""

    index: int = 0
    count: int = 1
    device: Any = None
    barrier: Callable[[], None] | None = None
    broadcast: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Launch:
    """How many processes run a call and how they start: `devices` per node (an int, or "auto":
    one per GPU), `nodes`, and the framework's `strategy` (its launcher; "auto" lets it choose)."""

    devices: int | str = 1
    nodes: int = 1
    strategy: Any = "auto"

    def __post_init__(self):
        if self.devices != "auto" and (not isinstance(self.devices, int) or self.devices < 1):
            raise ValueError(f"devices must be a positive number or 'auto', got {self.devices!r}")
        if not isinstance(self.nodes, int) or self.nodes < 1:
            raise ValueError(f"nodes must be a positive number, got {self.nodes!r}")

    @property
    def single(self) -> bool:
        """One process on one device, unless a launcher's environment says otherwise."""
        return self.devices == 1 and self.nodes == 1


@dataclass(frozen=True)
class PendingRun:
    """What a process returns when it has finished its chunks but the run is not merged by it:
    other chunks are still to do (`done` of `n_chunks` are on disk), or another process merges."""

    save_loc: Path
    done: int
    n_chunks: int
    merging_elsewhere: bool = False

    def __str__(self) -> str:
        if self.merging_elsewhere:
            return f"{self.save_loc}: every chunk is done; another process is merging them"
        return (
            f"{self.save_loc}: {self.done} of {self.n_chunks} chunks done; the last process to "
            f"finish merges them, or run `merge {self.save_loc}` once all have finished"
        )


# --- finishing -----------------------------------------------------------------------------------


def _lock_owner() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _stale(lock: Path) -> bool:
    """Whether a merge lock was left by a process of this machine that is gone."""
    try:
        host, pid = lock.read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def merge_when_complete(
    parts: Parts, save_loc: str | os.PathLike, output: Mapping
) -> Files | PendingRun:
    """Merge the run into its final files if every chunk is on disk and no other process is
    merging it (the lock file `merging.lock` in the parts folder decides); else a `PendingRun`."""
    save_loc = Path(save_loc)
    todo = parts.todo()
    if todo:
        return PendingRun(save_loc, parts.n_chunks - len(todo), parts.n_chunks)
    lock = parts.folder / MERGE_LOCK
    if lock.exists() and _stale(lock):
        lock.unlink(missing_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return PendingRun(save_loc, parts.n_chunks, parts.n_chunks, merging_elsewhere=True)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_lock_owner())
    try:
        return finish_run(parts, save_loc, output)  # removes the folder, lock included
    except BaseException:
        lock.unlink(missing_ok=True)
        raise


def complete(
    rank: Rank, parts: Parts, save_loc: str | os.PathLike, output: Mapping
) -> Files | PendingRun:
    """After this rank's chunks: merge the run if it is complete (see the module docstring)."""
    if rank.barrier is None or rank.count == 1:
        return merge_when_complete(parts, save_loc, output)
    rank.barrier()
    outcome: tuple[Any, BaseException | None, str] = (None, None, "")
    if rank.index == 0:
        try:
            outcome = (merge_when_complete(parts, save_loc, output), None, "")
        except Exception as err:  # every rank raises it, rather than waiting forever
            outcome = (None, err, "".join(traceback.format_exception(err)))
    result, error, text = rank.broadcast(outcome)
    if error is not None:
        raise error from RankError(0, text)
    return result


def merge(save_loc: str | os.PathLike) -> Files | None:
    """Merge the finished run at `<save_loc>.parts` into its final files, as the run would have;
    None if there is nothing to merge because `save_loc` is already complete. `ValueError` if
    chunks are missing (naming how many and the first ones)."""
    save_loc = Path(save_loc)
    folder = Path(f"{save_loc}.parts")
    if not folder.exists() and save_loc.exists():
        return None
    parts, output = stored_parts(save_loc)
    with run_lock(OutputSet.of(save_loc)):
        result = merge_when_complete(parts, save_loc, output)
    if isinstance(result, PendingRun):
        if result.merging_elsewhere:
            raise ValueError(
                f"{folder / MERGE_LOCK} says another process is merging this run; if none is, "
                "delete that file and merge again"
            )
        todo = parts.todo()
        raise ValueError(
            f"{folder}: {len(todo)} of {parts.n_chunks} chunks are not done yet (first: "
            f"{', '.join(map(str, todo[:5]))}); let every slice finish, or run predict again "
            "with the same arguments to compute them"
        )
    return result


# --- starting ranks on this machine -----------------------------------------------------------


class RankError(RuntimeError):
    """The traceback of an exception raised in another rank: the cause of that exception when it
    is raised again here."""

    def __init__(self, index: int, text: str):
        super().__init__(index, text)
        self.index, self.text = index, text

    def __str__(self) -> str:
        return f"in rank {self.index}:\n{self.text}"


def _rank_main(job, rank: Rank, env: Mapping[str, str], results) -> None:
    """Entry point of a spawned rank: set its environment, run the job, report the outcome."""
    os.environ.update(env)
    try:
        outcome = (rank.index, job(rank), None, "")
    except BaseException as err:  # reported to the parent, which raises it again
        outcome = (rank.index, None, err, "".join(traceback.format_exception(err)))
    try:
        results.put(outcome)
    except Exception:  # an exception that does not pickle: its text goes instead
        index, _, err, text = outcome
        results.put((index, None, RuntimeError(f"{type(err).__name__}: {err}"), text))


def spawn(job: Callable[[Rank], Any], envs: list[dict[str, str]], devices: list[Any]) -> Any:
    """Run `job(Rank(i, n, devices[i]))` in `n` fresh processes (`envs[i]` added to each one's
    environment before the job starts, e.g. the GPU it sees); return the merged files of whichever
    rank merged. If a rank fails, the others are stopped and its exception is raised here."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    count = len(envs)
    processes = [
        context.Process(
            target=_rank_main,
            args=(job, Rank(i, count, devices[i]), envs[i], results),
            name=f"zoobot-rank-{i}",
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()
    outcomes: dict[int, Any] = {}
    try:
        while len(outcomes) < count:
            try:
                index, value, error, text = results.get(timeout=1.0)
            except Exception:  # queue.Empty: check for ranks that died without reporting
                dead = [
                    i for i, p in enumerate(processes) if i not in outcomes and not p.is_alive()
                ]
                if dead and results.empty():
                    code = processes[dead[0]].exitcode
                    raise RuntimeError(f"rank {dead[0]} exited with code {code}") from None
                continue
            if error is not None:
                raise error from RankError(index, text)
            outcomes[index] = value
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    merged = [v for v in outcomes.values() if not isinstance(v, PendingRun)]
    return merged[0] if merged else outcomes[0]
