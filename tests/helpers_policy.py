"""Build small policies in a temp dir and decide requests with them, in-process."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from policyd.engine import Decision, EvalOptions, decide
from policyd.errors import PolicyError, PolicyLoadError
from policyd.policy import Policy, load_policy
from policyd.schema import Op
from tests.support import write_policy


def policy_of(files: Mapping[str, str]) -> Policy:
    with tempfile.TemporaryDirectory() as tmp:
        return load_policy(write_policy(Path(tmp), files))


def load_errors(files: Mapping[str, str]) -> list[PolicyError]:
    with pytest.raises(PolicyLoadError) as info:
        policy_of(files)
    return info.value.errors


def run(
    rules: str,
    content: dict[str, Any],
    op: Op = Op.NEW_PROXY,
    data: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Decision:
    files = {f"{op.value}.rules": rules, **{f"data/{k}": v for k, v in (data or {}).items()}}
    options = kwargs.pop("options", EvalOptions())
    return decide(policy_of(files), op, content, options=options, **kwargs)
