"""The processes of a training run: one, or one per device under torchrun (both trainers use this).

Under torchrun every process reads its place from ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``; without
``RANK`` the run is one process. Use::

    context = DistributedContext.from_environment(config.device)  # reads, checks, changes nothing
    ...  # the trainer's own checks of context.world_size
    context.start(config.threads)  # GPU of the rank, process group (NCCL on GPUs, gloo on CPU), threads
    try:
        ...
    finally:
        context.stop(barrier=...)  # threads back, leave the process group together

Settings that count over all processes (the 3D trainer's ``grad_accum``, the CLIPSeg trainer's
``batch_size``) are divided by the world size at start-up with :func:`split_over_ranks`; when they cannot be
divided, :class:`DistributedConfigError` says so in one line naming the setting and the fix. The entry points
check this before training starts and print it from rank 0 only (exit status 2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .config import DistributedConfigError, split_over_ranks

__all__ = ["DistributedConfigError", "DistributedContext", "split_over_ranks", "world_size_from_environment"]


def _environment_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedConfigError(f"{name}={raw!r} must be an integer (torchrun sets it)") from None


def world_size_from_environment() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's variables (``(0, 0, 1)`` without them), checked.

    Raises:
        DistributedConfigError: a variable is not an integer or out of range.
    """
    rank = _environment_int("RANK", 0)
    local_rank = _environment_int("LOCAL_RANK", 0)
    world_size = _environment_int("WORLD_SIZE", 1)
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank <= rank:
        raise DistributedConfigError(
            f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size} are inconsistent: launch with "
            "torchrun (which sets them) or unset them for one process"
        )
    return rank, local_rank, world_size


@dataclass
class DistributedContext:
    """Where this process stands in the run, and the device it trains on.

    Attributes:
        ddp: launched by torchrun (``RANK`` is set): gradients and metrics are synchronised across ranks.
        rank: global rank (0 in one process).
        local_rank: rank on this node; the index of its GPU.
        world_size: number of processes.
        device: ``cuda:<local_rank>`` or ``cpu``.
    """

    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    _previous_threads: int | None = field(default=None, repr=False, compare=False)

    @property
    def is_master(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def use_cuda(self) -> bool:
        """Whether the process trains on a GPU."""
        return self.device.type == "cuda"

    @classmethod
    def from_environment(cls, device: str) -> DistributedContext:
        """Read torchrun's variables and choose the device (``auto``, ``cpu`` or ``cuda``); no side effects.

        Raises:
            DistributedConfigError (a ``RuntimeError`` and a ``ConfigError``): ``device`` is ``cuda`` and CUDA
                is not available; this node has fewer GPUs than its processes; torchrun's variables are
                inconsistent.
        """
        ddp = os.environ.get("RANK", "") not in ("", "-1")
        rank, local_rank, world_size = world_size_from_environment() if ddp else (0, 0, 1)
        if device == "cuda" and not torch.cuda.is_available():
            raise DistributedConfigError(
                "device=cuda but CUDA is not available; use device=auto or device=cpu"
            )
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and local_rank >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DistributedConfigError(
                f"LOCAL_RANK={local_rank} needs GPU {local_rank} but this node has {count}: run torchrun "
                f"with --nproc_per_node={count} (or fewer), or set device=cpu"
            )
        return cls(
            ddp=ddp,
            rank=rank,
            local_rank=local_rank,
            world_size=world_size,
            device=torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"),
        )

    def start(self, threads: int | None = None) -> None:
        """Select the rank's GPU, join the process group (torchrun) and set ``threads`` (0 or None: keep)."""
        if self.use_cuda:
            torch.cuda.set_device(self.device)
        if self.ddp and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.use_cuda else "gloo")
        self._previous_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)

    def stop(self, barrier: bool = True) -> None:
        """Restore the thread count and leave the process group (after a barrier when ``barrier``).

        Free what holds the process group (the DDP wrapper) first: a process group torn down after a peer
        has exited can wait for it forever.
        """
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
        if self.ddp and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` in one process); every rank must call it."""
        if not self.ddp:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace ``tensor`` by its mean over the ranks, in place (unchanged in one process); returns it."""
        if self.ddp:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor
