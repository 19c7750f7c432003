"""``distribute(strategy)``: the distributed form of any single-process strategy."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from mtl_fast.distributed._comm import Communicator
from mtl_fast.distributed._feature_strategy import (
    DistributedLinearScalarization,
    DistributedMGDAUB,
)
from mtl_fast.distributed._gram_strategy import DistributedGramStrategy
from mtl_fast.distributed._sequential import (
    DistributedPerTaskUpdates,
    DistributedSelectiveTaskGroupUpdates,
    _DistributedSequential,
)
from mtl_fast.distributed._sharded_adam import ShardedAdam
from mtl_fast.distributed._weighting import weighting_of
from mtl_fast.strategies import (
    MGDA,
    MGDAUB,
    CombineStrategy,
    DualConeStrategy,
    GramAggregator,
    LinearScalarization,
    PerTaskUpdates,
    SelectiveTaskGroupUpdates,
    Strategy,
)

_SEQUENTIAL: dict[type, type] = {
    PerTaskUpdates: DistributedPerTaskUpdates,
    SelectiveTaskGroupUpdates: DistributedSelectiveTaskGroupUpdates,
}


def constructor_arguments(values: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """The arguments of ``cls``'s constructor by name (its spelled signature: every keyword of
    its groups too), read back from ``values`` (a strategy's attributes of the same names)."""
    return {name: values[name] for name in inspect.signature(cls).parameters if name in values}


def distribute(
    strategy: Strategy,
    *,
    group: dist.ProcessGroup | None = None,
    module: torch.nn.Module | None = None,
    exchange: str = "reduce_scatter",
    optimizer: ShardedAdam | None = None,
    reduce_scatter: str = "auto",
    broadcast: bool = True,
) -> Strategy:
    """The data-parallel form of a single-process strategy, exact: a step on W ranks equals the
    single-process step on the concatenated batch (equal shares, losses that are batch means).

    - :class:`~mtl_fast.strategies.MGDA`, UPGrad, DualProj (and any Gram-space weighting):
      a new :class:`DistributedGramStrategy` with the method's weighting (the given strategy
      keeps supplying it: its normalisation, preference, solver options);
    - MGDA-UB: a new :class:`DistributedMGDAUB`; linear scalarisation: a new
      :class:`DistributedLinearScalarization`;
    - PerTaskUpdates, SelectiveTaskGroupUpdates: the strategy itself, turned in place into its
      distributed class (its optimizers, random state and affinity are kept).

    Every rank must call this with the same strategy (checked: the task count, the number of
    shared scalars, and for the sequential ones the random state). Rank 0's parameters are
    copied to every rank unless ``broadcast=False``.

    Args:
        strategy: the single-process strategy.
        group: the process group (default: the default group, which must be initialised).
        module: the model, when it is wrapped in DistributedDataParallel (FSDP is refused).
        exchange, optimizer, reduce_scatter: of :class:`DistributedGramStrategy` (Gram-space
            methods only).
        broadcast: copy rank 0's parameters to every rank now.
    """
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a mtl_fast strategy, got {type(strategy).__name__}")
    gram_only = exchange != "reduce_scatter" or optimizer is not None
    # A ShardedAdam's all-gathers are the step's too: one communicator, one log.
    comm = (
        optimizer.comm
        if optimizer is not None
        else Communicator(group, reduce_scatter=reduce_scatter)
    )
    if isinstance(strategy, _DistributedSequential):
        raise ValueError("strategy is already distributed")
    seq = _SEQUENTIAL.get(type(strategy))
    if seq is not None:
        if gram_only:
            raise ValueError("exchange and optimizer apply to the Gram-space methods only")
        strategy.__class__ = seq
        strategy._distribute(comm, module, broadcast)  # type: ignore[attr-defined]
        return strategy
    # The strategy's constructor arguments, read back from its attributes of the same names.
    options = vars(strategy)
    if isinstance(strategy, MGDAUB):
        if gram_only:
            raise ValueError("exchange and optimizer apply to the Gram-space methods only")
        return DistributedMGDAUB(
            **constructor_arguments(options, MGDAUB), comm=comm, module=module, broadcast=broadcast
        )
    if isinstance(strategy, LinearScalarization) and not gram_only:
        return DistributedLinearScalarization(
            **constructor_arguments(options, LinearScalarization),
            comm=comm,
            module=module,
            broadcast=broadcast,
        )
    if isinstance(strategy, (MGDA, DualConeStrategy, GramAggregator, LinearScalarization)):
        return DistributedGramStrategy(
            **constructor_arguments(options, CombineStrategy),
            weighting=weighting_of(strategy),
            comm=comm,
            module=module,
            exchange=exchange,
            optimizer=optimizer,
            broadcast=broadcast,
        )
    raise TypeError(f"strategy: no distributed form of {type(strategy).__name__}")
