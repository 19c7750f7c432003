"""``python -m mtl_fast.kernels.cuda [--verbose]``: compile, link and load the CUDA extension now."""

from mtl_fast.kernels.cuda.build import main

if __name__ == "__main__":
    raise SystemExit(main())
