"""``mmsearch serve``: its options, its banner, and the one-line mistakes."""

from __future__ import annotations

import re
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .base import DbOpt, DeviceOpt, IndexOpt, read_settings, command, err

@command("serve")
def serve_cmd(
    index: IndexOpt = None,
    db: DbOpt = None,
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Address to bind; the default only accepts connections from this machine. Beyond loopback a token is required (see --token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    device: DeviceOpt = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", metavar="MIB", min=0.1, help="Largest accepted uploaded image, in MiB.")] = 20.0,
    log_level: Annotated[str, typer.Option("--log-level", metavar="LEVEL", help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    token: Annotated[Optional[str], typer.Option("--token", metavar="TOKEN", show_default=False, help="Require this bearer token on API requests ('Authorization: Bearer ...'; the page takes it once from /#token=...) \\[default: $MMSEARCH_TOKEN]. Binding beyond loopback without one generates one.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", metavar="", help="Serve beyond loopback without a token: anyone who reaches the port can read every indexed file.")] = False,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", metavar="ORIGIN", show_default=False, help="Let pages from this web origin (e.g. https://rom1504.github.io for clip-retrieval's front end) read the answers (repeatable); any page of it can then search the library.")] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", metavar="NAME", show_default=False, help="Also answer requests for this host name (repeatable; '*' answers any); added to the comma-separated names in $MMSEARCH_ALLOWED_HOSTS. The server's own address, and localhost on loopback, always work.")] = None,
) -> None:
    """Serve the HTTP API and the web page (http://HOST:PORT/) with the model kept loaded."""
    import secrets

    from ..server import docs_available, is_loopback_host, serve
    from ..server.security import normalise_hosts

    settings = read_settings(db)
    from_env = token is None and settings.token is not None
    token = token if token is not None else settings.token

    def usage(message: str) -> None:
        err.print(f"[bold red]error:[/] {escape(message)}")
        raise typer.Exit(2)

    if token is not None and not token.strip():
        usage("the token is empty: give --token a value, or unset MMSEARCH_TOKEN")
    if no_auth and token:
        if not from_env:
            usage("--no-auth and --token contradict each other: give one of them")
        token = None  # an exported MMSEARCH_TOKEN is for clients; --no-auth says this server wants none
    try:
        hosts = sorted(normalise_hosts([*(allow_host or ()), ",".join(settings.allowed_hosts)]))
    except ValueError as exc:
        usage(f"--allow-host or MMSEARCH_ALLOWED_HOSTS: {exc}")
    for origin in cors_origin or ():
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+/?", origin):
            usage(f"--cors-origin {origin!r}: give an origin such as https://example.org (scheme and host, no path)")
    loopback = is_loopback_host(host)
    generated = not loopback and not token and not no_auth
    if generated:
        token = secrets.token_urlsafe(24)

    def ready(url: str) -> None:
        # Only what works: /docs when its assets are installed, the token link when there is a token.
        err.print(f"mmsearch: serving on {url}/" + ("  (API docs at /docs)" if docs_available() else ""))
        if generated:
            err.print(f"access token (generated; choose one with --token or MMSEARCH_TOKEN): {token}")
            err.print(f"open the page once with the token: {url}/#token={token}")
        elif token:
            err.print(f"requests need the token (--token / MMSEARCH_TOKEN); open the page once as {url}/#token=<token>")
        if not loopback:
            names = ", ".join(hosts) if hosts else "none"
            err.print(f"reachable by address, by this machine's name, and by --allow-host names ({names})")
            if no_auth:
                err.print(f"[yellow]warning:[/] binding to {escape(host)} without a token: every file in the index can be "
                          "read by anyone who reaches this port")

    serve(index, host=host, port=port, device=device, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
          log_level=log_level, token=token, allowed_hosts=hosts, require_auth=not no_auth, on_ready=ready,
          settings=settings, cors_origins=cors_origin or ())
