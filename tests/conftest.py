from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import oracle

# Before any test module imports policyd's modules: every decide()/encode_answer() they call is
# the oracle's checking one (tests/oracle.py).
oracle.install()

from tests.support import SHIPPED_POLICIES, PolicydProcess  # noqa: E402


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail a test whose answers failed the frps oracle, wherever the check ran (app, thread)."""
    oracle.take_failures()
    try:
        result = yield
    finally:
        failures = oracle.take_failures()
    if failures:
        raise oracle.FrpsWouldRefuse("\n\n".join(failures))
    return result


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
