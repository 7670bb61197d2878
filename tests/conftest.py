from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SHIPPED_POLICIES, PolicydProcess


@pytest.fixture
def policyd_server(tmp_path: Path) -> Iterator[Callable[..., PolicydProcess]]:
    """Start policyd subprocesses; every one started is stopped, also when the test fails."""
    started: list[PolicydProcess] = []

    def start(
        policies: Path | None = SHIPPED_POLICIES, *extra: str, wait: bool = True, **options: Any
    ) -> PolicydProcess:
        server = PolicydProcess(policies, tmp_path / f"policyd-{len(started)}.log", *extra, **options)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()
