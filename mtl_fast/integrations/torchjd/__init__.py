"""TorchJD on mtl_fast's solvers: change one import, keep the rest of the TorchJD code.

``mtl_fast.integrations.torchjd`` holds TorchJD (≥ 0.18) classes with TorchJD's names,
constructor arguments and semantics, whose solver is mtl_fast's (the compiled CPU library on CPU
tensors, a Triton kernel on a GPU, no host round trip)::

    # from torchjd.aggregation import UPGrad, MGDAWeighting, CAGradWeighting
    from mtl_fast.integrations.torchjd import UPGrad, MGDAWeighting, CAGradWeighting

- MGDA, UPGrad, DualProj (:mod:`._solvers`): :class:`MGDAWeighting`, :class:`UPGradWeighting`,
  :class:`DualProjWeighting`, the aggregators :class:`UPGrad` and :class:`DualProj`, and
  :class:`Projector`, a ``torchjd.linalg.DualConeProjector``;
- the Gram-space aggregators (:mod:`._aggregators`): :class:`PCGradWeighting`,
  :class:`IMTLGWeighting`, :class:`CAGradWeighting`, :class:`AlignedMTLWeighting`,
  :class:`ConFIGWeighting` / :class:`ConFIG`, :class:`NashMTLWeighting` / :class:`NashMTL`.

How each maps to TorchJD's class and how close the weights are: docs/integrations.md,
docs/upgrad.md and docs/aggregators.md. Importing this package without TorchJD raises an
ImportError that says how to install it (``pip install 'mtl-fast[peers]'``).
"""

from __future__ import annotations

try:
    import torchjd.aggregation
    import torchjd.linalg  # noqa: F401
    from torchjd import Stateful  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a test that hides torchjd
    raise ImportError(
        "mtl_fast.integrations.torchjd needs TorchJD ≥ 0.18 (torchjd.aggregation, torchjd.linalg "
        f"and torchjd.Stateful), which could not be imported ({exc}); install it with: "
        "pip install 'mtl-fast[peers]'"
    ) from exc

from mtl_fast.integrations.torchjd._aggregators import (
    AlignedMTLWeighting,
    CAGradWeighting,
    ConFIG,
    ConFIGWeighting,
    IMTLGWeighting,
    NashMTL,
    NashMTLWeighting,
    PCGradWeighting,
)
from mtl_fast.integrations.torchjd._solvers import (
    DualProj,
    DualProjWeighting,
    MGDAWeighting,
    Projector,
    UPGrad,
    UPGradWeighting,
)

__all__ = [
    "AlignedMTLWeighting",
    "CAGradWeighting",
    "ConFIG",
    "ConFIGWeighting",
    "DualProj",
    "DualProjWeighting",
    "IMTLGWeighting",
    "MGDAWeighting",
    "NashMTL",
    "NashMTLWeighting",
    "PCGradWeighting",
    "Projector",
    "UPGrad",
    "UPGradWeighting",
]
