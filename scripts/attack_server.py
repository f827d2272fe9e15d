"""A bounded attack run against `mmsearch serve`, for before/after comparisons of the server's hardening.

    PYTHONPATH=. python scripts/attack_server.py --seconds 60

It builds a temporary library and index with a tiny random open_clip model (nothing is
downloaded), starts `python -m mmsearch serve` on 127.0.0.1 (never any other address) as a
subprocess, and runs, within the time limit:

  race      an indexed folder swapped for a symlink to an outside folder (same file names) in a
            loop while clients fetch /file and /thumbnail (sizes 32..1024); afterwards every
            thumbnail size requested during the race is fetched again with the folder in place
  bombs     one request with four 9,400 x 9,400 PNGs (10 KB each), and one 7,900 x 7,900 PNG
            just under the indexing pixel cap
  sizes     150 thumbnail GETs of one photo at different sizes
  hosts     requests with foreign Host headers (DNS rebinding) on every endpoint
  traversal path tricks on every parameter (item ids, size, q, terms, form fields, static paths)
  names     files whose names are not UTF-8 or hold controls, quotes, markup, RTL marks...
  thresholds near-duplicate thresholds from 0.0001 to 0.97 on /api/search (plain and fused,
            GET and POST) and /api/duplicates, over --texts extra JSONL texts, timed against the
            same query without dedup
  nul       NUL characters in q (vector, lexical, hybrid), under, camera, and /knn-service text
  ranges    Range headers with superscript digits and other malformed ranges on /file
  knn       /knn-service embedding_input with huge finite components (3e38, 1e30, 1e308) compared
            with the same direction at unit scale, and an invalid base64 image ("AAAA"): does it
            load the torch model (libtorch mapped into the server afterwards)?
  cookie    a second server with --token: the session cookie beside an unrelated cookie holding
            an unbalanced quote
  video     an indexed small video swapped for a 12000x12000 MJPEG of the same name, three
            /thumbnail requests at once (the indexer refuses such a file: over the pixel cap)

It prints a table and one JSON line: requests sent, 5xx answers, leaks (outside bytes or the
outside image served), truncated bodies, peak server RSS growth, thumbnail cache bytes, the
slowest request of the later phases and what came back silently wrong. The server code is
whatever `mmsearch` PYTHONPATH names, so the same script measures any commit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

TINY_CONFIG = {  # tests/conftest.py's tiny model: 1.7M parameters, the real tokenizer
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SECRET = b"ATTACK-SECRET-MARKER outside every indexed root\n"
REQUEST_SECONDS = 120  # a request of the later phases still unanswered after this counts as "timed out"
PASSWD_MARK = b"root:x:0:0"
RED, BLUE = (220, 30, 30), (30, 30, 220)
ODD_NAMES = [b"\xff\xfe.jpg", b"caf\xe9.jpg", b"line\nbreak.jpg", b'quote"s.jpg', b"<img src=x onerror=alert(1)>.jpg",
             b"100%25 %2F.jpg", b"\xe2\x80\xaeRTL-gpj.jpg", b"-dash.jpg", b"a" * 200 + b".jpg", b"tab\tname.jpg",
             b"back\\slash.jpg", b"semi;colon=x.jpg", b"notes-\xff.txt"]


# -- setting up --------------------------------------------------------------------------------------
def write_tiny_model(folder: Path) -> tuple[Path, Path]:
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mmattack.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("mmattack")
    checkpoint = folder / "mmattack.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


def noisy_photo(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    Image.fromarray(blocks, "RGB").resize(size, Image.BILINEAR).save(path, quality=92)


def build_library(base: Path, texts: int = 0) -> tuple[Path, Path]:
    root, outside = base / "library", base / "outside"
    album = root / "album"
    album.mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (400, 300), RED).save(album / "pic.png")
    (album / "note.txt").write_text("inside: a harmless note\n")
    Image.new("RGB", (500, 375), BLUE).save(outside / "pic.png")
    (outside / "note.txt").write_bytes(SECRET * 200)
    (outside / "secret.txt").write_bytes(SECRET)
    noisy_photo(root / "photo.jpg", (2400, 1800), seed=1)
    for n in range(3):
        noisy_photo(root / f"other{n}.jpg", (320, 240), seed=10 + n)
    (root / "captions.jsonl").write_text(json.dumps({"text": "a dog on grass"}) + "\n")
    if texts:  # enough items for a threshold that joins everything to cost something (a second root)
        (base / "bulk").mkdir()
        (base / "bulk" / "many.jsonl").write_text("".join(json.dumps({"text": f"red note {n}: item {n * 7} of the catalogue"})
                                                 + "\n" for n in range(texts)))
    from support.videogen import make_video

    make_video(root / "clip.mp4", [1.0, 1.0], width=160, height=96, gop=5)
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    odd = root / "odd"
    odd.mkdir()
    for n, raw in enumerate(ODD_NAMES):
        path = os.fsdecode(os.fsencode(str(odd)) + b"/" + raw)
        if raw.endswith(b".txt"):
            Path(path).write_text("a note whose name is not UTF-8")
        else:
            noisy_photo(Path(path), (120, 90), seed=100 + n)
    return root, outside


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m mmsearch serve` on 127.0.0.1 in a subprocess."""

    def __init__(self, index: Path, log: Path, token: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmsearch", "serve", "--index", str(index), "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", *(["--token", token] if token else [])],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def status(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def maps(self, name: str) -> bool:
        """Whether a library whose file name holds ``name`` is mapped into the server."""
        try:
            return name in Path(f"/proc/{self.proc.pid}/maps").read_text()
        except OSError:
            return False

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.slowest: tuple[float, str] = (0.0, "")  # of the requests sent through ``timed``

    def add(self, key: str, example: str = "", n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n
            if example and key not in self.examples:
                self.examples[key] = example[:160]


def is_blue(jpeg: bytes) -> bool | None:
    try:
        r, _, b = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32).mean(axis=(0, 1))
    except Exception:  # noqa: BLE001 - not an image at all
        return None
    return bool(b > r)


def item_ids(http: httpx.Client, root: Path) -> dict[str, dict]:
    hits = http.get("/api/search", params={"q": "anything", "k": 1000, "under": str(root)}).json()["hits"]
    return {h["path"] + (":" + h["locator"] if h.get("locator") else ""): h for h in hits}


# -- phases ------------------------------------------------------------------------------------------
def phase_race(url: str, root: Path, outside: Path, ids: dict[str, dict], seconds: float, t: Tally) -> dict:
    album, parked = root / "album", root / "album.parked"
    pic = next(h["id"] for p, h in ids.items() if p.endswith("/album/pic.png"))
    note = next(h["id"] for p, h in ids.items() if p.endswith("/album/note.txt"))
    inside_pic, outside_pic = (album / "pic.png").read_bytes(), (outside / "pic.png").read_bytes()
    inside_note = (album / "note.txt").read_bytes()
    stop = threading.Event()
    sizes_used: set[int] = set()

    def swapper() -> None:
        while not stop.is_set():
            os.rename(album, parked)
            os.symlink(outside, album)
            time.sleep(0.001)
            os.unlink(album)
            os.rename(parked, album)
            t.add("race swaps")
            time.sleep(0.0005)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                thumb = rng.random() < 0.5
                target = pic if thumb or rng.random() < 0.5 else note
                size = rng.randint(32, 1024)
                path = f"/api/items/{target}/{'thumbnail' if thumb else 'file'}"
                t.add("requests")
                try:
                    r = http.get(path, params={"size": size} if thumb else None)
                except httpx.HTTPError as exc:
                    t.add("truncated", f"{path}: {type(exc).__name__}")
                    continue
                if r.status_code >= 500:
                    t.add("5xx", f"{path}: {r.status_code}")
                elif r.status_code == 200 and thumb:
                    sizes_used.add(size)
                    t.add("race: thumbnails served")
                    if is_blue(r.content):
                        t.add("leaks: outside image in thumbnail", f"{path}?size={size}")
                elif r.status_code == 200:
                    expected = inside_pic if target == pic else inside_note
                    if r.content == expected:
                        t.add("race: files served intact")
                        continue
                    if r.content in (outside_pic, SECRET * 200) or SECRET[:20] in r.content:
                        t.add("leaks: outside bytes in /file", path)
                    else:
                        t.add("truncated", f"{path}: {len(r.content)} of {len(expected)} bytes")

    threads = [threading.Thread(target=swapper)] + [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    poisoned = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for size in sorted(sizes_used):
            t.add("requests")
            r = http.get(f"/api/items/{pic}/thumbnail", params={"size": size})
            if r.status_code == 200 and is_blue(r.content):
                poisoned += 1
            elif r.status_code >= 500:
                t.add("5xx", f"thumbnail after race: {r.status_code}")
    t.add("poisoned thumbnails after the race", n=poisoned)
    return {"thumbnail sizes requested in the race": len(sizes_used), "poisoned thumbnails after the race": poisoned}


def bilevel_png(width: int, height: int, mode: str = "1") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), 0).save(out, "PNG", optimize=True)
    return out.getvalue()


