"""Several worker processes under `predict` / `get_representations` with TensorFlow / Keras.

One worker per device on this machine (`devices=N`: N fresh processes, each seeing one GPU, or on
a CPU each with its share of the cores), or this process as one worker of a cluster: a worker of
`TF_CONFIG` (the workers `tf.distribute.MultiWorkerMirroredStrategy` runs on; such a strategy may
be passed as `strategy`) or a task of a SLURM job step started with `srun`. Each worker computes
its share of the run's chunks into the same parts folder (`zoobot.models.distributed`). The workers
need no collective operations (and so no strategy built before TensorFlow starts): the last to
finish merges the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from zoobot.models.distributed import Launch, Rank, slurm_step_tasks, spawn
from zoobot.models.runner import clear_parts

STRATEGIES = ("auto", "workers", "multi_worker")


def _tf_config_worker(config: dict) -> tuple[int, int] | None:
    """(index, count) of this task among the chief and workers of a `TF_CONFIG`, or None."""
    cluster, task = config.get("cluster", {}), config.get("task", {})
    members = [("chief", i) for i in range(len(cluster.get("chief", [])))]
    members += [("worker", i) for i in range(len(cluster.get("worker", [])))]
    me = (task.get("type"), int(task.get("index", 0)))
    if len(members) < 2 or me not in members:
        return None
    return members.index(me), len(members)


def cluster_rank(strategy: Any, env=None) -> Rank | None:
    """This process's rank among the workers of a cluster (see the module docstring), or None when
    it is not one of several."""
    env = os.environ if env is None else env
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None:
        spec = resolver.cluster_spec().as_dict()
        config = {"cluster": spec, "task": {"type": resolver.task_type, "index": resolver.task_id}}
        found = _tf_config_worker(config)
    elif env.get("TF_CONFIG"):
        found = _tf_config_worker(json.loads(env["TF_CONFIG"]))
    else:
        found = None
    if found is not None:
        return Rank(*found)
    tasks = slurm_step_tasks(env)
    if tasks is not None:
        return Rank(
            int(env["SLURM_PROCID"]), tasks, _slurm_device(int(env.get("SLURM_LOCALID", 0)))
        )
    if strategy == "multi_worker":
        raise ValueError(
            "strategy='multi_worker' needs TF_CONFIG (or a SLURM job step) describing the workers"
        )
    return None


def _slurm_device(local_id: int) -> str | None:
    """The GPU of a SLURM task: each its own when the tasks of a node see several, else TF's."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"/GPU:{local_id % len(gpus)}" if len(gpus) > 1 else None


def _workers(devices: int | str) -> tuple[list[dict[str, str]], list[Any]]:
    """(environment, device) of each local worker: one per GPU, or `devices` on the CPU sharing its
    cores (intra-op threads)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if devices == "auto":
        devices = max(1, len(gpus))
    if gpus:
        if devices > len(gpus):
            raise ValueError(f"devices={devices}, but TensorFlow sees {len(gpus)} GPU(s)")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(len(gpus))]
        return [{"CUDA_VISIBLE_DEVICES": ids[i]} for i in range(devices)], ["/GPU:0"] * devices
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = str(max(1, (cpus or 1) // devices))
    env = {"CUDA_VISIBLE_DEVICES": "", "TF_NUM_INTRAOP_THREADS": threads}
    return [dict(env) for _ in range(devices)], [None] * devices


def launch(job, launch: Launch) -> Any:
    """Run `job(rank)` in this process, as one worker of a cluster, or in one fresh worker process
    per device (see the module docstring); return the merged files, or this worker's `PendingRun`
    when another merges."""
    strategy = launch.strategy
    if isinstance(strategy, str) and strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)} or a tf.distribute strategy")
    rank = None if strategy == "workers" else cluster_rank(strategy)
    if rank is not None:
        return job(rank)
    if launch.nodes > 1:
        raise ValueError("nodes > 1: start one worker per node with TF_CONFIG or srun")
    if launch.devices == 1:
        return job(Rank())
    envs, devices = _workers(launch.devices)
    if len(envs) == 1:
        return job(Rank(device=devices[0]))
    settings = job.settings
    if not settings.resume:
        clear_parts(Path(f"{job.save_loc}.parts"))
        job = dataclasses.replace(job, settings=dataclasses.replace(settings, resume=True))
    with tempfile.TemporaryDirectory(prefix="zoobot-model-") as folder:
        if not isinstance(job.model, str | os.PathLike):
            from zoobot.models.pretrained import save_pretrained
            from zoobot.tf.backend import BACKEND

            save_pretrained(BACKEND, job.model, Path(folder) / "model")
            job = dataclasses.replace(job, model=Path(folder) / "model")
        return spawn(job, envs, devices)
