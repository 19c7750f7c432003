"""Optional bridges to other libraries. The core never imports this package.

- :mod:`mtl_fast.integrations.torchjd`: mtl_fast's solvers as TorchJD ``Weighting`` objects
  (needs TorchJD: ``pip install 'mtl-fast[peers]'``), one small class per weighting.
"""
