"""The 50-rule policy in Rego (policy50.rego), run by regorus through the `opa-eval` binding.

opa-eval takes the input as a JSON string and hands back Python objects: encoding the request is
part of what the peer costs, as it would be in a plugin built on it. Needs the `bench` extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from benchmarks.peers.common import Verdict, load_data

REGO = Path(__file__).resolve().parent / "policy50.rego"
QUERY = "data.policy50.decision"


class Rego:
    name = "regorus via opa-eval (Rego)"

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        import opa_eval  # the bench extra; imported here so a missing one is reported, not fatal

        data = load_data() if data is None else data
        self._engine = opa_eval.OpaEval(str(REGO), data_json=json.dumps(data), query=QUERY)

    def decide(self, content: dict[str, Any], now: int) -> Verdict:
        answer = self._engine.evaluate_parsed(orjson.dumps({"content": content, "now": now}).decode())
        return Verdict(
            answer["outcome"],
            answer.get("reason", ""),
            answer.get("content"),
            tuple(answer.get("warnings", ())),
        )
