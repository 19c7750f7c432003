"""The package's import rule, checked on the source with ``ast`` (imports inside functions too).

A module's layer is where it lives under ``mtl_fast/``; it may import, from the package, only
the layers its row of :data:`MAY_IMPORT` names. Kernels are reached through the dispatch
(``mtl_fast._core.dispatch`` loads them by name), never imported by the ops; only ``tools`` (and
the ``python -m mtl_fast`` entry point) import ``mtl_fast.tools``. The old module names of
``mtl_fast._aliases`` count as the modules they stand for.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mtl_fast._aliases import target as alias_target

PACKAGE = Path(__file__).resolve().parents[1] / "mtl_fast"

ROOT = "mtl_fast"  # mtl_fast/__init__.py, _aliases.py, _version.py: the public namespace
ALL = "*"
MAY_IMPORT: dict[str, set[str]] = {
    "_core": {"_core"},
    "kernels": set(),  # kernels/__init__.py: a docstring
    "kernels.reference": {"_core", "kernels.reference"},
    "kernels.triton": {"_core", "kernels.triton", "kernels.reference"},
    "kernels.cpu": {"_core", "kernels.cpu", "kernels.reference"},
    "kernels.cuda": {"_core", "kernels.cuda", "kernels.reference"},
    "ops": {"_core", "ops"},
    "optim": {"_core", "optim", "ops"},
    "diagnostics": {"_core", "ops", "optim"},
    "strategies": {"_core", "ops", "optim", "diagnostics", "strategies"},
    "distributed": {"_core", "ops", "optim", "diagnostics", "strategies", "distributed"},
    "integrations": {"_core", "ops", "integrations"},  # adapters to other libraries
    "tools": {ALL},
    ROOT: {ROOT, "_core", "ops", "optim", "diagnostics", "strategies"},
    "__main__": {"tools"},  # `python -m mtl_fast` runs the command line
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> str:
    """The layer of module ``mtl_fast.…`` (``kernels.<backend>`` for a backend's files)."""
    parts = name.split(".")[1:]
    if not parts or parts[0] in ("_aliases", "_version"):
        return ROOT
    if parts[0] == "kernels" and len(parts) > 1:
        return f"kernels.{parts[1]}"
    return parts[0]


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import of ``mtl_fast`` in the file (or in ``source`` read as
    that file), relative ones resolved, old names replaced by the modules they stand for."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                sub = f"{base}.{a.name}"  # `from mtl_fast.kernels import reference`
                found.append((node.lineno, sub if sub in MODULES else base))
    out = []
    for line, mod in found:
        if mod == ROOT or mod.startswith(ROOT + "."):
            out.append((line, alias_target(mod) or mod))
    return out


def violations(path: Path, source: str | None = None) -> list[str]:
    name = module_name(path)
    allowed = MAY_IMPORT[layer(name)]
    out = []
    for line, imported in imports(path, source):
        if ALL not in allowed and layer(imported) not in allowed:
            rel = path.relative_to(PACKAGE.parent)
            may = ", ".join(sorted(allowed)) or "nothing"
            out.append(f"{rel}:{line} imports {imported} ({layer(name)} may import {may})")
    return out


def test_every_module_has_a_layer() -> None:
    unknown = {n: layer(n) for n in MODULES if layer(n) not in MAY_IMPORT}
    assert not unknown, f"add these layers to MAY_IMPORT: {unknown}"


def test_imports_follow_the_layers() -> None:
    found = [v for path in MODULES.values() for v in violations(path)]
    assert not found, "\n".join(found)


def test_the_checker_sees_every_form_of_import() -> None:
    """Guard for the check above: absolute, relative, aliased and function-level imports."""
    gram = MODULES["mtl_fast.ops.gram"]
    assert "mtl_fast._core.dispatch" in {m for _, m in imports(gram)}
    planted = {
        "import mtl_fast.kernels.triton.gram": "mtl_fast.kernels.triton.gram",
        "from mtl_fast.kernels import reference": "mtl_fast.kernels.reference",
        "from ..kernels.reference import gram": "mtl_fast.kernels.reference.gram",
        "from mtl_fast.reference import gram": "mtl_fast.kernels.reference",
        "def f():\n    from mtl_fast.tools import verify": "mtl_fast.tools.verify",
    }
    for source, module in planted.items():
        assert [m for _, m in imports(gram, source)] == [module], source
        assert len(violations(gram, source)) == 1, source
    assert violations(gram, "from . import combine\nfrom .._core import precision") == []
    assert [m for _, m in imports(MODULES["mtl_fast.__main__"])] == ["mtl_fast.tools.cli"]
