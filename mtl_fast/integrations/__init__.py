"""Adapters that plug mtl_fast's solvers into other libraries.

Each subpackage imports its library and fails with an ``ImportError`` that says how to install it
when the library is missing; ``import mtl_fast`` never imports them.

- :mod:`mtl_fast.integrations.torchjd` — TorchJD's MGDA, UPGrad, DualProj, PCGrad, IMTL-G,
  CAGrad, Aligned-MTL, ConFIG and Nash-MTL weightings and aggregators on mtl_fast's solvers
  (needs TorchJD: ``pip install 'mtl-fast[peers]'``).
"""
