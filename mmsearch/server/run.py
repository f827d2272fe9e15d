"""Running the app: ``serve`` (what ``mmsearch serve`` calls) and ``ServerThread`` (in a program)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ServerError
from .app import create_app
from .security import is_loopback_host, is_wildcard_host
from .uploads import DEFAULT_MAX_UPLOAD_BYTES


def url_for(host: str, port: int) -> str:
    """The base URL a browser uses for a server bound to ``host``:``port`` (wildcards: this machine's name)."""
    shown = socket.gethostname() if is_wildcard_host(host) else host
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (``::`` also takes IPv4 where it can).

    Made with protocol IPPROTO_TCP (``socket.create_server`` leaves it 0): asyncio only sets
    TCP_NODELAY on accepted sockets whose protocol says TCP, and without it every response on a
    kept-alive connection waits about 40 ms for the client's delayed ACK (Nagle).
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and is_wildcard_host(host) and hasattr(socket, "IPV6_V6ONLY"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as exc:
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(
    index: str | os.PathLike | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    log_level: str = "info",
    token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    require_auth: bool = True,
    on_ready: Callable[[str], None] | None = None,
    settings: Any = None,
    cors_origins: Iterable[str] = (),
) -> None:
    """Open the index, load its model and serve the API and web page until interrupted.

    Bound beyond loopback, a ``token`` is required unless ``require_auth=False``. The host name a
    wildcard or named bind is reached by is accepted in Host headers, as are ``allowed_hosts``.
    ``on_ready(url)`` is called once the port is bound (with the real port when ``port`` is 0).
    ``settings``: the engine's (``mmsearch.settings.Settings``; default: the environment's).
    """
    from ..encoders import onnx_image, onnx_text
    from ..settings import Settings

    # The ONNX encoders load in background threads while uvicorn and the engine import.
    settings = settings or Settings.from_env()
    folder = index if index is not None else settings.default_index()
    ahead = {"text_encoder": onnx_text.preload(folder, [], settings.onnx),
             "image_encoder": onnx_image.preload(folder, [], settings)}

    import uvicorn

    from ..engine import Engine

    loopback = is_loopback_host(host)
    if not loopback and not token and require_auth:
        raise ServerError(f"binding to {host} lets other machines connect: give a token (--token or MMSEARCH_TOKEN) "
                          "or waive it explicitly (--no-auth)")
    hosts = list(allowed_hosts)
    if is_wildcard_host(host):
        hosts.append(socket.gethostname())
    elif not loopback:
        hosts.append(host)  # a name or address given to bind to is how clients reach the server
    with Engine(index, device=device, settings=settings, **ahead) as engine:
        engine.info()  # fail now, with a one-line error, when the index does not exist
        app = create_app(engine, max_upload_bytes=max_upload_bytes, token=token, allowed_hosts=hosts,
                         cors_origins=cors_origins)
        sock = listening_socket(host, port)
        try:
            if on_ready is not None:
                on_ready(url_for(host, sock.getsockname()[1]))
            server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
            server.run(sockets=[sock])
        finally:
            sock.close()


class ServerThread:
    """Serve ``app`` from a background thread on ``host``:``port`` (0: a free port), e.g. in a notebook.

        with ServerThread(create_app(engine)) as server:
            print(server.url)
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self._socket = listening_socket(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else '[' + host + ']'}:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="mmsearch-server", daemon=True)

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
