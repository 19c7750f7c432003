"""Multi-task training strategies that plug into an existing PyTorch training loop.

Two shapes:

- *combine-then-step* (:class:`LinearScalarization`, :class:`MGDA`, :class:`MGDAUB`,
  :class:`UPGrad`, :class:`DualProj`, and the Gram-space aggregators :class:`PCGrad`,
  :class:`IMTLG`, :class:`CAGrad`, :class:`NashMTL`, :class:`AlignedMTL`, :class:`ConFIG`):
  ``strategy.backward(losses)`` writes ``.grad`` of Σ_t c_t L_t with the coefficients the
  method chose, then the user's own optimizer steps;
- *sequential-update* (:class:`PerTaskUpdates`, :class:`SelectiveTaskGroupUpdates`):
  ``strategy.step(closure)`` runs several optimizer steps on one batch, calling the closure
  (forward pass → T losses) before each.

Every strategy records its last decision in ``strategy.last`` (:class:`StepRecord`), takes
gradient diagnostics every ``diagnostics_every`` steps, and has ``state_dict()`` /
``load_state_dict()`` for an exact resume.
"""

from mtl_fast.strategies._aggregators import (
    IMTLG,
    AlignedMTL,
    CAGrad,
    ConFIG,
    GramAggregator,
    NashMTL,
    PCGrad,
)
from mtl_fast.strategies._base import StepRecord, Strategy
from mtl_fast.strategies._combine_base import CombineStrategy
from mtl_fast.strategies._dualproj import DualProj
from mtl_fast.strategies._linear import LinearScalarization
from mtl_fast.strategies._mgda import MGDA, normalizers, solve_weights
from mtl_fast.strategies._mgda_ub import MGDAUB
from mtl_fast.strategies._per_task import PerTaskUpdates
from mtl_fast.strategies._sequential import SequentialStrategy
from mtl_fast.strategies._stgu import (
    SelectiveTaskGroupUpdates,
    affinity_groups,
    affinity_update,
    loss_ratios,
)
from mtl_fast.strategies._upgrad import DualConeStrategy, UPGrad

__all__ = [
    "IMTLG",
    "MGDA",
    "MGDAUB",
    "AlignedMTL",
    "CAGrad",
    "CombineStrategy",
    "ConFIG",
    "DualConeStrategy",
    "DualProj",
    "GramAggregator",
    "LinearScalarization",
    "NashMTL",
    "PCGrad",
    "PerTaskUpdates",
    "SelectiveTaskGroupUpdates",
    "SequentialStrategy",
    "StepRecord",
    "Strategy",
    "UPGrad",
    "affinity_groups",
    "affinity_update",
    "loss_ratios",
    "normalizers",
    "solve_weights",
]
