"""Who may talk to the server: Host header checks (DNS rebinding) and the bearer token.

Real uvicorn servers on loopback ports (in a thread, and `mmsearch serve` in a subprocess) over
an index built with the tiny real open_clip model; raw sockets send exactly the headers we want.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import make_image
from mmsearch import Engine
from mmsearch.client import Client
from mmsearch.errors import ServerError
from mmsearch.server import ServerThread, create_app, serve
from mmsearch.server.security import host_allowed, host_name

TOKEN = "security-test-token-5b1e0d"


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model) -> Path:
    base = tmp_path_factory.mktemp("security")
    root = base / "photos"
    make_image(root / "a.jpg", seed=1)
    (root / "note.txt").write_text("a private note")
    with Engine(base / "index", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as engine:
        engine.add([root])
    return base / "index"


@pytest.fixture(scope="module")
def engine(index):
    with Engine(index) as e:
        yield e


def raw(url: str, path: str, host: str | None = None, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with exactly this Host header (http.client would otherwise write its own)."""
    hostname, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(hostname.strip("[]"), int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


ENDPOINTS = ["/", "/static/app.js", "/docs", "/openapi.json", "/api/health", "/api/info", "/api/search?q=note",
             "/api/items/{id}", "/api/items/{id}/file", "/api/items/{id}/thumbnail", "/api/items/{id}/similar"]


def endpoints(engine: Engine, private_only: bool = False) -> list[str]:
    image = next(h.id for h in engine.search("x", k=5) if h.modality == "image")
    return [e.format(id=image) for e in ENDPOINTS if e.startswith("/api/") or not private_only]


# -- Host header ---------------------------------------------------------------------------------
@pytest.mark.parametrize("foreign", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}",
                                     "localhost.evil.example", "rebind.attacker.test:80", "", "[::1", "a b"])
def test_foreign_host_headers_are_refused_everywhere(engine, foreign):
    with ServerThread(create_app(engine, preload=False)) as server:
        host = foreign.format(port=server.port)
        for path in endpoints(engine):
            status, headers, body = raw(server.url, path, host=host)
            assert status == 421, (host, path, status, body[:200])
            assert headers["content-type"] == "application/json"
            assert "--allow-host" in json.loads(body)["detail"] and b"private" not in body


def test_own_addresses_and_loopback_names_are_accepted(engine):
    with ServerThread(create_app(engine, preload=False)) as server:
        for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST", "127.0.0.1",
                     f"127.0.0.2:{server.port}", f"[::1]:{server.port}", "localhost."):
            status, _, body = raw(server.url, "/api/search?q=note", host=host)
            assert status == 200, (host, body[:200])


def test_allowed_hosts_extend_the_list(engine):
    app = create_app(engine, preload=False, allowed_hosts=["photos.lan", "Media.Example:8080, other.test"])
    with ServerThread(app) as server:
        for host in ("photos.lan", f"photos.lan:{server.port}", "media.example", "other.test"):
            assert raw(server.url, "/api/health", host=host)[0] == 200, host
        assert raw(server.url, "/api/health", host="evil.example")[0] == 421
    with ServerThread(create_app(engine, preload=False, allowed_hosts=["*"])) as server:
        assert raw(server.url, "/api/health", host="anything.example")[0] == 200


def test_host_rule_for_servers_reached_by_other_addresses():
    # The address a connection came in on is the server's own; another address or a name is not.
    assert host_allowed("192.168.1.5", "192.168.1.5", frozenset())
    assert host_allowed("192.168.1.5", "::ffff:192.168.1.5", frozenset())
    assert not host_allowed("10.0.0.7", "192.168.1.5", frozenset())
    assert not host_allowed("localhost", "192.168.1.5", frozenset())
    assert not host_allowed("box.lan", "192.168.1.5", frozenset())
    assert host_allowed("box.lan", "192.168.1.5", frozenset({"box.lan"}))
    assert host_name("[fe80::1]:80") == "fe80::1" and host_name("Ex.COM.:80") == "ex.com"
    assert host_name("ex.com:80:90") is None and host_name("ex ample") is None


# -- bearer token --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def locked(engine):
    with ServerThread(create_app(engine, token=TOKEN)) as server:
        server.private = endpoints(engine, private_only=True)
        yield server


def test_without_the_token_the_api_answers_401(locked):
    for path in locked.private:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Cookie": "mmsearch_session_x=1"}):
            status, response_headers, body = raw(locked.url, path, headers=headers)
            assert status == 401, (path, headers, status)
            assert response_headers["www-authenticate"].startswith("Bearer")
            assert "token" in json.loads(body)["detail"] and b"private" not in body
    status, _, _ = raw(locked.url, "/api/search", method="POST", headers={"Content-Type": "application/json"})
    assert status == 401


def test_the_page_shell_and_docs_stay_public(locked):
    for path in ("/", "/static/app.js", "/static/app.css", "/docs", "/openapi.json"):
        assert raw(locked.url, path)[0] == 200, path
    schema = json.loads(raw(locked.url, "/openapi.json")[2])  # /docs' Authorize button takes the token
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schema["paths"]["/api/search"]["get"]["security"] == [{"bearer": []}]


