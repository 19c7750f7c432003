"""The README's first two lines are the two set-up commands, and its Python examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks[0].strip() == 'pip install -e ".[train]" && mtl-fast demo'
    assert blocks[1].strip() == 'pip install -e ".[test]" && pytest'


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index: int) -> None:
    code = python_blocks()[index]
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})
