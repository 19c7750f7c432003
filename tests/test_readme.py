"""The README's first two bash blocks are the two set-up commands, and the Python examples of the
README and of docs/training.md (the strategy examples moved there from the README) run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Markdown files whose every ```python block must run as written.
RUNNABLE = (README, ROOT / "docs" / "training.md")


def python_blocks() -> list[tuple[str, str]]:
    return [
        (f"{path.relative_to(ROOT)} block {index}", code)
        for path in RUNNABLE
        for index, code in enumerate(
            re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
        )
    ]


def test_readme_opens_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks[0].strip() == 'pip install -e ".[train]" && mtl-fast demo'
    assert blocks[1].strip() == 'pip install -e ".[test]" && pytest'


@pytest.mark.parametrize("name", list(dict(python_blocks())))
def test_readme_python_example_runs(name: str) -> None:
    code = dict(python_blocks())[name]
    exec(compile(code, name, "exec"), {"__name__": "readme"})
