"""Packaging: the sdist and the wheel carry the CUDA sources (``csrc/``, in the wheel as
``mtl_fast/_csrc/``) and ``py.typed``, and no tests; an installed copy finds its CUDA sources
without a checkout; ``pip install .`` pulls torch and numpy only (training, plots and progress
bars are the ``[train]`` extra); the CUDA build settings exist once.

The sdist and the wheel are built once per run with ``python -m build --no-isolation`` (the sdist
from this checkout, the wheel from the sdist), so nothing is downloaded.
"""

from __future__ import annotations

import ast
import email.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from mtl_fast._core import extras
from mtl_fast.kernels.cuda import settings

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / settings.CHECKOUT_DIR
TRAIN_ONLY = ("scikit-learn", "matplotlib", "tqdm")


def _csrc_files() -> list[str]:
    return sorted(
        f.relative_to(CSRC).as_posix()
        for f in CSRC.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts
    )


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower()


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("build", reason="needs the `build` package (the [test] extra has it)")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"needs setuptools>=77 (the [test] extra has it), got {setuptools.__version__}")
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "MTL_FAST_BUILD_CUDA"}
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.mark.slow
def test_sdist_carries_the_cuda_sources(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for rel in _csrc_files():
        assert f"{settings.CHECKOUT_DIR}/{rel}" in names, rel
    for needed in ("setup.py", "pyproject.toml", "mtl_fast/kernels/cuda/settings.py"):
        assert needed in names


@pytest.mark.slow
def test_wheel_carries_the_cuda_sources_and_py_typed_but_no_tests(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        for rel in _csrc_files():
            packaged = f"mtl_fast/{settings.PACKAGED_DIR}/{rel}"
            assert packaged in names, f"{rel} is not in the wheel"
            assert whl.read(packaged) == (CSRC / rel).read_bytes(), rel
    assert "mtl_fast/py.typed" in names
    assert "mtl_fast/kernels/cuda/settings.py" in names
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    # The only compiled file is the optional CPU library (built here: a compiler is present).
    compiled = [n for n in names if n.endswith((".so", ".pyd"))]
    assert [n.rsplit(".", 2)[0] for n in compiled] == ["mtl_fast/kernels/cpu/_lib"], compiled
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_core_dependencies_are_torch_and_numpy(dists: dict[str, Path]) -> None:
    """What `pip install .` installs: the wheel's unconditional Requires-Dist."""
    with zipfile.ZipFile(dists["wheel"]) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(whl.read(meta).decode())
    requires = metadata.get_all("Requires-Dist") or []
    core = {_name(r) for r in requires if "extra ==" not in r}
    assert core == {"torch", "numpy"}
    train = {_name(r) for r in requires if re.search(r"extra\s*==\s*\"train\"", r)}
    assert train == set(TRAIN_ONLY) == set(extras.EXTRAS["train"].values())


@pytest.mark.slow
def test_installed_copy_finds_its_cuda_sources(dists: dict[str, Path], tmp_path: Path) -> None:
    """Install the wheel alone into a folder and import it from there, with no checkout on the
    path (``-I``: neither the working directory nor PYTHONPATH; the environment's torch)."""
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"),
            *("--target", str(target), str(dists["wheel"])),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(target)!r})
        import mtl_fast
        from mtl_fast.kernels.cuda import build
        src = build.source_dir()
        print(json.dumps({{
            "package": mtl_fast.__file__,
            "source_dir": str(src),
            "files": sorted(p.name for p in src.iterdir()),
            "hash": build.source_hash("9.0"),
        }}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(target)
    assert Path(found["source_dir"]) == target / "mtl_fast" / settings.PACKAGED_DIR
    assert set(settings.SOURCES) | set(settings.HEADERS) <= set(found["files"])
    assert len(found["hash"]) == 64


def test_checkout_finds_csrc() -> None:
    """In a checkout (or an editable install) the sources are the checkout's csrc/."""
    assert settings.source_dir() == CSRC
    for name in (*settings.SOURCES, *settings.HEADERS):
        assert (CSRC / name).is_file(), name


def test_installed_copy_wins_over_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "mtl_fast"
    (package / settings.PACKAGED_DIR).mkdir(parents=True)
    (tmp_path / settings.CHECKOUT_DIR).mkdir()
    (tmp_path / settings.CHECKOUT_DIR / settings.SOURCES[0]).write_text("")
    monkeypatch.setattr(settings, "_PACKAGE", package)
    assert settings.source_dir() == tmp_path / settings.CHECKOUT_DIR  # the copy is empty
    (package / settings.PACKAGED_DIR / settings.SOURCES[0]).write_text("")
    assert settings.source_dir() == package / settings.PACKAGED_DIR


def test_arch_list_and_cuda_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert settings.arch_list() == settings.DEFAULT_ARCH_LIST
    assert settings.arch_list((8, 0)) == "8.0"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;9.0")
    assert settings.arch_list((8, 0)) == "8.6;9.0"
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert settings.ensure_cuda_home() == str(tmp_path)


def _code_strings(path: Path) -> list[str]:
    """The string constants of a Python file, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_build_settings_live_in_one_place() -> None:
    """setup.py and the just-in-time build read mtl_fast/kernels/cuda/settings.py (and setup.py
    mtl_fast/kernels/cpu/settings.py); neither carries its own source list, flags, default
    architecture or CUDA_HOME guess."""
    for path in (ROOT / "setup.py", ROOT / "mtl_fast" / "kernels" / "cuda" / "build.py"):
        for text in _code_strings(path):
            for literal in ("--expt-relaxed-constexpr", "-O3", "/usr/local/cuda"):
                assert literal not in text, f"{path.name} repeats {literal!r} in {text!r}"
            assert not re.search(r"\w\.(cu|cuh|cpp|h)\b", text), (
                f"{path.name} names a source: {text}"
            )
            assert not re.fullmatch(r"\d+\.\d+", text), f"{path.name} names an arch: {text}"
    assert "settings.py" in (ROOT / "setup.py").read_text()
