"""The keyword options that every solver op takes: which backend runs it, whether to check the
input's values and whether it may read a value back to the host. Each op's own group (:class:`~mtl_fast.ops.dual_cone.DualConeKwargs`,
:class:`~mtl_fast.ops.aggregators.CAGradKwargs`, ...) extends these two."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

import torch

from mtl_fast._core.validate import require_optional_bool

H = TypeVar("H")


class BackendKwargs(TypedDict, total=False):
    """``backend``, ``check_finite`` and ``sync_free``, as :class:`BackendOptions` takes them."""

    backend: str | None
    check_finite: bool | None
    sync_free: bool | None


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """``backend``: "auto", "reference", "cpu", ... (None: ``MTL_FAST_BACKEND``, else "auto");
    ``check_finite``: refuse non-finite input, naming the tasks (None: on the CPU only; checked
    where it is used); ``sync_free``: run with no host read-back (None: True on a GPU, False on
    the CPU)."""

    backend: str | None = None
    check_finite: bool | None = None
    sync_free: bool | None = None

    def __post_init__(self) -> None:
        # ``backend`` is checked where it is resolved, ``check_finite`` where it is used.
        require_optional_bool("sync_free", self.sync_free)

    def sync_free_on(self, device: torch.device) -> bool:
        """``sync_free`` for tensors on ``device``."""
        return device.type != "cpu" if self.sync_free is None else bool(self.sync_free)

    def hyper(self, cls: type[H], device: torch.device, **given: Any) -> H:
        """The backend's settings ``cls`` (a dataclass of :mod:`mtl_fast._core.contracts`) for
        tensors on ``device``: each field from ``given`` or else from the option of its name,
        ``sync_free`` decided for the device."""
        # The names from __match_args__ (dataclasses.fields does not trace in torch.compile).
        names: tuple[str, ...] = cls.__match_args__  # type: ignore[attr-defined]
        values = {name: given[name] if name in given else getattr(self, name) for name in names}
        values["sync_free"] = self.sync_free_on(device)
        return cls(**values)
