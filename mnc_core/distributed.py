"""Data-parallel training over several processes, GPUs or machines with torch.distributed.

`train_model` runs unchanged under ``torchrun``: torchrun sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` (and the rendezvous address) in each process's environment; this module reads them,
opens the default process group (``nccl`` on CUDA, each process on ``cuda:LOCAL_RANK``; ``gloo`` on a
CPU), and gives the few collectives the training loop needs. Without those variables (or with
``WORLD_SIZE=1``) everything is a single process and no process group is made.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``world_size`` processes, this one is ``rank`` (global) and
    ``local_rank`` (on its machine). Rank 0 is the main process: it alone logs, saves and records."""
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    under_torchrun: bool = False  # started by torchrun: a process group even for one process (a DDP smoke run)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.under_torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def from_env() -> Distributed:
    """The job as torchrun describes it in the environment (a single process without torchrun)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent torchrun environment: WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}")
    return Distributed(world, rank, local, under_torchrun="TORCHELASTIC_RUN_ID" in os.environ)


def resolve_device(device: str | None, job: Distributed) -> torch.device:
    """The training device: ``device`` (default cuda when available, else cpu); under torchrun with
    CUDA each process takes the GPU of its LOCAL_RANK (``--device cuda`` or the default)."""
    wanted = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not job.enabled or wanted.type != "cuda":
        return wanted
    if wanted.index is not None and wanted.index != job.local_rank:
        raise ValueError(f"under torchrun each process uses the GPU of its LOCAL_RANK ({job.local_rank} here), "
                         f"not {device}: pass --device cuda (or leave it out)")
    if job.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {job.local_rank} but this machine has {torch.cuda.device_count()} GPU(s): "
                         "start at most that many processes per machine (--nproc_per_node)")
    return torch.device("cuda", job.local_rank)


@contextmanager
def process_group(job: Distributed, device: torch.device) -> Iterator[Distributed]:
    """Open the default process group for ``job`` (rendezvous from torchrun's environment) and destroy
    it on leaving; nothing for a single process, and a group that the caller opened is left to it."""
    if not job.enabled or dist.is_initialized():
        yield job
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield job
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, job: Distributed, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel over the trainable parameters (frozen ones are skipped by DDP, so a
    frozen backbone works); rank 0's parameters and buffers are copied to every process here, so the
    processes may build or load the model differently. The model itself for a single process.
    find_unused_parameters: only for a model whose steps may leave a trainable parameter without a
    gradient (DDP then walks the graph after every forward to find them; without it, such a step fails
    at the next forward)."""
    if not job.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # MobileNetV2's depthwise (C, 1, 3, 3) weights get gradients whose size-1 dim has another (equivalent)
    # stride than the bucket view; DDP copies them and warns once per process: noise in the run's log
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None,
                                   find_unused_parameters=find_unused_parameters)


def mean(values: torch.Tensor, job: Distributed) -> torch.Tensor:
    """The mean of ``values`` over the processes (a copy; the values themselves for one process)."""
    if not job.enabled:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / job.world_size


def from_main(flag: bool, job: Distributed, device: torch.device) -> bool:
    """Rank 0's ``flag`` in every process (e.g. "stop": only rank 0 reads the run's state)."""
    if not job.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def check_same(value: object, job: Distributed, what: str) -> None:
    """Raise ValueError in every process unless all processes pass an equal ``value`` (picklable)."""
    if not job.enabled:
        return
    values: list[object] = [None] * job.world_size
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise ValueError(f"the processes disagree on {what} ({shown}): every process must train on the same data")


def barrier(job: Distributed) -> None:
    if job.enabled and dist.is_initialized():
        dist.barrier()
