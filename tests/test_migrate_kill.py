"""A `mmsearch migrate` killed (SIGKILL, a real process) at any point: the half copy is never
taken for an index (`check` is never ok with rows missing, `query` says to run the migrate
again), and the same migrate run again completes the copy, row for row. SQLite -> SQLite folder
and SQLite -> PostgreSQL (the embedded PostgreSQL fixture)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENV, Backend, new_database, run

from mmsearch.storage import IndexStore, VectorSettings, writer_lock

ITEMS = 4000
DIM = 32
# Seconds after the copy's manifest appears when the migrate is killed: at once (rows being
# copied), then later (vectors being built, the manifest updated), then maybe after it finished.
DELAYS = (0.0, 0.3, 1.0, 3.0)
ROWS_SQL = "SELECT i.id, i.path, i.locator, i.content_hash, e.vector FROM items i JOIN embeddings e ON e.item_id = i.id"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An SQLite index of ITEMS synthetic rows (enough that copying them takes a while)."""
    folder = tmp_path_factory.mktemp("migrate-kill") / "source"
    vectors = np.random.default_rng(0).standard_normal((ITEMS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = IndexStore.create(folder, {"name": "synthetic", "fingerprint": "synthetic-migrate"}, DIM, VectorSettings())
    try:
        with writer_lock(folder):
            with store.catalogue.write() as w:
                w.record_root("/lib", {}, done=True)
                w.bulk_insert([dict(id=i + 1, path=f"/lib/{i % 50:02d}/img{i}.jpg", locator="", modality="image",
                                    size=1, mtime_ns=i, content_hash=f"{i:032x}") for i in range(ITEMS)], vectors)
            store.fit_vectors(force=True)
            store.save_vectors()
    finally:
        store.close()
    return folder


def _rows(idx: Path, backend: Backend) -> dict:
    return {row[0]: (row[1], row[2], row[3], bytes(row[4])) for row in backend.sql(idx, ROWS_SQL)}


def _kill_migrate(args: list[str], manifest: Path, delay: float) -> bool:
    """Run ``mmsearch migrate ARGS``, SIGKILL it ``delay`` s after ``manifest`` appears; True
    when it was still running (killed)."""
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "migrate", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return killed


def _killed_then_rerun(source: Path, reference: dict, target: Path, args: list[str], backend: Backend,
                       delay: float) -> bool:
    """Kill a migrate into ``target``, check what it left, run it again; True when the kill left
    an unfinished copy."""
    killed = _kill_migrate(args, target / "manifest.json", delay)
    check = run("check", "-i", target, "--json", env=backend.env())
    doc = json.loads(check.stdout) if check.stdout.strip() else None
    finished = doc is not None and check.returncode == 0
    unfinished = False
    if finished:  # only a copy that finished checks as ok: every row is there
        assert doc["items"] == ITEMS and _rows(target, backend) == reference, (delay, doc)
    elif target.exists():
        unfinished = True
        assert check.returncode == 1, check
        assert doc is not None and doc["state"] == "damaged", check
        assert [p["kind"] for p in doc["problems"]] == ["unfinished_copy"], doc
        query = run("query", "a cat", "-i", target, env=backend.env())
        message = query.stderr.decode()
        assert query.returncode == 1 and "migrate" in message and "Traceback" not in message, message
        assert len(message.strip().splitlines()) == 1, message
    assert killed or finished
    # The same migrate again: starts the copy over (or, after a finished one, refuses to write over it).
    again = run("migrate", *args, "--json", env=backend.env())
    if finished:
        assert again.returncode == 1 and b"already holds" in again.stderr
    else:
        assert again.returncode == 0, again.stderr.decode()
        assert json.loads(again.stdout)["rows"]["items"] == ITEMS
    assert _rows(target, backend) == reference
    result = run("check", "-i", target, "--json", env=backend.env())
    assert result.returncode == 0 and json.loads(result.stdout)["items"] == ITEMS
    return unfinished


@pytest.mark.slow  # a kill loop (real SIGKILLs at four moments): CI runs it in the slow pass
def test_killed_migrate_to_sqlite_is_never_a_half_index(tmp_path, source):
    backend = Backend("sqlite")
    reference = _rows(source, backend)
    unfinished = 0
    for n, delay in enumerate(DELAYS):
        target = tmp_path / f"copy{n}"
        unfinished += _killed_then_rerun(source, reference, target, ["-i", str(source), "--to", str(target)],
                                         backend, delay)
    assert unfinished, "no kill landed while the copy was being made"


@pytest.mark.slow
def test_killed_migrate_to_postgres_is_never_a_half_index(tmp_path, source, pg_server):
    reference = _rows(source, Backend("sqlite"))
    unfinished = 0
    for n, delay in enumerate(DELAYS):
        backend = Backend("postgres", new_database(pg_server))
        target = tmp_path / f"copy{n}"
        args = ["-i", str(source), "--to", backend.db, "--to-index", str(target)]
        unfinished += _killed_then_rerun(source, reference, target, args, backend, delay)
    assert unfinished, "no kill landed while the copy was being made"
