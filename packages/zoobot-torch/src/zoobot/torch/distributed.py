"""Several processes under `predict` / `get_representations` with PyTorch, started by Lightning.

Lightning Fabric starts one process per device (`strategy="ddp_spawn"`, the default here, works in
scripts, notebooks and the command line alike; `"ddp"` starts them as copies of the command), or
joins the launch that started this process: `torchrun` or SLURM's `srun` with several tasks
(Lightning's cluster environments read their variables; `devices` and `nodes` default to what they
say). Fabric gives each rank its device (`cuda:<local rank>` on GPUs) and a `torch.distributed`
group (NCCL on GPUs, gloo on CPUs), whose barrier lets rank 0 merge once every rank is done and
every rank return the merged files. What each rank computes is `zoobot.models.distributed`.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

from zoobot.models.distributed import Launch, Rank, slurm_step_tasks


def _environment_world() -> tuple[int, int] | None:
    """(processes per node, nodes) of the launch that started this process as one of several
    (`torchrun`, or `srun` with several tasks), or None."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", 1)) > 1:
        world, local = int(env["WORLD_SIZE"]), int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
        return local, max(1, world // local)
    tasks = slurm_step_tasks(env)
    if tasks is not None:
        nodes = int(env.get("SLURM_NNODES", 1))
        return max(1, tasks // nodes), nodes
    return None


def _accelerator(device: Any) -> str:
    """Lightning's accelerator for `predict`'s `device` (None: a GPU if there is one)."""
    if device is None:
        return "auto"
    kind = str(device).split(":")[0].lower()
    return {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "mps": "mps"}.get(kind, "auto")


def _rank_of(fabric) -> Rank:
    return Rank(
        fabric.global_rank,
        fabric.world_size,
        fabric.device,
        barrier=fabric.barrier,
        broadcast=lambda value: fabric.broadcast(value, src=0),
    )


def _run_rank(fabric, job: bytes) -> bytes:
    """What each process Fabric starts runs (a module-level function: spawned processes import it).
    The job and its result travel pickled: Lightning would otherwise walk through them (and refuse
    their frozen dataclasses) to copy their modules and tensors, which pickling does."""
    return pickle.dumps(pickle.loads(job)(_rank_of(fabric)))


def launch(job, launch: Launch) -> Any:
    """Run `job(rank)` in this process, or in every process of the launch (see the module
    docstring); return the merged files (or this rank's `PendingRun` of a catalog slice)."""
    external = _environment_world()
    if launch.single and external is None:
        return job(Rank())
    from lightning_fabric import Fabric

    devices, nodes, strategy = launch.devices, launch.nodes, launch.strategy
    if external is not None and launch.single:
        devices, nodes = external
    if strategy == "auto":
        strategy = "ddp" if external is not None else "ddp_spawn"
    device = getattr(job, "settings", None) and job.settings.device
    fabric = Fabric(
        accelerator=_accelerator(device), devices=devices, num_nodes=nodes, strategy=strategy
    )
    return pickle.loads(fabric.launch(_run_rank, pickle.dumps(job)))
