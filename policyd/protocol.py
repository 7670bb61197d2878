"""frps's server-plugin wire format: the request body in, one of three answers out.

The service and the operator tools both read requests and write answers with this module, so
`policyd eval` and `policyd test` see exactly what frps gets.

Answers always carry JSON booleans (frps's Go decoder rejects the op on a string "false"), and a
rewrite carries the *whole* content, unknown fields included: frps replaces, it does not merge.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from policyd.errors import PolicydError
from policyd.rules.decision import GENERIC_ERROR_REASON, OPS, Decision, Op, Outcome


class BadRequest(PolicydError):
    """Raised for a request frps would never send; answered 4xx (`status`) with a JSON error."""

    code = "bad_request"

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class PluginRequest(NamedTuple):
    """A request as frps sent it, checked. (A NamedTuple: built per request, in a third of the
    time a frozen dataclass takes.)"""

    op: Op
    version: str
    content: dict[str, Any]


def parse_request(body: bytes, query_op: str | None = None) -> PluginRequest:
    """Decode and check a plugin request body; raise BadRequest saying what is wrong."""
    if not body:
        raise BadRequest("empty body; expected a JSON object {version, op, content}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"body must be a JSON object, not {type(doc).__name__}")
    op_name = doc.get("op", query_op)
    if not isinstance(op_name, str) or not op_name:
        raise BadRequest("missing 'op' (in the body or the ?op= query parameter)")
    if query_op and query_op != op_name:
        raise BadRequest(f"op mismatch: body says {op_name!r}, query says {query_op!r}")
    op = OPS.get(op_name)
    if op is None:
        raise BadRequest(f"unknown op {op_name!r}; expected one of {', '.join(OPS)}")
    version = doc.get("version", "")
    if not isinstance(version, str):
        raise BadRequest("'version' must be a string")
    content = doc.get("content")
    if not isinstance(content, dict):
        what = "missing" if content is None else f"a {type(content).__name__}"
        raise BadRequest(f"'content' must be a JSON object; it is {what}")
    return PluginRequest(op, version, content)


def split_request(raw: bytes) -> tuple[Op | None, dict[str, Any]]:
    """The op and content of a request given to a tool: frps's body `{version, op, content}`
    (checked as the service checks it), or a bare content object (op None).

    An object holding a `content` object is a body; anything else is the content itself.
    Raises BadRequest saying what is wrong.
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"expected a JSON object (a request body or its content), not {type(doc).__name__}")
    if not isinstance(doc.get("content"), dict):
        return None, doc
    if "op" not in doc:
        return None, doc["content"]
    request = parse_request(raw)
    return request.op, request.content


def read_request(raw: bytes, op_name: str | None) -> PluginRequest:
    """A request for `eval`: a body or bare content (see split_request) and the --op given.

    Raises BadRequest when they disagree, or when neither names the op.
    """
    body_op, content = split_request(raw)
    op = OPS.get(op_name) if op_name else None
    if op_name and op is None:
        raise BadRequest(f"unknown op {op_name!r}; expected one of {', '.join(OPS)}")
    if body_op is not None and op is not None and body_op is not op:
        raise BadRequest(f"op mismatch: the body says {body_op.value!r}, --op says {op.value!r}")
    op = op or body_op
    if op is None:
        raise BadRequest("--op is required when the input does not name its op (bare content)")
    return PluginRequest(op, "", content)


ALLOW_UNCHANGED = orjson.dumps({"reject": False, "unchange": True})
POLICY_ERROR_ANSWER = orjson.dumps({"reject": True, "reject_reason": GENERIC_ERROR_REASON})


# As globals: Python 3.11 looks an enum member up through EnumType.__getattr__ (~100 ns).
_CLOSE_PROXY, _REJECT, _REWRITE = Op.CLOSE_PROXY, Outcome.REJECT, Outcome.REWRITE


def encode_answer(decision: Decision) -> bytes:
    """The JSON body frps gets for a decision."""
    if decision.op is _CLOSE_PROXY:
        # frps ignores CloseProxy answers; never send anything but a plain allow.
        return ALLOW_UNCHANGED
    outcome = decision.outcome
    if outcome is _REJECT:
        return orjson.dumps({"reject": True, "reject_reason": decision.reason})
    if outcome is _REWRITE and decision.content is not None:
        return orjson.dumps({"reject": False, "unchange": False, "content": decision.content})
    return ALLOW_UNCHANGED


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
