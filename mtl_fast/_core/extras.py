"""Optional dependencies, by the extra that installs them, and the one-line error a missing one
gives.

``pip install mtl-fast`` installs what ``import mtl_fast`` and the kernels need (torch, numpy).
Training, the demo's data set, plots and progress bars need the ``[train]`` extra; whatever needs
it calls :func:`require` first, so that a missing package is named before any work is done.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

# extra → {import name: distribution name}; the same packages as pyproject.toml's extras
EXTRAS: dict[str, dict[str, str]] = {
    "train": {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"},
}


class MissingExtraError(ImportError):
    """A package of an optional extra is not installed; the message says which extra to install."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(extra: str, modules: Iterable[str] | None = None) -> list[str]:
    """The distributions of ``extra`` (or of its ``modules``, import names) not installed here."""
    packages = EXTRAS[extra]
    wanted = list(packages) if modules is None else list(modules)
    unknown = [m for m in wanted if m not in packages]
    if unknown:
        raise KeyError(f"{unknown} are not in the [{extra}] extra")
    return [packages[m] for m in wanted if not _installed(m)]


def require(extra: str, what: str, modules: Iterable[str] | None = None) -> None:
    """Raise :class:`MissingExtraError` if a package of ``extra`` (all of them, or those of the
    import names ``modules``) is missing: ``what`` (e.g. ``"mtl-fast demo"``) names the user."""
    absent = missing(extra, modules)
    if absent:
        raise MissingExtraError(
            f"{what} needs the [{extra}] extra ({', '.join(absent)} not installed): "
            f'pip install "mtl-fast[{extra}]", or pip install -e ".[{extra}]" in a checkout'
        )