def test_the_token_opens_every_endpoint(locked):
    for scheme in ("Bearer", "bearer"):
        for path in locked.private:
            status, _, body = raw(locked.url, path, headers={"Authorization": f"{scheme} {TOKEN}"})
            assert status == 200, (path, status, body[:200])
    # The host check still comes first.
    assert raw(locked.url, "/api/health", host="evil.example", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 421


def test_session_cookie_is_given_for_the_token_only(locked):
    assert raw(locked.url, "/api/session", method="POST")[0] == 401
    status, headers, _ = raw(locked.url, "/api/session", method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 204
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    name, value = cookie.split(";", 1)[0].split("=", 1)
    file_url = next(p for p in locked.private if p.endswith("/file"))
    assert raw(locked.url, file_url, headers={"Cookie": f"other=1; {name}={value}"})[0] == 200
    tampered = value[:-1] + ("0" if value[-1] != "0" else "1")
    assert raw(locked.url, file_url, headers={"Cookie": f"{name}={tampered}"})[0] == 401
    assert raw(locked.url, file_url, headers={"Cookie": f"{name}x={value}"})[0] == 401


def test_python_client_sends_the_token(locked, monkeypatch):
    monkeypatch.delenv("MMSEARCH_TOKEN", raising=False)
    with Client(locked.url) as anonymous, pytest.raises(ServerError) as refused:
        anonymous.health()
    assert refused.value.status == 401 and "token" in str(refused.value)
    with Client(locked.url, token=TOKEN) as client:
        assert client.health()["status"] == "ok"
        hits = client.search("a private note", k=2)
        assert client.file(hits[0].id)
    monkeypatch.setenv("MMSEARCH_TOKEN", TOKEN)
    with Client(locked.url) as from_env:
        assert from_env.info()["items"] == 2


# -- the command line ----------------------------------------------------------------------------
def test_library_serve_refuses_a_wide_bind_without_a_token(index):
    with pytest.raises(ServerError, match="token"):
        serve(index, host="0.0.0.0", port=0)


def test_serve_option_mistakes_are_one_line_exit_2(cli, index):
    both = cli("serve", "--index", index, "--host", "0.0.0.0", "--token", TOKEN, "--no-auth", ok=False)
    assert both.exit_code == 2 and both.stderr.count("\n") == 1 and "contradict" in both.stderr
    empty = cli("serve", "--index", index, "--token", " ", ok=False)
    assert empty.exit_code == 2 and "empty" in empty.stderr
    bad = cli("serve", "--index", index, "--allow-host", "not a/host", ok=False)
    assert bad.exit_code == 2 and "--allow-host" in bad.stderr


def _start(index: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "serve", "--index", str(index), "--port", str(port),
                             "--log-level", "warning", *args],
                            stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code in (200, 401):
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"server did not start:\n{log.read_text()}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_serve_beyond_loopback_generates_a_token_and_names_its_hosts(index, tmp_path, monkeypatch):
    monkeypatch.delenv("MMSEARCH_TOKEN", raising=False)
    log = tmp_path / "serve.log"
    proc, url = _start(index, log, "--host", "0.0.0.0", "--allow-host", "photos.lan",
                       env={"MMSEARCH_ALLOWED_HOSTS": "a.lan,b.lan"})
    try:
        banner = log.read_text()
        token = re.search(r"access token \(generated[^)]*\): (\S+)", banner).group(1)
        assert f"/#token={token}" in banner and f":{url.rsplit(':', 1)[1]}/" in banner
        assert "API docs at /docs" in banner
        assert httpx.get(f"{url}/api/health").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/api/health", headers=auth).status_code == 200
        port = url.rsplit(":", 1)[1]
        for host in ("photos.lan", "a.lan", f"b.lan:{port}", socket.gethostname()):
            assert raw(url, "/api/health", host=host, headers=auth)[0] == 200, host
        assert raw(url, "/api/health", host="evil.example", headers=auth)[0] == 421
        # Kept-alive connections answer at once: TCP_NODELAY is set on the CLI's own listening
        # socket (without it each small response waits ~40 ms for the delayed ACK). Checked on the
        # accepted socket's option, not on a wall-clock time, which a loaded machine makes flaky.
        hostname, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(hostname, int(port), timeout=30)
        for _ in range(3):
            conn.request("GET", "/api/health", headers={"Authorization": f"Bearer {token}"})
            assert conn.getresponse().read()
        conn.close()
    finally:
        _stop(proc)


@pytest.mark.slow  # another server process (~6 s); the token from the environment is a typer envvar
def test_serve_takes_the_token_from_the_environment(index, tmp_path):
    log = tmp_path / "serve.log"
    proc, url = _start(index, log, env={"MMSEARCH_TOKEN": TOKEN})
    try:
        banner = log.read_text()
        assert TOKEN not in banner and "#token=<token>" in banner
        assert httpx.get(f"{url}/api/info").status_code == 401
        with Client(url, token=TOKEN) as client:
            assert client.info()["items"] == 2
    finally:
        _stop(proc)
