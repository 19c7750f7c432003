"""``python -m mtl_fast.cuda [--verbose]``: compile, link and load the CUDA extension now."""

from mtl_fast.cuda._build import main

raise SystemExit(main())
