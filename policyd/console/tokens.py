"""The console's edit tokens: a file of named bearer tokens, checked in constant time.

The file (`console_token_file`) holds one token a line, named, so that every save is logged with
who made it:

    # name:token  (the name shows in the log; the token is the rest of the line)
    alice:3f6c1d0e9b8a47d2a1c5e7f90b2d4c68
    deploy-bot:Yp2Q8v4ZkN1mR7sT0wX3cL6bH9dF5gJ2

Names are 1-64 letters, digits and `_.@-`; tokens are MIN_TOKEN_CHARS to MAX_TOKEN_CHARS printable
ASCII characters without spaces (they travel in an HTTP header). Blank lines and lines starting
with `#` are skipped. Only SHA-256 digests of the tokens are kept in memory; a presented token is
hashed and compared with every digest by `hmac.compare_digest`, so neither its content nor which
token it is close to shows in the time taken. Tokens never appear in a log line or an error
message; errors name the file and line.

The file is read again when it changes (checked on each authenticated call), so tokens can be
rotated without a restart; a file that stops parsing refuses every token until it is fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from policyd.console.errors import ConsoleError

log = logging.getLogger("policyd.console")

MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
MAX_TOKEN_FILE_BYTES = 64 * 1024
TOKEN_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
TOKEN_TEXT = re.compile(r"[!-~]+")  # printable ASCII, no space


@dataclass(frozen=True, slots=True)
class Tokens:
    """Named token digests; `who(token)` is the name of the token presented, or None."""

    digests: tuple[tuple[str, bytes], ...]

    def who(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
        found = None
        for name, expected in self.digests:  # every digest is compared: no early exit
            if hmac.compare_digest(expected, digest):
                found = name
        return found


def _bad(message: str) -> ConsoleError:
    return ConsoleError(message, 500, "token_file")


def parse_tokens(text: str, where: str) -> Tokens:
    """Parse the token file's text; raise ConsoleError naming `where` and the line."""
    digests: list[tuple[str, bytes]] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        at = f"{where}:{number}"
        if not sep:
            raise _bad(f"{at}: expected name:token")
        if not TOKEN_NAME.fullmatch(name):
            raise _bad(f"{at}: a token's name is 1-64 letters, digits or _.@- characters")
        if name in names:
            raise _bad(f"{at}: the name {name!r} is given twice")
        if not TOKEN_TEXT.fullmatch(token):
            raise _bad(f"{at}: a token is printable ASCII without spaces")
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
            raise _bad(
                f"{at}: the token of {name!r} has {len(token)} characters; "
                f"use {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} (e.g. `openssl rand -hex 24`)"
            )
        digest = hashlib.sha256(token.encode()).digest()
        if any(hmac.compare_digest(digest, d) for _, d in digests):
            raise _bad(f"{at}: the token of {name!r} is also another name's token")
        names.add(name)
        digests.append((name, digest))
    if not digests:
        raise _bad(f"{where}: no tokens (expected name:token lines)")
    return Tokens(tuple(digests))


def read_tokens(path: Path) -> Tokens:
    """Read and parse a token file; raise ConsoleError saying what is wrong."""
    try:
        size = path.stat().st_size
        if size > MAX_TOKEN_FILE_BYTES:
            raise _bad(f"{path}: {size} bytes; a token file holds at most {MAX_TOKEN_FILE_BYTES}")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise _bad(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise _bad(f"{path}: not UTF-8 text") from None
    return parse_tokens(text, str(path))


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class TokenFile:
    """The token file as the console uses it: read at start, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = _signature(path)
        self._tokens: Tokens | None = read_tokens(path)  # raises ConsoleError at start-up
        if self._signature is not None and os.stat(path).st_mode & 0o004:
            log.warning("console token file %s is readable by every user; chmod o-r it", path)

    def who(self, presented: str) -> str | None:
        """The name of the token presented, or None (also while the file does not parse)."""
        signature = _signature(self.path)
        if signature != self._signature:
            self._signature = signature
            try:
                self._tokens = read_tokens(self.path)
                log.info(
                    "console token file %s read again: %d token(s)", self.path, len(self._tokens.digests)
                )
            except ConsoleError as e:
                self._tokens = None
                log.error("console token file changed and no longer reads (%s); edits are refused", e)
        return self._tokens.who(presented) if self._tokens is not None else None
