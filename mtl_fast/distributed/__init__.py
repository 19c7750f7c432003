"""Multi-task strategies over ``torch.distributed``: data parallelism that keeps every method
exact (docs/distributed.md).

The per-task gradients of a step are the ranks' mean, G = (1/W) Σ_r G_r, and a Gram-space method
needs K = G Gᵀ, which the mean of the per-rank Grams is not. :class:`DistributedGramStrategy`
reduce-scatters the (T, P) arena over P, all-reduces the T×T partial Grams of the shards,
solves the same problem on every rank and combines on the shard (then all-gathers the direction,
or steps a :class:`ShardedAdam` and all-gathers the parameters): (T + 1)/2 gradient all-reduces
of traffic. MGDA-UB needs one T×T all-reduce; the sequential strategies average each group's
gradient and agree on every decision. :func:`distribute` turns any single-process strategy into
its distributed form.

Layer: may import ``_core``, ``ops``, ``optim``, ``strategies`` and ``diagnostics``.
"""

from mtl_fast.distributed._comm import CommLog, CommRecord, Communicator, sent_per_rank
from mtl_fast.distributed._distribute import distribute
from mtl_fast.distributed._feature_strategy import (
    DistributedLinearScalarization,
    DistributedMGDAUB,
)
from mtl_fast.distributed._grads import (
    all_reduce_grads,
    broadcast_parameters,
    parameters_agree,
)
from mtl_fast.distributed._gram_strategy import EXCHANGES, DistributedGramStrategy
from mtl_fast.distributed._launch import Launch, init_from_env, launched_by_torchrun
from mtl_fast.distributed._layout import ShardLayout
from mtl_fast.distributed._module import FSDP_REASON, check_module
from mtl_fast.distributed._sequential import (
    DistributedPerTaskUpdates,
    DistributedSelectiveTaskGroupUpdates,
    ReducingArena,
)
from mtl_fast.distributed._sharded_adam import ShardedAdam, flatten_padded
from mtl_fast.distributed._weighting import Weighting, fixed, from_weights, weighting_of

__all__ = [
    "EXCHANGES",
    "FSDP_REASON",
    "CommLog",
    "CommRecord",
    "Communicator",
    "DistributedGramStrategy",
    "DistributedLinearScalarization",
    "DistributedMGDAUB",
    "DistributedPerTaskUpdates",
    "DistributedSelectiveTaskGroupUpdates",
    "Launch",
    "ReducingArena",
    "ShardLayout",
    "ShardedAdam",
    "Weighting",
    "all_reduce_grads",
    "broadcast_parameters",
    "check_module",
    "distribute",
    "fixed",
    "flatten_padded",
    "from_weights",
    "init_from_env",
    "launched_by_torchrun",
    "parameters_agree",
    "sent_per_rank",
    "weighting_of",
]
