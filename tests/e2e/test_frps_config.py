"""`policyd frps-config`'s snippet, as printed, wires a real frps up to policyd."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from policyd.rules.schema import TOML_CONFIG_SINCE
from tests.e2e.harness import (
    LOOPBACK,
    READY_TIMEOUT,
    E2EStack,
    login_refused,
    render_ini,
    render_toml,
    tcp_proxy,
)
from tests.support import SHIPPED_POLICIES, free_port


def frps_config_snippet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policyd", "frps-config", "--policies", str(SHIPPED_POLICIES), *args],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=True,
    )


def test_the_snippet_for_this_frps_makes_it_ask_policyd(stack: E2EStack) -> None:
    policyd = stack.start_policyd({"Login.rules": 'reject "asked policyd: {content.version}"\n'})
    snippet = frps_config_snippet(
        "--frps-version", str(stack.version), "--addr", f"{LOOPBACK}:{policyd.port}"
    ).stdout
    # frps's own settings first, the snippet last: TOML reads what follows [[httpPlugins]] into it.
    settings = dataclasses.replace(stack.frps_settings(), vhost_http_port=0)
    if snippet.startswith("[[httpPlugins]]"):
        base = "frps.toml", render_toml({"bindAddr": LOOPBACK, "bindPort": settings.bind_port})
    else:
        base = "frps.ini", render_ini({"common": {"bind_addr": LOOPBACK, "bind_port": settings.bind_port}})
    stack.start_frps(settings, config=(base[0], f"{base[1]}\n{snippet}"))
    frpc = stack.start_frpc({"ssh": tcp_proxy(stack.echo_server(), free_port())}, user="")

    assert frpc.wait_exit() != 0
    assert login_refused(f"asked policyd: {stack.version}").search(frpc.logs())


def test_the_toml_snippet_passes_frps_verify(stack: E2EStack) -> None:
    stack.require(TOML_CONFIG_SINCE, "TOML config (frps verify)")
    for args in (
        [],
        ["--frps-version", str(stack.version)],
        ["--ops", "Login,NewProxy", "--name", "edge.policy"],
    ):
        snippet = frps_config_snippet(*args).stdout
        path = stack.directory / "frps.toml"
        path.write_text(render_toml({"bindAddr": LOOPBACK, "bindPort": free_port()}) + "\n" + snippet)
        verify = subprocess.run(
            [str(stack.frps_binary), "verify", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert verify.returncode == 0, (
            f"frps verify refused {args}:\n{path.read_text()}\n{verify.stdout}{verify.stderr}"
        )
