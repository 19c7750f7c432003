"""The public ops: validate the arguments, then run the backend that :mod:`mtl_fast._core.dispatch`
picks. Each is re-exported at the top level (``mtl_fast.gram``, ...)."""

from mtl_fast.ops.combine import combine
from mtl_fast.ops.combine_adam import combine_adam
from mtl_fast.ops.gram import gram
from mtl_fast.ops.min_norm import min_norm

__all__ = ["combine", "combine_adam", "gram", "min_norm"]
