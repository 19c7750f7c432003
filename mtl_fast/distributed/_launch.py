"""Starting under ``torchrun``: the environment it sets, and the process group from it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """Where this process stands: its rank, the world size, its rank on this machine, and the
    backend of the process group."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes outputs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (or anything setting RANK, WORLD_SIZE and LOCAL_RANK) started us."""
    return all(v in os.environ for v in TORCHRUN_VARIABLES)


def init_from_env(device: str = "cpu", backend: str | None = None) -> Launch:
    """Initialise the default process group from torchrun's variables (once; a later call
    returns the existing one): NCCL for a CUDA ``device`` (which becomes ``cuda:LOCAL_RANK``),
    gloo otherwise, unless ``backend`` says.

    Raises:
        RuntimeError: when RANK, WORLD_SIZE or LOCAL_RANK is missing.
    """
    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise RuntimeError(f"not started by torchrun: {', '.join(missing)} not set")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.device(device).type == "cuda"
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Launch(dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()))
