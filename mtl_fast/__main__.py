import sys

from mtl_fast.tools.cli import main

sys.exit(main())
