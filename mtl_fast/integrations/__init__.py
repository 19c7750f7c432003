"""Adapters that plug mtl_fast's solvers into other libraries.

Each submodule imports its library and fails with an ``ImportError`` that says how to install it
when the library is missing; ``import mtl_fast`` never imports them.

- :mod:`mtl_fast.integrations.torchjd` — a TorchJD ``DualConeProjector`` and TorchJD's
  UPGrad / DualProj weightings and aggregators on mtl_fast's dual-cone solver.
"""
