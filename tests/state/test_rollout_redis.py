"""A shadow policy over Redis state: its decisions that call state functions wait on Redis in
the shadow's own threads, read the live state, and change none of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers import metric, wait_until
from tests.redisserver import RedisServer
from tests.support import PolicydProcess, fixture, write_policy

MAIN = 'reject "slow down" when not rate("ping:" + user.user, 3, "1m")\n'
SHADOW = (
    'reject "slow down" when not rate("ping:" + user.user, 100, "1m")'
    ' or not rate("shadow:" + user.user, 1, "1m")\n'
)


def test_a_shadow_over_redis_reads_state_in_its_own_threads_and_records_nothing(
    policyd_server: Callable[..., PolicydProcess], tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.flush()
    main = write_policy(tmp_path / "policies", {"Ping.rules": MAIN})
    candidate = write_policy(tmp_path / "candidate", {"Ping.rules": SHADOW})
    server = policyd_server(main, "--state", redis_server.url, "--shadow-policies", str(candidate))
    ping = fixture("Ping-basic")
    answers = [server.post(ping).json()["reject"] for _ in range(5)]
    assert answers == [False, False, False, True, True]

    def counts() -> dict[str, float]:
        scrape = server.client.get("/metrics").text
        return {
            a: metric(scrape, "policyd_shadow_decisions_total", op="Ping", agreement=a)
            for a in ("same", "different", "error")
        }

    wait_until(lambda: sum(counts().values()) == 5, "five shadow decisions")
    assert counts() == {"same": 3, "different": 2, "error": 0}
    user = ping["content"]["user"]["user"]
    rates = server.client.get("/state", params={"rates": ""}).json()["rates"]
    assert {key: hits["count"] for key, hits in rates.items()} == {f"ping:{user}": 5}
    # Decided off the event loop: the shadow's time on the serving thread stayed at nothing.
    assert server.client.get("/status").json()["shadow"]["spent_s"] == 0
