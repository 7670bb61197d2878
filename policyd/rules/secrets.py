"""What counts as a secret in a request, and how policyd masks it wherever it shows content.

One set of rules for every place people read decisions (the decision log, the diagnostic log,
`policyd eval`): fields frps marks secret and map keys named like credentials are shown as
"***", and their values are masked wherever a reason, warn message or error repeats them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from policyd.rules.decision import Decision

MASK = "***"
# Fields whose value is a credential: masked wherever policyd shows content to people.
SECRET_FIELDS = frozenset({"privilege_key", "sk", "http_pwd", "group_key"})
# Map keys (metas, headers, ...) whose name says they hold a credential: `metadatas.token = "..."`.
SECRET_KEY_WORDS = ("token", "secret", "passw", "pwd", "key", "credential", "authorization", "cookie")
# Shorter secret values are not searched for in reasons and messages: masking every "a" or "1"
# would garble the line and hide next to nothing.
MIN_MASKED_VALUE_CHARS = 4
# How deep masking walks into nested values (content nests at most three levels).
MAX_MASK_DEPTH = 8

_NESTED = (dict, list, tuple)


@functools.lru_cache(maxsize=4096)  # the same few field and metas names come in every request
def is_secret_key(name: str) -> bool:
    """Whether a field or map key holds a credential, judged by its name; errs towards masking."""
    lowered = name.lower()
    return lowered in SECRET_FIELDS or any(word in lowered for word in SECRET_KEY_WORDS)


@functools.lru_cache(maxsize=1024)  # a policy sets the same few paths, request after request
def is_secret_path(path: str) -> bool:
    """Whether a dotted content path (`metas.token`) ends in a secret field or key."""
    return is_secret_key(path.rsplit(".", 1)[-1])


def mask(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with the values of credential-named keys replaced by MASK."""
    if depth > MAX_MASK_DEPTH:
        return MASK
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(str(k)) else mask(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v, depth + 1) for v in value]
    return value


def mask_change(path: str, before: Any, after: Any) -> tuple[Any, Any]:
    """A change of `content.<path>` as people may see it: both sides masked."""
    if is_secret_path(path):
        return MASK, MASK
    return (
        mask(before) if isinstance(before, _NESTED) else before,
        mask(after) if isinstance(after, _NESTED) else after,
    )


def _secret_values(value: Any, out: set[str], depth: int = 0) -> None:
    if depth > MAX_MASK_DEPTH:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and is_secret_key(str(k)):
                if len(v) >= MIN_MASKED_VALUE_CHARS:
                    out.add(v)
            else:
                _secret_values(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _secret_values(v, out, depth + 1)


def secrets_in(decision: Decision, content: Mapping[str, Any]) -> list[str]:
    """Credential values a reason or message of this decision could repeat, longest first.

    Only text a rule rendered can repeat one, so this is empty (and free) when there is none.
    """
    if not (decision.reason or decision.warnings or decision.error):
        return []
    found: set[str] = set()
    _secret_values(content, found)
    for change in decision.changes:
        _secret_values({change.path.rsplit(".", 1)[-1]: change.after}, found)
    return sorted(found, key=len, reverse=True)  # longest first: a secret may contain another


# Control characters from client values would let a warn message forge extra log lines.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Mask secret values and escape control characters: the result is one safe line of text."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text.translate(_CONTROL)
