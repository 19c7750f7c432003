"""mtl_fast: fused kernels for multi-task-learning gradient combination.

Public API (tensor inputs positional, hyperparameters keyword-only):

- :func:`gram` — K = J Jᵀ of per-task gradients (flat or per-parameter);
- :func:`min_norm` — batched MGDA min-norm weights on the simplex;
- :func:`dual_cone_projection` — batched projection onto the dual cone of the task gradients
  (the QP of UPGrad and DualProj, TorchJD's ``DualConeProjector``);
- :func:`upgrad_weights`, :func:`dualproj_weights` — UPGrad and DualProj weights from a Gram;
- :func:`combine` — d = Σ_t w_t J_t;
- :func:`combine_adam` — combine and one Adam step, fused;
- Gram-space aggregators, K → task coefficients c (batched, sync-free): :func:`pcgrad_weights`,
  :func:`imtlg_weights`, :func:`cagrad_weights`, :func:`nash_mtl_weights` (stateful:
  :func:`nash_mtl_step`), :func:`aligned_mtl_weights`, :func:`config_weights`;
- :class:`MultiAdam` — Adam with one state per task for shared parameters;
- :class:`TaskGradients` — the (T, P) gradient arena autograd writes into;
- :func:`backends` — which backends exist here, and why the others do not.

Every entry point checks all of its arguments before it touches any state, and refuses bad ones
with a ``ValueError`` or ``TypeError`` (or :class:`NonFiniteError`, :class:`LayoutError`, both
``ValueError``) that names the argument.

Every op takes ``backend="auto" | "reference" | "triton" | "cuda" | "cpu"``;
``MTL_FAST_BACKEND`` sets the default. ``import mtl_fast`` needs neither a GPU, nor Triton, nor a
compiler.
"""

from mtl_fast import _aliases, ops
from mtl_fast._core.dispatch import BackendStatus, BackendUnavailableError, backends
from mtl_fast._core.flat import flatten_parameters
from mtl_fast._core.validate import LayoutError, NonFiniteError
from mtl_fast._version import __version__
from mtl_fast.ops import *  # noqa: F403 (the public ops: the names of ops.__all__)
from mtl_fast.ops.aggregators import *  # noqa: F403 (in ops.__all__ too; said again for mypy)
from mtl_fast.optim import MultiAdam, TaskGradients

_aliases.install()

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "LayoutError",
    "MultiAdam",
    "NonFiniteError",
    "TaskGradients",
    "__version__",
    "backends",
    "flatten_parameters",
]
__all__ += ops.__all__
