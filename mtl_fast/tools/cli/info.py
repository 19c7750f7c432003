"""``mtl-fast info``: versions, backends and devices."""

from __future__ import annotations

import argparse
import platform

import torch

NAME = "info"
HELP = "print versions, available backends (and why others are missing) and devices"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    import mtl_fast

    print(f"mtl_fast {mtl_fast.__version__}")
    print(f"python   {platform.python_version()} ({platform.machine()})")
    print(f"torch    {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")
    try:
        import triton

        print(f"triton   {triton.__version__}")
    except ImportError:
        print("triton   not installed")
    print("backends:")
    for status in mtl_fast.backends().values():
        if status.available:
            print(f"  {status.name:<10} available  ops: {', '.join(status.ops)}")
        else:
            print(f"  {status.name:<10} missing    {status.reason}")
    print("devices:")
    print(
        f"  cpu        {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            print(
                f"  cuda:{i}     {prop.name}, {prop.total_memory / 2**30:.0f} GiB, sm_{prop.major}{prop.minor}"
            )
    else:
        print("  cuda       none visible")
    return 0
