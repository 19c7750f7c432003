"""``python -m mtl_fast.cuda [--verbose]``: compile, link and load the CUDA extension now."""

from mtl_fast.cuda._build import main

if __name__ == "__main__":
    raise SystemExit(main())
