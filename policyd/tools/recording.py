"""Recorded requests: the JSON-lines format `policyd serve --record-requests` writes and
`policyd replay` reads, and the keyed hash that keeps secrets out of it.

A recording file starts with a header line, then holds one line per request frps sent:

    {"policyd_recording": 1, "key_id": "3f2a9c0d1e8b7a65", "created": "2025-01-01T12:00:00.000000Z"}
    {"time": "2025-01-01T12:00:01.123456Z", "reqid": "5f0c2b1e9d8a7c6b", "op": "Login",
     "version": "0.1.0", "content": {...},
     "answer": {"outcome": "reject", "reason": "bad token for team red", "rule": "Login.rules:6",
                "policy_version": "3596ce5f88c9", "decided_by": "9c1f0e2d3b4a5968"}}

`content` is the request's content and `answer` what frps was told (an `answer.content` with the
whole rewritten content for a rewrite; `error` and `failed_open` for a rule error), with a digest
of the files that decided it (`decided_by`: the op's rule file and the data files). Secrets are
never written: every value under a field or key that policyd.rules.secrets calls a credential
(`privilege_key`, `sk`, `metas.token`, ...) is replaced by `hmac-sha256:<32 hex>`, an HMAC-SHA256
keyed with the operator's key file, and so is every copy of such a value elsewhere in the line
(a reason that repeats it, a field a rule copied it into). The same secret gives the same hash
with the same key, so rules comparing two secrets decide the same in a replay; the key's id
(a hash of the key, not the key) in the header tells replay which key made the hashes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from policyd.errors import PolicydError
from policyd.rules.decision import OPS, Decision, Op, Outcome, outcome_label
from policyd.rules.secrets import MIN_MASKED_VALUE_CHARS, mask

RECORDING_FORMAT = 1
HASH_PREFIX = "hmac-sha256:"
HASH_HEX_CHARS = 32  # 128 bits of the HMAC
KEY_MIN_BYTES = 16  # the shortest key file accepted
MAX_SECRETS_PER_REQUEST = 32  # credential values searched for elsewhere in one line
_KEY_ID_MESSAGE = b"policyd recording key id"


class RecordingError(PolicydError):
    """Raised for a recording key that cannot be used or a recording that cannot be read."""

    code = "recording_error"


def is_hashed(value: Any) -> bool:
    """Whether `value` is a secret a recording replaced by its keyed hash."""
    return (
        isinstance(value, str)
        and len(value) == len(HASH_PREFIX) + HASH_HEX_CHARS
        and value.startswith(HASH_PREFIX)
    )


class RecordKey:
    """The operator's key for a recording's hashes (the file's bytes, surrounding whitespace
    stripped). It never leaves the process: recordings carry only `key_id`."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_MIN_BYTES:
            raise RecordingError(f"a recording key must be at least {KEY_MIN_BYTES} bytes, not {len(key)}")
        self._key = key
        self.key_id = hmac.new(key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: Path) -> RecordKey:
        try:
            raw = path.read_bytes().strip()
        except OSError as e:
            raise RecordingError(f"cannot read the recording key file {path}: {e.strerror}") from None
        try:
            return cls(raw)
        except RecordingError as e:
            raise RecordingError(
                f"{path}: {e.message} (e.g. `head -c 32 /dev/urandom | base64 > {path}`)"
            ) from None

    def hash(self, value: Any) -> str:
        """The value's keyed hash; a value already hashed stays as it is."""
        if is_hashed(value):
            return str(value)
        raw = value.encode() if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        return HASH_PREFIX + hmac.new(self._key, raw, hashlib.sha256).hexdigest()[:HASH_HEX_CHARS]


