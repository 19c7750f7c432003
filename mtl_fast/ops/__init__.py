"""The public ops: validate the arguments, then run the backend that :mod:`mtl_fast._core.dispatch`
picks. Each is re-exported at the top level (``mtl_fast.gram``, ...)."""

from mtl_fast.ops.aggregators import (
    NashMTLStep,
    aligned_mtl_weights,
    cagrad_weights,
    config_weights,
    imtlg_weights,
    nash_mtl_clip,
    nash_mtl_solve,
    nash_mtl_step,
    nash_mtl_weights,
    pcgrad_order,
    pcgrad_weights,
)
from mtl_fast.ops.combine import combine
from mtl_fast.ops.combine_adam import combine_adam
from mtl_fast.ops.dual_cone import dual_cone_projection
from mtl_fast.ops.dual_cone_weights import dualproj_weights, upgrad_weights
from mtl_fast.ops.gram import gram
from mtl_fast.ops.min_norm import min_norm

__all__ = [
    "NashMTLStep",
    "aligned_mtl_weights",
    "cagrad_weights",
    "combine",
    "combine_adam",
    "config_weights",
    "dual_cone_projection",
    "dualproj_weights",
    "gram",
    "imtlg_weights",
    "min_norm",
    "nash_mtl_clip",
    "nash_mtl_solve",
    "nash_mtl_step",
    "nash_mtl_weights",
    "pcgrad_order",
    "pcgrad_weights",
    "upgrad_weights",
]
