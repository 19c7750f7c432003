"""Build settings of the compiled CPU library, in one place for setup.py and the loader.

Standard library only, and no import of the package: setup.py loads this file by its path, before
the package being built can be imported.
"""

from __future__ import annotations

# The optional extension setup.py builds; the loader looks for ``LIBRARY_STEM`` + the platform's
# extension-module suffix next to mtl_fast/kernels/cpu/__init__.py.
LIBRARY_MODULE = "mtl_fast.kernels.cpu._lib"
LIBRARY_STEM = "_lib"

SOURCE_DIR = "csrc/cpu"  # relative to the top of a source checkout or sdist
SOURCES = ("min_norm.cpp", "dual_cone.cpp", "dense.cpp", "aggregators.cpp")

# -O3 and no -march: the library must run on any CPU of its platform (a wheel travels).
CXX_FLAGS = ("-O3", "-std=c++17")
MSVC_FLAGS = ("/O2", "/std:c++17")