def phase_bombs(url: str, server: Server, t: Tally) -> dict:
    result: dict = {}
    cases = {  # the smaller first: memory a process has once grown to is seldom given back
        "one 7900x7900 RGB PNG": [bilevel_png(7900, 7900, "RGB")],
        "four 9400x9400 PNGs": [bilevel_png(9400, 9400)] * 4,
    }
    with httpx.Client(base_url=url, timeout=120) as http:
        for name, images in cases.items():
            server.reset_peak()
            before = server.status("VmRSS")
            files = [("images", (f"bomb{n}.png", data, "image/png")) for n, data in enumerate(images)]
            started = time.perf_counter()
            t.add("requests")
            try:
                r = http.post("/api/search", files=files)
                status = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            took = time.perf_counter() - started
            grew = (server.status("VmHWM") - before) / 2**20
            if isinstance(status, int) and status >= 500:
                t.add("5xx", f"bomb {name}: {status}")
            result[name] = {"request KB": round(sum(map(len, images)) / 1024, 1), "status": status,
                            "seconds": round(took, 2), "server RSS growth MB": round(grew)}
    return result


def phase_sizes(url: str, index: Path, ids: dict[str, dict], t: Tally) -> dict:
    photo = next(h["id"] for p, h in ids.items() if p.endswith("/photo.jpg"))
    thumbs = index / ".thumbs"
    before = sum(f.stat().st_size for f in thumbs.glob("*.jpg")) if thumbs.is_dir() else 0
    files_before = len(list(thumbs.glob("*.jpg"))) if thumbs.is_dir() else 0
    with httpx.Client(base_url=url, timeout=60) as http:
        for n in range(150):
            size = 32 + round(n * (1024 - 32) / 149)
            t.add("requests")
            r = http.get(f"/api/items/{photo}/thumbnail", params={"size": size})
            if r.status_code >= 500:
                t.add("5xx", f"thumbnail size {size}: {r.status_code}")
    after = sum(f.stat().st_size for f in thumbs.glob("*.jpg")) if thumbs.is_dir() else 0
    return {"150 sizes: cache files written": len(list(thumbs.glob("*.jpg"))) - files_before,
            "150 sizes: cache bytes written": after - before}


