"""What masking costs a decision-log line at its worst: ms to build the line for requests made
to make it expensive, against a plain request.

    python -m benchmarks.masking

Cases (a Login rejected with a reason that renders two request fields):
- plain: frps's Login fixture;
- the attack from the hardening pass: 33,000 credential-named metas and a 99 KB field that the
  reason renders (a replace() per credential value took 10 s for it);
- the worst inside the caps: MAX_SECRETS values (the Login's privilege_key one of them), the
  others of MAX_SECRET_CHARS characters, and a 99 KB field made of them, so every character of
  the text is part of a match.
Best of five.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policyd.engine import decide
from policyd.policy import load_policy
from policyd.rules.decision import Op
from policyd.rules.secrets import MAX_SECRET_CHARS, MAX_SECRETS
from policyd.service.decisionlog import decision_record
from tests.support import fixture, write_policy

RULE = 'reject "login of {content.user}: {content.metas.note}" when content.user != "nobody"\n'


def _cases() -> dict[str, dict[str, Any]]:
    plain = fixture("Login-basic")["content"]
    attack = {f"token{i}": f"value-{i:08d}" for i in range(33_000)}
    attack["note"] = "x" * 99_000
    long = MAX_SECRET_CHARS
    inside = {f"token{i}": (f"{i:07d}-" * long)[:long] for i in range(MAX_SECRETS - 1)}
    inside["note"] = ("".join(inside.values()) * 4)[:99_000]
    return {
        "plain Login": plain,
        "33,000 credential metas + a 99 KB field": {**plain, "metas": attack},
        f"{MAX_SECRETS} secrets of up to {long} chars, a 99 KB field of them": {**plain, "metas": inside},
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        policy = load_policy(write_policy(Path(directory), {"Login.rules": RULE}))
        for label, content in _cases().items():
            decision = decide(policy, Op.LOGIN, content)
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                record = decision_record(decision, content, "0123456789abcdef", datetime.now(UTC))
                best = min(best, time.perf_counter() - started)
            print(f"  {label:<60} {best * 1e3:8.3f} ms  reason {record['reason'][:40]!r}")


if __name__ == "__main__":
    main()
