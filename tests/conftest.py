"""Fixtures shared by several test files; the builders behind them are in tests/helpers/.

Markers (registered in pyproject.toml, --strict-markers): `e2e` materializes the asset graph or runs the CLI or
Dagster end to end, `browser` drives the Dagster UI with Playwright, `slow` takes over ~20 s on 2 cores.
`pytest -m "not slow"` (make test-fast) is the quick loop; `make test` runs everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dagster_home import make_dagster_home
from tests.helpers.ripe_server import DumpServer, serving


@pytest.fixture()
def dagster_home(tmp_path: Path) -> Path:
    """tmp_path/dagster_home with the project's instance settings (see tests/helpers/dagster_home.py)."""
    return make_dagster_home(tmp_path)


@pytest.fixture()
def dump_server() -> Iterator[DumpServer]:
    """A loopback server in the RIPE daily-dump layout, empty, for one test (see tests/helpers/ripe_server.py)."""
    with serving() as srv:
        yield srv
