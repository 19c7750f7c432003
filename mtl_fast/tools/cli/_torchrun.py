"""Commands started by ``torchrun``: one process group for the run; rank 0 prints and writes."""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from mtl_fast.distributed import Launch, init_from_env, launched_by_torchrun


@contextlib.contextmanager
def torchrun_ranks(args: argparse.Namespace) -> Iterator[Launch | None]:
    """Nothing without torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK). Under torchrun:
    initialise the default process group (gloo on the CPU, NCCL for ``--device cuda``, each
    rank on ``cuda:LOCAL_RANK``); ranks other than 0 run silently and write into a
    temporary folder that is deleted; the group is destroyed at the end."""
    if not launched_by_torchrun():
        yield None
        return
    created = not dist.is_initialized()
    launch = init_from_env(args.device)
    if args.device.startswith("cuda"):
        args.device = f"cuda:{launch.local_rank}"
    try:
        if launch.is_main:
            yield launch
        else:
            with tempfile.TemporaryDirectory() as tmp:
                args.out = Path(tmp)
                args.no_progress = True
                with contextlib.redirect_stdout(io.StringIO()):
                    yield launch
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
