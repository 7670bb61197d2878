"""End-to-end fixtures: real frps/frpc from FRPS_BIN/FRPC_BIN, one stack per test, logs on failure."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from policyd.rules.schema import FrpsVersion
from tests.e2e.harness import E2EStack, binary_version

STACK = pytest.StashKey[E2EStack]()


@pytest.fixture(scope="session")
def frp_binaries() -> tuple[Path, Path, FrpsVersion]:
    """(frps, frpc, their release); skips the suite, saying why, where they are not configured."""
    frps, frpc = os.environ.get("FRPS_BIN"), os.environ.get("FRPC_BIN")
    if not frps or not frpc:
        pytest.skip(
            "FRPS_BIN/FRPC_BIN not set: point them at frp frps/frpc binaries (v0.33.0 and v0.70.0 "
            "are the tested releases; .ci/run uses ../shared/frp/bin) to run the end-to-end tests"
        )
    for variable, binary in (("FRPS_BIN", frps), ("FRPC_BIN", frpc)):
        # Set but wrong is a broken setup, not a reason to skip quietly.
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            pytest.fail(f"{variable}={binary} is not an executable file")
    server, client = binary_version(Path(frps)), binary_version(Path(frpc))
    if server != client:
        pytest.fail(f"FRPS_BIN is frp {server} but FRPC_BIN is frp {client}: the suite expects one release")
    return Path(frps), Path(frpc), server


@pytest.fixture
def stack(
    request: pytest.FixtureRequest, tmp_path: Path, frp_binaries: tuple[Path, Path, FrpsVersion]
) -> E2EStack:
    """Processes this test starts; all are stopped by PID afterwards, whether it passed or not."""
    started = E2EStack(tmp_path, *frp_binaries)
    request.node.stash[STACK] = started
    request.addfinalizer(started.close)
    return started


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach policyd's, frps's and frpc's logs (and configs) to every failing e2e test's report."""
    report = yield
    started = item.stash.get(STACK, None)
    if report.failed and started is not None:
        report.sections.extend(started.log_sections())
    return report
