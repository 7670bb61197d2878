"""Running the service: one process, or N uvicorn workers that each load and watch the policy.

`run(settings)` is what `policyd serve` calls once the settings are resolved. It loads the policy
first, so a broken policy is a start-up error (PolicyLoadError) before any port is bound; then it
binds the port itself, so a port in use is a StartupError before anything is logged as serving.

Workers are separate processes started by uvicorn: each gets the settings through one
environment variable, loads the policy itself and hot-reloads on its own. They watch the same
directory and a version is a content hash, so after an edit every worker serves the same version.
"""

from __future__ import annotations

import errno
import logging
import logging.config
import os
import shutil
import socket
import ssl
import tempfile
from typing import Any

import orjson
from starlette.types import ASGIApp

from policyd import __version__
from policyd.errors import StartupError
from policyd.service.edge import EdgeProtocol, ensure_fd_headroom
from policyd.service.logs import logging_config
from policyd.service.settings import Layer, Settings, build_settings
from policyd.service.statesvc import workers_problem
from policyd.service.store import PolicyStore
from policyd.service.versions import open_history
from policyd.tools.history import HistoryError

log = logging.getLogger("policyd")

WORKER_SETTINGS_ENV = "_POLICYD_WORKER_SETTINGS"  # internal: parent → workers, not a setting
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it
LOOPBACK = ("127.", "::1", "localhost")


def _warn_if_exposed(settings: Settings) -> None:
    if settings.host.startswith(LOOPBACK):
        return
    if not settings.handler_allow:
        log.warning(
            "listening on %s with no handler_allow: anyone who reaches the port can call the handler",
            settings.host,
        )
    if not settings.tls:
        log.warning("listening on %s without TLS: plugin requests carry tokens in clear text", settings.host)
    if settings.console != "off" and not settings.admin_allow:
        log.warning(
            "listening on %s with the console on and no admin_allow: anyone who reaches the port can "
            "read the policy and its decisions at /ui",
            settings.host,
        )


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run()'s options for these settings (benchmarks/ serves its baselines with them too).

    uvicorn picks uvloop (a dependency) by itself; HTTP is httptools behind policyd's edge
    (policyd.service.edge), with the limits of the app it serves. `proxy_headers` is off: uvicorn
    would otherwise take the client address from `X-Forwarded-For` when the peer is 127.0.0.1,
    and any local process could then pass the allowlists as any address.
    """
    return {
        "host": settings.host,
        "port": settings.port,
        "http": EdgeProtocol,
        "ws": "none",
        "proxy_headers": False,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "log_config": logging_config(settings.log_level, settings.log_format),
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "ssl_certfile": settings.tls_cert,
        "ssl_keyfile": settings.tls_key,
    }


def bind(settings: Settings) -> socket.socket:
    """The listening socket, bound as uvicorn binds it; StartupError when the address is taken
    or cannot be bound, before anything has been logged as serving."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        sock.close()
        why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e)).lower()
        raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {why}") from None
    sock.set_inheritable(True)  # the workers serve on it
    return sock


def _check_tls(settings: Settings) -> None:
    if settings.tls_cert is None or settings.tls_key is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key
        )
    except (OSError, ssl.SSLError) as e:
        raise StartupError(
            f"cannot use tls_cert {settings.tls_cert} / tls_key {settings.tls_key}: {e}"
        ) from None


def run(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then let in-flight requests finish (shutdown_timeout_s).

    Raises PolicyLoadError for a policy that does not load and StartupError when the service
    cannot start (the port in use, the TLS files unusable): `policyd serve` exits 2 for both.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    log_config = logging_config(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)
    # Raises PolicyLoadError: nothing is bound yet.
    store = PolicyStore(settings.policies, check=lambda policy: workers_problem(settings, policy))
    try:
        open_history(settings)
    except HistoryError as e:  # a history_dir that cannot be made: before anything is bound
        raise StartupError(e.message) from None
    _check_tls(settings)
    sock = bind(settings)
    scheme = "https" if settings.tls else "http"
    log.info(
        "policyd %s serving policy %s on %s://%s:%d%s with %d worker(s)",
        __version__,
        store.policy.version,
        scheme,
        settings.host,
        settings.port,
        settings.handler_path,
        settings.workers,
    )
    _warn_if_exposed(settings)
    ensure_fd_headroom(settings.max_connections)
    common = server_options(settings)
    if settings.workers == 1:
        from policyd.service.app import create_app

        server = uvicorn.Server(uvicorn.Config(create_app(settings, store), **common))
        with sock:
            server.run(sockets=[sock])
        if not server.started:
            raise StartupError("the service did not start; the log above says why")
        return
    metrics_dir = tempfile.mkdtemp(prefix="policyd-metrics-")
    os.environ[METRICS_DIR_ENV] = metrics_dir
    os.environ[WORKER_SETTINGS_ENV] = orjson.dumps(settings.unmasked()).decode()
    config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=settings.workers, **common)
    try:
        with sock:
            Multiprocess(config, sockets=[sock]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def worker_app() -> ASGIApp:
    """The app of one worker process (uvicorn calls this factory in each worker)."""
    from policyd.service.app import create_app

    settings = build_settings([Layer("worker", orjson.loads(os.environ[WORKER_SETTINGS_ENV]))])
    store = PolicyStore(settings.policies, check=lambda policy: workers_problem(settings, policy))
    return create_app(settings, store, metrics_dir=os.environ[METRICS_DIR_ENV])
