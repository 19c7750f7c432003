import sys

from mtl_fast.cli import main

sys.exit(main())
