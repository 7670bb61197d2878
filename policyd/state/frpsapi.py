"""frps's own API (its `webServer`), read to reconcile state with the source of truth.

Two generations, both with HTTP basic auth:
- frps < 0.6x: `GET /api/proxy/{type}` for each proxy type: `{"proxies": [{"name", "conf",
  "user"?, "status": "online"|"offline", ...}]}`; `conf` is the proxy's config (snake_case keys
  in old versions: `remote_port`, `custom_domains`, `subdomain`/`sub_domain`). No client list,
  and before `user` appeared the owner is read from the `<user>.` prefix of the name.
- frps 0.6x/0.70: `GET /api/v2/proxies` and `GET /api/v2/clients`, paged
  (`{"total", "page", "pageSize", "items": [...]}`); a proxy item is `{"name", "type", "user",
  "clientID", "spec": {camelCase config: remotePort, customDomains, subdomain}, "status":
  {"phase", ...}}`, a client item `{"key", "user", "clientID", "runID", "clientIP", "online",
  ...}`.
`read_frps()` tries v2 first and falls back to the old per-type endpoints on a 404.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from policyd.state.backend import FrpsClient, FrpsProxy, FrpsView

PROXY_TYPES = ("tcp", "udp", "http", "https", "tcpmux", "stcp", "sudp", "xtcp")
PAGE_SIZE = 200  # frps's largest (maxV2PageSize): a larger one is a 400
MAX_PAGES = 5_000  # a million proxies: far beyond one frps
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class FrpsApiError(Exception):
    """Raised when frps's API cannot be read or answers something unexpected."""


Fetch = Callable[[str], Any]  # path → decoded JSON; raises FrpsApiError (404: NotFound)


class NotFound(FrpsApiError):
    pass


def http_fetch(base_url: str, user: str, password: str, timeout_s: float) -> Fetch:
    """A fetcher of JSON from frps's API with basic auth and a timeout."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()

    def fetch(path: str) -> Any:
        request = urllib.request.Request(
            base_url.rstrip("/") + path, headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                body = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise NotFound(f"{path}: 404") from None
            raise FrpsApiError(
                f"{path}: HTTP {e.code}" + (" (check frps_api_user/password)" if e.code == 401 else "")
            ) from None
        except (urllib.error.URLError, OSError) as e:
            raise FrpsApiError(f"{path}: {e}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise FrpsApiError(f"{path}: answer over {MAX_RESPONSE_BYTES} bytes")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise FrpsApiError(f"{path}: not JSON: {e}") from None

    return fetch


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _first(conf: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in conf and conf[name] is not None:
            return conf[name]
    return None


def _proxy(name: str, type_: str, user: Any, conf: Any, run_id: str = "") -> FrpsProxy:
    conf = conf if isinstance(conf, Mapping) else {}
    owner = _text(user)
    if not owner and "." in name:
        owner = name.split(".", 1)[0]  # frps < 0.6x: "<user>.<name>" when the client set a user
    port = _first(conf, "remotePort", "remote_port")
    domains = _first(conf, "customDomains", "custom_domains")
    return FrpsProxy(
        user=owner,
        name=name,
        type=type_ or _text(_first(conf, "type", "proxy_type")),
        remote_port=port if isinstance(port, int) and not isinstance(port, bool) else 0,
        subdomain=_text(_first(conf, "subdomain", "subDomain", "sub_domain")),
        custom_domains=tuple(d for d in domains if isinstance(d, str)) if isinstance(domains, list) else (),
        run_id=run_id,
    )


def parse_old_proxies(type_: str, doc: Any) -> list[FrpsProxy]:
    """`/api/proxy/{type}`: the online proxies of that type."""
    if (
        not isinstance(doc, Mapping)
        or "proxies" not in doc
        or not isinstance(doc["proxies"], list | type(None))
    ):
        raise FrpsApiError(f'/api/proxy/{type_}: expected {{"proxies": [...]}}')
    out = []
    for item in doc.get("proxies") or []:
        if not isinstance(item, Mapping) or _text(item.get("status")).lower() != "online":
            continue
        out.append(_proxy(_text(item.get("name")), type_, item.get("user"), item.get("conf")))
    return out


def _items(doc: Any, path: str) -> tuple[list[Any], int]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("items", 0), list | type(None)):
        raise FrpsApiError(f'{path}: expected {{"total", "items": [...]}}')
    total = doc.get("total")
    return list(doc.get("items") or []), total if isinstance(total, int) else 0


def parse_v2_proxies(items: list[Any], run_ids: Mapping[str, str]) -> list[FrpsProxy]:
    """`/api/v2/proxies` items: the online ones (`status.phase`), with their client's run_id."""
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        status = item.get("status")
        phase = _text(status.get("phase")) if isinstance(status, Mapping) else ""
        if phase and phase.lower() != "online":
            continue
        run_id = run_ids.get(_text(item.get("clientID")), "")
        out.append(
            _proxy(
                _text(item.get("name")), _text(item.get("type")), item.get("user"), item.get("spec"), run_id
            )
        )
    return out


def parse_v2_clients(items: list[Any]) -> list[FrpsClient]:
    """`/api/v2/clients` items: the online clients."""
    out = []
    for item in items:
        if not isinstance(item, Mapping) or item.get("online") is False:
            continue
        status = item.get("status")
        if isinstance(status, Mapping) and _text(status.get("phase")).lower() not in ("", "online"):
            continue
        run_id = _text(item.get("runID"))
        if run_id:
            out.append(FrpsClient(_text(item.get("user")), run_id, _text(item.get("clientIP"))))
    return out


def _paged(fetch: Fetch, path: str) -> list[Any]:
    items: list[Any] = []
    for page in range(1, MAX_PAGES + 1):
        got, total = _items(fetch(f"{path}?page={page}&pageSize={PAGE_SIZE}"), path)
        items.extend(got)
        if not got or len(items) >= total:
            return items
    return items


def read_frps(fetch: Fetch) -> FrpsView:
    """Everything frps reports, from whichever API generation it speaks."""
    try:
        client_items = _paged(fetch, "/api/v2/clients")
    except NotFound:
        proxies: list[FrpsProxy] = []
        for type_ in PROXY_TYPES:
            try:
                proxies.extend(parse_old_proxies(type_, fetch(f"/api/proxy/{type_}")))
            except NotFound:
                continue  # a type this frps does not know
        return FrpsView(tuple(proxies), None)
    clients = parse_v2_clients(client_items)
    run_ids = {
        _text(i.get("clientID")): _text(i.get("runID")) for i in client_items if isinstance(i, Mapping)
    }
    run_ids.update(
        {_text(i.get("key")): _text(i.get("runID")) for i in client_items if isinstance(i, Mapping)}
    )
    return FrpsView(tuple(parse_v2_proxies(_paged(fetch, "/api/v2/proxies"), run_ids)), tuple(clients))
