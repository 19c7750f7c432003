"""Adapters that plug mtl_fast's solvers into other libraries.

Each submodule imports its library and fails with an ``ImportError`` that says how to install it
when the library is missing; ``import mtl_fast`` never imports them.

- :mod:`mtl_fast.integrations.torchjd` — TorchJD's MGDA, UPGrad and DualProj weightings and
  aggregators (and a ``DualConeProjector``) on mtl_fast's solvers (needs TorchJD:
  ``pip install 'mtl-fast[peers]'``).
"""
