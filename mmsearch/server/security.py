"""Who may talk to the server: the Host header check and the bearer token (ASGI middleware).

**Host.** A page on another site can make a browser send requests to a server on this machine
by pointing its own domain name at 127.0.0.1 (DNS rebinding); the requests then carry that
foreign name in ``Host``. A request is answered only when its Host names the server: an IP
address equal to the address the connection came in on, a loopback name (``localhost``, a
loopback address) on a loopback connection, or a name in ``allowed_hosts`` (``*`` allows any).
An IP address cannot be rebound, so a server bound to every interface is reachable by address.

**Token.** With a token, every API request must carry ``Authorization: Bearer <token>`` or the
page's session cookie, which ``POST /api/session`` sets for a request that carried the token
(the page does this with the token from its address, ``/#token=...``). The page shell, its
static files and the API docs stay public: they hold nothing from the library. Tokens and
cookies are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from starlette.requests import cookie_parser

# Paths readable without the token (relative to the app's root path): nothing from the library.
PUBLIC_PATHS = frozenset({"/", "/openapi.json", "/docs", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/", "/docs/")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _send_json(status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] = ()):
    payload = json.dumps(body).encode("utf-8")  # ASCII: safe whatever the message holds

    async def respond(send: Any) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return respond


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_host(host: str) -> bool:
    """True when binding ``host`` only accepts connections from this machine."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in LOOPBACK_NAMES:
        return True
    address = _ip(name)
    return address is not None and address.is_loopback


def is_wildcard_host(host: str) -> bool:
    """True for 0.0.0.0, :: and the empty host: every interface."""
    address = _ip(host.strip().strip("[]"))
    return host.strip() == "" or (address is not None and address.is_unspecified)


def host_name(header: str) -> str | None:
    """The host part of a Host header, lower case, without port or brackets; None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            return None
        name = value[1:end]
        return name if _ip(name) is not None else None
    if value.count(":") > 1:
        return None
    name = value.split(":", 1)[0].rstrip(".")
    if not name or any(not (ch.isalnum() or ch in "-._") for ch in name) or not name.isascii():
        return None
    return name


def normalise_hosts(hosts: Iterable[str]) -> frozenset[str]:
    """Allowed host names as given on the command line (commas split, ports and brackets dropped)."""
    names: set[str] = set()
    for entry in hosts:
        for part in str(entry).replace(",", " ").split():
            if part == "*":
                names.add("*")
                continue
            name = host_name(part)
            if name is None:
                raise ValueError(f"not a host name: {part!r}")
            names.add(name)
    return frozenset(names)


def host_allowed(name: str, local_address: str | None, allowed: frozenset[str]) -> bool:
    """The rule in the module docstring, for a Host header's ``name`` (see ``host_name``)."""
    if "*" in allowed or name in allowed:
        return True
    local = _ip(local_address) if local_address else None
    address = _ip(name)
    if address is not None:
        return local is not None and (address == local or (address.is_loopback and local.is_loopback))
    return name in LOOPBACK_NAMES and local is not None and local.is_loopback


class HostGuard:
    """ASGI middleware: 421 for requests whose Host header does not name this server."""

    def __init__(self, app: Any, allowed: frozenset[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers", ()) if k == b"host"), None)
        if header is not None:
            raw = header.decode("latin-1")
            name = host_name(raw)
            server = scope.get("server") or (None, None)
            if name is None or not host_allowed(name, server[0], self.allowed):
                shown = raw if raw.isascii() and raw.isprintable() and len(raw) < 300 else ascii(raw)[:300]
                message = (f"this server does not answer for host {shown!r}: open it by its address, or start it "
                           f"with --allow-host NAME (or MMSEARCH_ALLOWED_HOSTS) to accept another name")
                await _send_json(421, {"detail": message})(send)
                return
        await self.app(scope, receive, send)


class TokenGuard:
    """ASGI middleware: 401 for requests to private paths without the bearer token or session cookie."""

    def __init__(self, app: Any, token: str):
        if not token:
            raise ValueError("an empty token protects nothing")
        self.app = app
        self._token = token.encode("utf-8")
        tag = hashlib.sha256(self._token).hexdigest()
        # Named per token: servers on other ports of the same host keep their own cookies.
        self.cookie_name = f"mmsearch_session_{tag[:12]}"
        self._cookie = hmac.new(self._token, b"mmsearch page session", hashlib.sha256).hexdigest().encode("ascii")

    def bearer_ok(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        for key, value in headers:
            if key == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self._token):
                    return True
        return False

    def cookie_ok(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        for key, value in headers:
            if key != b"cookie":
                continue
            # As browsers send them (Starlette's parser): an unrelated cookie with a stray quote
            # spoils only itself, where SimpleCookie refused the whole header.
            found = cookie_parser(value.decode("latin-1")).get(self.cookie_name)
            if found is not None and hmac.compare_digest(found.encode("latin-1", "replace"), self._cookie):
                return True
        return False

    def session_cookie(self, root_path: str) -> str:
        """The Set-Cookie value that lets the page (images and links included) in."""
        return (f"{self.cookie_name}={self._cookie.decode('ascii')}; Path={root_path or '/'}; HttpOnly; "
                "SameSite=Strict")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = scope.get("headers", ())
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.bearer_ok(headers) or self.cookie_ok(headers):
            # For POST /api/session, which hands it to the page.
            scope.setdefault("state", {})["session_cookie"] = self.session_cookie(root)
            await self.app(scope, receive, send)
            return
        message = ("authentication required: send 'Authorization: Bearer <token>' with the token the server was "
                   "started with (--token or MMSEARCH_TOKEN); in a browser open the page as /#token=<token>")
        await _send_json(401, {"detail": message}, [(b"www-authenticate", b'Bearer realm="mmsearch"')])(send)
