"""Old module names that keep working after the package was reorganised into layers.

``import mtl_fast.reference`` (and every name in :data:`ALIASES`) gives a thin alias module whose
attributes are those of the new module, imported on first use; ``import mtl_fast.reference.gram``
gives the very module object of the new location, so no module is ever loaded twice (classes,
registered ops and module state exist once). ``python -m mtl_fast.cuda`` still runs.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType
from typing import Any

# old name → new name
ALIASES: dict[str, str] = {
    "mtl_fast.reference": "mtl_fast.kernels.reference",
    "mtl_fast.triton": "mtl_fast.kernels.triton",
    "mtl_fast.cuda": "mtl_fast.kernels.cuda",
    "mtl_fast.verify": "mtl_fast.tools.verify",
    "mtl_fast.bench": "mtl_fast.tools.bench",
    "mtl_fast.train": "mtl_fast.tools.train",
    "mtl_fast.data": "mtl_fast.tools.data",
    "mtl_fast.cli": "mtl_fast.tools.cli",
}


def target(fullname: str) -> str | None:
    """The new name of an old module name, or None if it is not an alias."""
    for old, new in ALIASES.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _AliasModule(ModuleType):
    """Stands under the old name; every attribute comes from the new module."""

    def __init__(self, name: str, new: str) -> None:
        super().__init__(name, f"Alias of :mod:`{new}`.")
        self.__path__: list[str] = []  # a package: `import old.sub` reaches the finder
        self._mtl_fast_target = new

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._mtl_fast_target), attr)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self._mtl_fast_target))


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    def find_spec(
        self, fullname: str, path: object = None, target_module: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = target(fullname)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        if real is None:
            return None
        is_package = real.submodule_search_locations is not None
        return importlib.util.spec_from_loader(fullname, self, origin=new, is_package=is_package)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = str(spec.origin)
        if spec.name in ALIASES:
            return _AliasModule(spec.name, new)
        module = importlib.import_module(new)
        # The import system stamps the alias's spec on the module it gets back: keep the real
        # one so that the module still knows where it lives.
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader_state is not None:
            module.__spec__ = spec.loader_state

    def get_code(self, fullname: str) -> CodeType | None:  # what `python -m old.name` runs
        real = importlib.util.find_spec(str(target(fullname)))
        loader = None if real is None else real.loader
        if not isinstance(loader, importlib.abc.InspectLoader):
            return None
        return loader.get_code(real.name)  # type: ignore[union-attr]

    def get_source(self, fullname: str) -> str | None:
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), ahead of the path-based finders."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
