"""Helpers for the console's tests: an in-process app with a chosen peer address, token files."""

from __future__ import annotations

import asyncio
import functools
import shutil
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from policyd.service.app import create_app
from policyd.service.settings import Layer, Settings, build_settings
from policyd.service.store import PolicyStore
from tests.support import SHIPPED_POLICIES

TOKEN = "alice-token-0123456789abcdef"
OTHER_TOKEN = "bob-token-fedcba9876543210"
TOKEN_FILE_TEXT = f"# who:token\nalice:{TOKEN}\nbob:{OTHER_TOKEN}\n"
JSON_POST = {"Content-Type": "application/json"}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {**JSON_POST, "Authorization": f"Bearer {token}"}


def copy_policy(target: Path, source: Path = SHIPPED_POLICIES) -> Path:
    shutil.copytree(source, target)
    return target


def token_file(directory: Path, text: str = TOKEN_FILE_TEXT) -> Path:
    path = directory / "console-tokens"
    path.write_text(text)
    path.chmod(0o600)
    return path


def console_settings(policies: Path, **values: Any) -> Settings:
    """Settings built the way serve builds them (so the token file is checked too)."""
    raw = {"policies": str(policies), "decision_log": "off", **values}
    return build_settings([Layer("flag", {k: str(v) for k, v in raw.items()})])


@asynccontextmanager
async def console_client(
    settings: Settings, *, peer: str = "127.0.0.1", host: str = "127.0.0.1:9000"
) -> AsyncIterator[tuple[httpx.AsyncClient, PolicyStore, Any]]:
    """The whole service app in-process (no watcher), called from `peer`."""
    store = PolicyStore(settings.policies)
    app = create_app(settings, store, watch=False)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        yield client, store, app


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function on a fresh asyncio loop (its fixtures are the function's)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run
