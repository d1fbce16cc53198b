"""The few collectives one training run needs when it spans several processes (one per GPU).

GRPO's advantages and DiverseGRPO's creative reward are functions of a whole prompt group, so when a
group's images are sampled by several processes, their rewards and features are gathered before any
of it is computed (`gather`); the LoRA gradients are averaged before each optimizer step (`mean_`), so
that every process takes the same step and the adapters stay equal without a DDP wrapper.

`SingleProcess` is the identity (no torch.distributed at all): a run launched with plain
`python -m diversegrpo.stages.train` is exactly what it was before multi-process training existed.
`TorchDistributed` wraps an initialised default process group; `from_environment` builds it through
`accelerate.PartialState`, which reads the variables `accelerate launch` / torchrun set (RANK,
WORLD_SIZE, MASTER_ADDR, ...) and picks gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from datetime import timedelta

import torch

# How long a process waits in a collective for the others. The main process evaluates the held-out
# prompts alone while the others wait in a barrier (minutes for FLUX at 28 steps); torch's defaults
# (10 min for nccl) would call that a hang.
TIMEOUT = timedelta(hours=2)


def resolve_device(name: str) -> torch.device:
    """config `device`: "auto" is the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Collective(ABC):
    """rank / world_size of this process, and the collectives of a training step."""

    rank: int
    world_size: int
    device: torch.device  # where this process computes (and where nccl wants the tensors it moves)

    @property
    def is_main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0

    @abstractmethod
    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """(world_size * n, ...) every process's (n, ...) tensor, rank by rank, on every process; on t's device."""

    @abstractmethod
    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its average over the processes."""

    @abstractmethod
    def barrier(self) -> None:
        """Return when every process has reached this point."""

    def close(self) -> None:  # noqa: B027 (an optional hook, not abstract: one process has nothing to release)
        """Release the process group (nothing for one process)."""


class SingleProcess(Collective):
    """One process: every collective is the identity, no torch.distributed needed."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.rank, self.world_size, self.device = 0, 1, torch.device(device)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        return None

    def barrier(self) -> None:
        return None


class TorchDistributed(Collective):
    """The default torch.distributed process group, already initialised (by PartialState or a test)."""

    def __init__(self, device: torch.device | str):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError(
                "TorchDistributed needs an initialised process group (torch.distributed.init_process_group)"
            )
        self._dist = dist
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        device = torch.device(device)
        self.device = torch.device("cpu") if device.type == "cpu" else device  # PartialState says cpu:0

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        local = t.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        self._dist.all_gather(parts, local)
        return torch.cat(parts).to(t.device)

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        # One flat buffer per dtype: one all-reduce instead of one per LoRA matrix (hundreds in SD3/FLUX).
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in group])
            self._dist.all_reduce(flat, op=self._dist.ReduceOp.SUM)
            flat /= self.world_size
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t))
                offset += n

    def barrier(self) -> None:
        self._dist.barrier()

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.barrier()  # no process tears the group down while another still uses it
            self._dist.destroy_process_group()


def launched_processes() -> int:
    """WORLD_SIZE as `accelerate launch` / torchrun set it; 1 for a plain `python -m ...`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def from_environment(device: torch.device | str) -> Collective:
    """The collective of this launch: SingleProcess on `device` for a plain start, otherwise the process
    group `accelerate launch` described (gloo when `device` is the CPU, nccl on CUDA; the device is
    then this process's own GPU, cuda:LOCAL_RANK)."""
    device = torch.device(device)
    if launched_processes() == 1:
        return SingleProcess(device)
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu", timeout=TIMEOUT)
    return TorchDistributed(state.device)
