"""The constructor the distributed forms of the single-process strategies share."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.distributed as dist

from mtl_fast.distributed._comm import Communicator


class OverRanks:
    """A single-process strategy's constructor (``*args``, ``**kwargs``, passed on unchanged),
    plus ``group`` (the process group), ``comm`` (a :class:`Communicator`, which ``group`` is
    then ignored for), ``module`` (the model, if wrapped in DistributedDataParallel) and
    ``broadcast`` (copy rank 0's parameters to every rank), handed to :meth:`_distribute` once
    the strategy is built."""

    def __init__(
        self,
        *args: Any,
        group: dist.ProcessGroup | None = None,
        comm: Communicator | None = None,
        module: torch.nn.Module | None = None,
        broadcast: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._distribute(comm if comm is not None else Communicator(group), module, broadcast)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The subclass's runtime signature (``help()``, :func:`inspect.signature`): its
        strategy's constructor, every keyword spelled, then ``group``, ``comm``, ``module`` and
        ``broadcast``. A class whose strategy is not known yet (a mixin) keeps ``*args``."""
        super().__init_subclass__(**kwargs)
        strategy = inspect.signature(super().__init__)
        params = list(strategy.parameters.values())[1:]  # without self
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            return
        own = inspect.signature(OverRanks.__init__).parameters.values()
        extra = [p for p in own if p.kind is p.KEYWORD_ONLY]
        cls.__signature__ = strategy.replace(parameters=params + extra)  # type: ignore[attr-defined]

    def _distribute(self, comm: Communicator, module: Any, broadcast: bool) -> None:
        """Join the ranks: keep ``comm``, check that they agree, broadcast the parameters."""
        raise NotImplementedError
