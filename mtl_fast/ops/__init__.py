"""The public ops: validate the arguments, then run the backend that :mod:`mtl_fast._core.dispatch`
picks. Each is re-exported at the top level (``mtl_fast.gram``, ...)."""

from mtl_fast.ops import aggregators
from mtl_fast.ops.aggregators import *  # noqa: F403 (the Gram-space aggregators: aggregators.__all__)
from mtl_fast.ops.combine import combine
from mtl_fast.ops.combine_adam import combine_adam
from mtl_fast.ops.dual_cone import dual_cone_projection
from mtl_fast.ops.dual_cone_weights import dualproj_weights, upgrad_weights
from mtl_fast.ops.gram import gram
from mtl_fast.ops.min_norm import min_norm

__all__ = [
    "combine",
    "combine_adam",
    "dual_cone_projection",
    "dualproj_weights",
    "gram",
    "min_norm",
    "upgrad_weights",
]
__all__ += aggregators.__all__