def raw_request(url: str, path: str, host: str | None = None, method: str = "GET", body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    import http.client

    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return -1, str(exc).encode()
    finally:
        conn.close()


def phase_hosts(url: str, ids: dict[str, dict], t: Tally) -> dict:
    item = next(h["id"] for p, h in ids.items() if p.endswith("/photo.jpg"))
    port = url.rsplit(":", 1)[1]
    paths = ["/", "/api/info", "/api/search?q=dog", f"/api/items/{item}", f"/api/items/{item}/file",
             f"/api/items/{item}/thumbnail", f"/api/items/{item}/similar", "/openapi.json"]
    hosts = ["evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "localhost.attacker.test",
             f"rebind.attacker.test:{port}", "attacker.test:80"]
    accepted = 0
    for host in hosts:
        for path in paths:
            t.add("requests")
            status, _ = raw_request(url, path, host=host)
            if 200 <= status < 300:
                accepted += 1
            elif status >= 500:
                t.add("5xx", f"host {host} {path}: {status}")
    t.add("foreign Host answered 2xx", n=accepted)
    return {"foreign Host requests": len(hosts) * len(paths), "foreign Host answered 2xx": accepted}


def phase_traversal(url: str, root: Path, outside: Path, ids: dict[str, dict], t: Tally) -> dict:
    item = next(h["id"] for p, h in ids.items() if p.endswith("/photo.jpg"))
    secret = str(outside / "secret.txt")
    enc = secret.replace("/", "%2F")
    gets = [
        "/api/items/..%2F..%2F..%2F..%2Fetc%2Fpasswd/file", f"/api/items/{enc}/file", "/api/items/%2Fetc%2Fpasswd/file",
        f"/api/items/{item}%2F..%2F..%2Fsecret.txt/file", "/api/items/../../../../etc/passwd",
        f"/api/items/{item}/file/../../../../etc/passwd", "/api/items/-1/file", "/api/items/0x1/file",
        "/api/items/1.0/file", "/api/items/%31%2e%30/file", "/api/items/%EF%BC%91/file", f"/api/items/{item}%00/file",
        "/api/file?path=/etc/passwd", f"/api/file?path={enc}", "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/static/%2Fetc%2Fpasswd", "/static/..%5C..%5Cserver.py",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/docs/assets/../../../../etc/passwd",
        "/docs/assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd", f"/api/items/{item}/thumbnail?size=..%2F..%2Fetc%2Fpasswd",
        f"/api/items/{item}/thumbnail?size=-1", f"/api/items/{item}/thumbnail?size=99999999999999999999",
        f"/api/items/{item}/thumbnail?size=0x40", f"/api/items/{item}/similar?k=..%2Fetc",
        f"/api/search?q={enc}&k=3", "/api/search?q=/etc/passwd&k=3", "/api/search?q=x&type=..%2F..%2Fetc",
    ]
    link = next((h["id"] for p, h in ids.items() if p.endswith("/link-out.txt")), None)
    if link is not None:
        gets += [f"/api/items/{link}/file", f"/api/items/{link}/thumbnail"]
    posts = [
        {"terms": json.dumps([{"kind": "image", "value": "/etc/passwd"}])},
        {"terms": json.dumps([{"kind": "image", "value": secret, "upload": 0}])},
        {"terms": json.dumps([{"kind": "item", "value": "../../etc/passwd"}])},
        {"terms": json.dumps([{"kind": "item", "value": f"{item}/../1"}])},
        {"terms": json.dumps([{"kind": "text", "value": secret}])},
        {"item": "../etc/passwd"},
        {"q": "/etc/passwd", "item": str(item)},
    ]
    leaks = 0
    linked = next((h for p, h in ids.items() if p.endswith("/link-out.txt")), None)
    indexed_secret = linked is not None and SECRET[:20].decode() in (linked.get("text") or "")

    def scrub(body: bytes) -> bytes:
        # The indexer's own doing (a file symlink read through at indexing time) is reported apart.
        return body.replace(SECRET.strip(), b"") if indexed_secret else body

    for path in gets:
        t.add("requests")
        status, body = raw_request(url, path)
        if path.startswith("/api/search"):  # search answers show indexed texts; files are never scrubbed
            body = scrub(body)
        if status >= 500:
            t.add("5xx", f"{path}: {status}")
        if PASSWD_MARK in body or SECRET[:20] in body:
            leaks += 1
            t.add("leaks: traversal", path)
    with httpx.Client(base_url=url, timeout=30) as http:
        for data in posts:
            t.add("requests")
            r = http.post("/api/search", data=data)
            if r.status_code >= 500:
                t.add("5xx", f"POST {data}: {r.status_code}")
            if PASSWD_MARK in scrub(r.content) or SECRET[:20] in scrub(r.content):
                leaks += 1
                t.add("leaks: traversal", f"POST {data}")
            t.add("requests")
            r = http.post("/api/search", json=data)
            if r.status_code >= 500:
                t.add("5xx", f"POST json {data}: {r.status_code}")
    return {"traversal requests": len(gets) + 2 * len(posts), "traversal leaks": leaks,
            "outside text indexed through a file symlink (indexer)": indexed_secret}


def phase_names(url: str, ids: dict[str, dict], t: Tally) -> dict:
    odd = {p: h for p, h in ids.items() if "/odd/" in p}
    bad = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        t.add("requests")
        r = http.get("/api/search", params={"q": "odd", "k": 100})
        if r.status_code >= 500:
            bad += 1
            t.add("5xx", f"search listing odd names: {r.status_code}")
        for path, hit in odd.items():
            for suffix in ("", "/file", "/similar", "/thumbnail" if hit["modality"] == "image" else None):
                if suffix is None:
                    continue
                t.add("requests")
                try:
                    r = http.get(f"/api/items/{hit['id']}{suffix}")
                except httpx.HTTPError as exc:
                    bad += 1
                    t.add("odd names: broken answer", f"{suffix}: {type(exc).__name__}")
                    continue
                if r.status_code >= 300:
                    bad += 1
                    t.add("5xx" if r.status_code >= 500 else "odd names: refused",
                          f"{path!r}{suffix}: {r.status_code}")
                elif suffix in ("", "/similar"):
                    try:
                        r.content.decode("utf-8")
                    except UnicodeDecodeError:
                        bad += 1
                        t.add("odd names: invalid UTF-8", path)
    return {"odd-name items": len(odd), "odd-name failed answers": bad}


def timed(t: Tally, label: str, send) -> tuple[int, bytes, float]:
    """One request through ``send()`` -> (status, body); counted, 5xx noted, its time kept."""
    t.add("requests")
    started = time.perf_counter()
    try:
        status, body = send()
    except httpx.TimeoutException:
        status, body = -1, b""
        t.add("timed out", label)
    except httpx.HTTPError as exc:
        status, body = -1, str(exc).encode()
        t.add("truncated", f"{label}: {type(exc).__name__}")
    took = time.perf_counter() - started
    if status >= 500:
        t.add("5xx", f"{label}: {status} {body[:120]!r}")
    with t.lock:
        if took > t.slowest[0]:
            t.slowest = (took, label)
    return status, body, took


def phase_thresholds(url: str, t: Tally) -> dict:
    thresholds = [0.0001, 0.01, 0.3, 0.5, 0.9, 0.97]
    with httpx.Client(base_url=url, timeout=REQUEST_SECONDS) as http:
        get = lambda path, params: lambda: (lambda r: (r.status_code, r.content))(http.get(path, params=params))  # noqa: E731
        base = [timed(t, "default query", get("/api/search", {"q": "red"}))[2] for _ in range(5)]
        baseline = sorted(base)[2]
        worst, statuses = (0.0, ""), Counter()
        for threshold in thresholds:
            cases = [("/api/search", {"q": "red", "dedup_threshold": threshold}),
                     ("/api/search", {"q": "red", "dedup_threshold": threshold, "fusion": "late"}),
                     ("/api/search", {"q": "red", "dedup_threshold": threshold, "mode": "hybrid"}),
                     ("/api/search", {"q": "red", "dedup_threshold": threshold, "k": 1000}),
                     ("/api/duplicates", {"threshold": threshold})]
            for path, params in cases:
                label = f"{path}?{'&'.join(f'{k}={v}' for k, v in params.items())}"
                status, _, took = timed(t, label, get(path, params))
                statuses[status] += 1
                if took > worst[0]:
                    worst = (took, label)
            label = f"POST /api/search dedup_threshold={threshold}"
            status, _, took = timed(t, label, lambda: (lambda r: (r.status_code, r.content))(
                http.post("/api/search", json={"q": "red", "dedup_threshold": threshold})))
            statuses[status] += 1
            worst = max(worst, (took, label))
    return {"thresholds: default query ms (median of 5)": round(baseline * 1000, 1),
            "thresholds: slowest request s": round(worst[0], 3), "thresholds: slowest is": worst[1],
            "thresholds: slowest / default query": round(worst[0] / baseline, 1),
            "thresholds: statuses": dict(sorted(statuses.items()))}


def phase_nul(url: str, t: Tally) -> dict:
    paths = [f"/api/search?q=red%00car&mode={mode}" for mode in ("vector", "lexical", "hybrid")]
    paths += ["/api/search?q=red%00car&mode=hybrid&fusion=late", "/api/search?q=red&under=%00",
              "/api/search?q=red&under=%2Ftmp%2F%00x", "/api/search?q=red&camera=%00", "/api/search?q=red&camera=a%00b",
              "/api/items/1/similar?under=%00", "/api/items/1/similar?camera=%00"]
    statuses: Counter = Counter()
    for path in paths:
        status, _, _ = timed(t, f"nul {path}", lambda: raw_request(url, path))
        statuses[status] += 1
    with httpx.Client(base_url=url, timeout=60) as http:
        for body in ({"q": "red\x00", "mode": "lexical"}, {"q": "red", "under": "\x00"}, {"q": "red", "camera": "\x00"}):
            status, _, _ = timed(t, f"nul POST {body}", lambda: (lambda r: (r.status_code, r.content))(
                http.post("/api/search", json=body)))
            statuses[status] += 1
        status, _, _ = timed(t, "nul knn text", lambda: (lambda r: (r.status_code, r.content))(
            http.post("/knn-service", content=json.dumps({"text": "red\x00car"}))))
        statuses[status] += 1
    return {"NUL requests": sum(statuses.values()), "NUL statuses": dict(sorted(statuses.items()))}


def phase_ranges(url: str, ids: dict[str, dict], t: Tally) -> dict:
    item = next(h["id"] for p, h in ids.items() if p.endswith("/photo.jpg"))
    headers = ["bytes=\xb2-", "bytes=0-\xb3", "bytes=-\xb9", "bytes=\xb9\xb2-", "bytes=1-\xb2\xb2", "bytes= -",
               "bytes=--1", "bytes=1--2", "bytes=99999999999999999999999-", "bytes=0-0,1-1", "bytes=+1-2", "bytes=0x10-",
               "bytes=1_0-", "bytes=\u0661-", "bytes=-0", "bytes=5-1"]
    statuses: Counter = Counter()
    for header in headers:
        try:
            header.encode("latin-1")
        except UnicodeEncodeError:
            continue  # not sendable as a header value
        status, _, _ = timed(t, f"range {header!r}", lambda: raw_request(url, f"/api/items/{item}/file",
                                                                         headers={"Range": header}))
        statuses[status] += 1
    return {"range requests": sum(statuses.values()), "range statuses": dict(sorted(statuses.items()))}


def phase_knn(url: str, server: Server, t: Tally) -> dict:
    wrong = 0
    with httpx.Client(base_url=url, timeout=120) as http:
        def knn(body: dict) -> tuple[int, bytes]:
            r = http.post("/knn-service", content=json.dumps(body))
            return r.status_code, r.content

        _, plain, _ = timed(t, "knn unit", lambda: knn({"embedding_input": [1.0] * 32, "num_images": 10}))
        expected = json.loads(plain)
        for scale in (3e38, 1e30, 1e308):
            status, body, _ = timed(t, f"knn [{scale:g}]*32", lambda: knn({"embedding_input": [scale] * 32,
                                                                            "num_images": 10}))
            if status == 200:
                got = json.loads(body)
                same = [r["id"] for r in got] == [r["id"] for r in expected] and all(
                    abs(a["similarity"] - b["similarity"]) < 1e-4 for a, b in zip(got, expected))
                if not same:
                    wrong += 1
                    t.add("silently wrong", f"knn [{scale:g}]*32: {len(got)} results, "
                                            f"similarities {[r['similarity'] for r in got][:3]}")
        torch_before = server.maps("libtorch")
        status, _, took = timed(t, "knn image AAAA", lambda: knn({"image": "AAAA"}))
        torch_after = server.maps("libtorch")
    return {"knn huge components: silently wrong": wrong, "knn AAAA image": status,
            "knn AAAA seconds": round(took, 2), "knn AAAA loaded torch": torch_after and not torch_before}


def phase_cookie(index: Path, base: Path, t: Tally) -> dict:
    token = "attack-cookie-token"
    server = Server(index, base / "server-token.log", token=token)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            session = http.post("/api/session", headers={"Authorization": f"Bearer {token}"})
            cookie = session.headers.get("set-cookie", "").split(";", 1)[0]
            refused = 0
            for header in (cookie, f'theme="dark; {cookie}', f'{cookie}; other="x', f'a="b\\"; {cookie}; c=[d]'):
                http.cookies.clear()
                status, _, _ = timed(t, f"cookie {header[:40]}", lambda: raw_request(server.url, "/api/info",
                                                                                     headers={"Cookie": header}))
                if status != 200:
                    refused += 1
                    t.add("cookie: valid session refused", f"{header[:60]}: {status}")
    finally:
        server.stop()
    return {"cookie: valid session refused": refused}


def giant_mjpeg(path: Path, side: int = 12000) -> None:
    import av

    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width = stream.height = side
        stream.pix_fmt = "yuvj420p"
        frame = av.VideoFrame(side, side, "yuvj420p")
        for plane in frame.planes:  # a flat grey picture: small file, full-size decode
            np.frombuffer(plane, np.uint8)[:] = 128
        for n in range(2):
            frame.pts = n
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def phase_video(url: str, server: Server, root: Path, base: Path, t: Tally) -> dict:
    with httpx.Client(base_url=url, timeout=REQUEST_SECONDS) as http:
        frames = [h for h in http.get("/api/search", params={"q": "red", "k": 100, "type": "video"}).json()["hits"]]
        if not frames:
            return {"video swap": "no video indexed"}
        frame = frames[0]["id"]
        giant = base / "giant.avi"
        giant_mjpeg(giant)
        os.replace(giant, root / "clip.mp4")
        server.reset_peak()
        before = server.status("VmRSS")
        results: list = []

        def one(size: int) -> None:
            results.append(timed(t, f"video thumbnail size {size}", lambda: (lambda r: (r.status_code, r.content))(
                http.get(f"/api/items/{frame}/thumbnail", params={"size": size}))))

        threads = [threading.Thread(target=one, args=(size,)) for size in (64, 256, 1024)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        grew = (server.status("VmHWM") - before) / 2**20
    return {"video swap: thumbnail statuses": sorted(r[0] for r in results),
            "video swap: slowest s": round(max(r[2] for r in results), 2),
            "video swap: server RSS growth MB": round(grew)}


# -- running -----------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit for the whole run (default 60)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--texts", type=int, default=2500, help="JSONL texts added to the library, so that "
                        "near-duplicate thresholds have work to do (default 2500)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    base = Path(tempfile.mkdtemp(prefix="mmsearch-attack-"))
    server = None
    try:
        from mmsearch import Engine

        config, checkpoint = write_tiny_model(base / "model")
        root, outside = build_library(base, args.texts)
        index = base / "index"
        with Engine(index, model=str(config), pretrained=str(checkpoint)) as engine:
            engine.add([root, base / "bulk"] if args.texts else [root])
        server = Server(index, base / "server.log")
        t = Tally()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            ids = item_ids(http, root)
            http.get("/api/items/1/thumbnail")  # warm up
        start_rss = server.status("VmRSS")
        server.reset_peak()
        report: dict = {"server": server.url, "items": len(ids)}
        left = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
        report.update(phase_race(server.url, root, outside, ids, max(2.0, left() * 0.4), t))
        race_peak = server.status("VmHWM")
        report["bombs"] = phase_bombs(server.url, server, t)
        report.update(phase_sizes(server.url, index, ids, t))
        report.update(phase_hosts(server.url, ids, t))
        report.update(phase_traversal(server.url, root, outside, ids, t))
        report.update(phase_names(server.url, ids, t))
        report.update(phase_thresholds(server.url, t))
        report.update(phase_nul(server.url, t))
        report.update(phase_ranges(server.url, ids, t))
        report.update(phase_knn(server.url, server, t))
        report.update(phase_cookie(index, base, t))
        report.update(phase_video(server.url, server, root, base, t))
        thumbs = index / ".thumbs"
        bomb_growth = max(b["server RSS growth MB"] for b in report["bombs"].values())
        report.update({
            "requests": t.counts["requests"],
            "5xx": t.counts["5xx"],
            "leaks: outside bytes in /file": t.counts["leaks: outside bytes in /file"],
            "leaks: outside image in thumbnail": t.counts["leaks: outside image in thumbnail"],
            "truncated or cut bodies": t.counts["truncated"],
            "race swaps": t.counts["race swaps"],
            "race: files served intact": t.counts["race: files served intact"],
            "race: thumbnails served": t.counts["race: thumbnails served"],
            "peak server RSS growth MB": max(round((race_peak - start_rss) / 2**20), bomb_growth),
            "thumbnail cache bytes": sum(f.stat().st_size for f in thumbs.glob("*.jpg")) if thumbs.is_dir() else 0,
            "thumbnail cache files": len(list(thumbs.glob("*.jpg"))) if thumbs.is_dir() else 0,
            "silently wrong": t.counts["silently wrong"],
            "timed out": t.counts["timed out"],
            "slowest request s (later phases)": round(t.slowest[0], 3),
            "slowest request": t.slowest[1],
            "examples": t.examples,
        })
        print_table(report)
        print(json.dumps(report, default=str))
        return 0
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            for dirpath, dirnames, _ in os.walk(base):  # the race may leave a symlink behind
                for name in dirnames:
                    if os.path.islink(os.path.join(dirpath, name)):
                        os.unlink(os.path.join(dirpath, name))
            shutil.rmtree(base, ignore_errors=True)


def print_table(report: dict) -> None:
    rows = [(k, v) for k, v in report.items() if k not in ("bombs", "examples")]
    for name, bomb in report["bombs"].items():
        rows.append((f"bomb: {name}", f"{bomb['status']} in {bomb['seconds']} s, +{bomb['server RSS growth MB']} MB "
                                      f"({bomb['request KB']} KB sent)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    for key, example in report["examples"].items():
        print(f"  e.g. {key}: {example!r}")


if __name__ == "__main__":
    sys.exit(main())
