"""``python -m mtl_fast.tools.gpu_report``: see :mod:`mtl_fast.tools.gpu_report._driver`."""

from mtl_fast.tools.gpu_report._driver import main

if __name__ == "__main__":
    raise SystemExit(main())
