"""Collects the ``bench_*.py`` suites (named so that the test run never picks them up); the
shared cases and helpers are in ``bench_common.py``. See that module for how to run them."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # The suites are named bench_*.py so that the test run (tests/) never picks them up.
    # A file named on the command line is collected by pytest itself.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and file_path.name != "bench_common.py"
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
