"""Collection rules for the doctests under mtl_fast/ (pytest's testpaths include the package)."""

from __future__ import annotations

import importlib.util

# Modules whose import needs an optional peer: their doctests are collected only where it is
# installed, so `pip install -e ".[test]" && pytest` stays green without the [peers] extra.
_NEEDS = {"mtl_fast/integrations/torchjd": "torchjd"}

collect_ignore = [
    path for path, module in _NEEDS.items() if importlib.util.find_spec(module) is None
]
