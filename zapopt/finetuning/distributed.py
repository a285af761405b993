"""One process or many: the same fine-tuning code under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and the rendezvous
address; :func:`start` then joins the process group (NCCL when the ranks have GPUs, gloo
on CPU). Without those variables everything runs in this process with ``world == 1``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zapopt.errors import ZapoptError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, the model and the report, and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def _device(choice: str, local_rank: int) -> torch.device:
    if choice not in DEVICES:
        raise ZapoptError(f"device must be one of {', '.join(DEVICES)}, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ZapoptError("--device cuda but torch sees no GPU; use --device cpu")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def start(device: str = "auto") -> Ranks:
    """Join the ``torchrun`` process group if there is one; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = _device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Ranks(rank=rank, world=world, device=chosen)


def stop(ranks: Ranks) -> None:
    """Leave the process group (a no-op for one process)."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