class _Hasher:
    """Hashes one request's secrets, and remembers them to hash their copies elsewhere."""

    def __init__(self, key: RecordKey) -> None:
        self.key = key
        self.found: dict[str, str] = {}  # secret value -> its hash

    def secret(self, value: Any) -> str:
        hashed = self.key.hash(value)
        if (
            isinstance(value, str)
            and not is_hashed(value)
            and len(value) >= MIN_MASKED_VALUE_CHARS
            and len(self.found) < MAX_SECRETS_PER_REQUEST
        ):
            self.found[value] = hashed
        return hashed

    def hashed(self, value: Any) -> Any:
        """`value` with its secrets hashed (policyd.rules.secrets says which are secrets)."""
        return mask(value, replace=self.secret)

    def text(self, text: str) -> str:
        """`text` with every copy of a secret seen so far hashed."""
        for secret in sorted(self.found, key=len, reverse=True):  # a secret may contain another
            if secret in text:
                text = text.replace(secret, self.found[secret])
        return text

    def copies(self, value: Any, depth: int = 0) -> Any:
        """`value` with copies of secrets hashed in every string it holds."""
        if not self.found or depth > 16:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.copies(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.copies(v, depth + 1) for v in value]
        return value


def hash_content(content: Any, key: RecordKey) -> Any:
    """A content as a recording holds it: secrets and their copies hashed."""
    hasher = _Hasher(key)
    return hasher.copies(hasher.hashed(content))


def _time(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def header(key: RecordKey, at: datetime) -> dict[str, Any]:
    return {"policyd_recording": RECORDING_FORMAT, "key_id": key.key_id, "created": _time(at)}


def record_of(
    op: Op,
    version: str,
    content: Mapping[str, Any],
    reqid: str,
    decision: Decision,
    at: datetime,
    key: RecordKey,
    decided_by: str = "",
) -> dict[str, Any]:
    """One request's line: the request and the answer frps got, every secret hashed.

    `decided_by` is policyd.tools.rollout.decided_by() of the policy that decided: a replay
    against a policy that decides the op from the same files knows the answer without deciding.
    """
    hasher = _Hasher(key)
    hashed_content = hasher.hashed(content)
    answer: dict[str, Any] = {
        "outcome": outcome_label(decision),
        "reason": hasher.text(decision.reason),
        "rule": decision.rule.rule if decision.rule is not None else "",
        "policy_version": decision.policy_version,
        "decided_by": decided_by,
    }
    if decision.outcome is Outcome.REWRITE and decision.content is not None:
        answer["content"] = hasher.copies(hasher.hashed(decision.content))
    if decision.error is not None:
        answer["error"] = decision.error.code
        answer["failed_open"] = decision.failed_open
    return {
        "time": _time(at),
        "reqid": reqid,
        "op": op.value,
        "version": version,
        "content": hasher.copies(hashed_content),
        "answer": answer,
    }


# -- reading --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One recorded request, where it was read, and the key that hashed its secrets."""

    where: str  # file:line
    at: datetime
    reqid: str
    op: Op
    content: dict[str, Any]
    answer: Mapping[str, Any]
    key_id: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line of a recording that is not a request or a header: what is wrong with it."""

    where: str
    message: str
    last: bool  # the file's last line (a write cut short by a crash)


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError("'time' is not a string")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def read_recordings(paths: Sequence[Path]) -> Iterator[RecordedRequest | Unreadable]:
    """Every request of the files in turn (give rotated files oldest first: FILE.2 FILE.1 FILE).

    Raises RecordingError for a file that cannot be opened.
    """
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise RecordingError(f"cannot read the recording {path}: {e.strerror}") from None
        lines = raw.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        key_id = ""
        for number, line in enumerate(lines, 1):
            where = f"{path}:{number}"
            last = number == len(lines)
            try:
                doc = orjson.loads(line)
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
                if "policyd_recording" in doc:
                    if doc["policyd_recording"] != RECORDING_FORMAT:
                        raise ValueError(
                            f"recording format {doc['policyd_recording']!r} is not {RECORDING_FORMAT}"
                        )
                    key_id = str(doc.get("key_id", ""))
                    continue
                name = doc.get("op")
                op = OPS.get(name) if isinstance(name, str) else None
                if op is None:
                    raise ValueError(f"unknown op {doc.get('op')!r}")
                content, answer = doc.get("content"), doc.get("answer")
                if not isinstance(content, dict) or not isinstance(answer, dict):
                    raise ValueError("'content' and 'answer' must be objects")
                yield RecordedRequest(
                    where,
                    _parse_time(doc.get("time")),
                    str(doc.get("reqid", "")),
                    op,
                    content,
                    answer,
                    key_id,
                )
            except (orjson.JSONDecodeError, ValueError, TypeError) as e:
                yield Unreadable(where, str(e), last)
