"""The shipped policy with a benchmark's own clients as its users.

The shipped policy lets in only the users of policies/data/users.toml, each with its token
(docs/language.md, "Who the client is"). The storm's 10,000 clients and the frps fleet's are
added to a copy of it, each with the token `tk-<user>`, so they are let in as real users are.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "policies"


def token_for(user: str) -> str:
    return f"tk-{user}"


def shipped_policy_with(users: Iterable[tuple[str, str]], target: Path) -> Path:
    """policies/ copied to `target`, its users.toml extended with these (user, team) pairs."""
    shutil.copytree(SHIPPED, target, ignore=shutil.ignore_patterns("tests"), dirs_exist_ok=True)
    lines = [(target / "data" / "users.toml").read_text()]
    for user, team in users:
        digest = hashlib.sha256(token_for(user).encode()).hexdigest()
        lines.append(f'\n[{user}]\nteam = "{team}"\ntoken_sha256 = "{digest}"\n')
    (target / "data" / "users.toml").write_text("".join(lines))
    return target
