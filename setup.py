"""Build hook for the optional CUDA C++ extension (csrc/); the pure-Python package needs none.

Everything about the package lives in pyproject.toml. The extension is built only when asked
(MTL_FAST_BUILD_CUDA=1); see mtl_fast/cuda for the just-in-time alternative.
"""

from setuptools import setup

setup()
