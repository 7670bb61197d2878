"""Command line: thin wrappers over the library. Only this module prints and sets exit codes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from policyd import __version__
from policyd.errors import PolicyLoadError
from policyd.schema import Op
from policyd.settings import ENV_PREFIX, Settings

OP_NAMES = [op.value for op in Op]


def _ops(ctx: click.Context, param: click.Parameter, value: str) -> frozenset[Op]:
    names = [v.strip() for v in value.replace(",", " ").split() if v.strip()]
    unknown = [n for n in names if n not in OP_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(OP_NAMES)}")
    return frozenset(Op(n) for n in names)


@click.group(
    context_settings={
        "auto_envvar_prefix": ENV_PREFIX.rstrip("_"),
        "help_option_names": ["-h", "--help"],
    }
)
@click.version_option(__version__, prog_name="policyd")
def main() -> None:
    """policyd: one-line, hot-reloaded policy rules for frps's server plugin API."""


@main.command()
@click.option(
    "--policies",
    type=click.Path(path_type=Path),
    default=Path("policies"),
    show_default=True,
    show_envvar=True,
    help="Policy directory (rule files and data/).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    show_envvar=True,
    help="Address to bind; keep loopback unless TLS/allowlists protect it.",
)
@click.option("--port", type=int, default=9000, show_default=True, show_envvar=True, help="TCP port.")
@click.option(
    "--handler-path",
    default="/handler",
    show_default=True,
    show_envvar=True,
    help="Path frps POSTs to (frps `path`).",
)
@click.option(
    "--fail-open-ops",
    default="",
    show_envvar=True,
    callback=_ops,
    help="Ops that allow instead of reject when a rule errors, e.g. 'Ping,NewWorkConn'.",
)
@click.option(
    "--max-body-bytes",
    type=int,
    default=1024 * 1024,
    show_default=True,
    show_envvar=True,
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--eval-budget-ms",
    type=float,
    default=100.0,
    show_default=True,
    show_envvar=True,
    help="Wall-clock budget for one decision.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    show_envvar=True,
)
def serve(
    policies: Path,
    host: str,
    port: int,
    handler_path: str,
    fail_open_ops: frozenset[Op],
    max_body_bytes: int,
    eval_budget_ms: float,
    log_level: str,
) -> None:
    """Serve the frps plugin API with the rules in --policies, reloading them on change."""
    import uvicorn

    from policyd.app import create_app
    from policyd.store import PolicyStore

    settings = Settings(
        policies=policies,
        host=host,
        port=port,
        handler_path=handler_path if handler_path.startswith("/") else "/" + handler_path,
        fail_open_ops=fail_open_ops,
        max_body_bytes=max_body_bytes,
        eval_budget_ms=eval_budget_ms,
        log_level=log_level,
    )
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        store = PolicyStore(settings.policies)
    except PolicyLoadError as e:
        click.echo(f"policyd: the policy in {settings.policies} does not load; not starting:", err=True)
        for error in e.errors:
            click.echo(f"  {error}", err=True)
        sys.exit(2)
    app = create_app(settings, store)
    logging.getLogger("policyd").info(
        "policyd %s serving policy %s on http://%s:%d%s",
        __version__,
        store.policy.version,
        host,
        port,
        settings.handler_path,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
