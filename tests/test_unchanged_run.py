"""A re-run that finds nothing to do pays for nothing: no decode workers (no forkserver), none of
the encoders' libraries or FAISS imported, no vector file loaded or written again; and no
`mmsearch index` leaves a process behind once it has exited, after Ctrl-C too. Each run is a
real `python -m mmsearch` process in a session of its own, whose members are looked for in /proc
once it has exited."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ENV, make_image

# Writes the modules the command really imported (a lazily imported module that was never used
# does not count) to the file named first, then runs `python -m mmsearch` with the rest.
RECORDER = """\
import atexit, json, runpy, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(
    name for name, module in list(sys.modules.items()) if type(module).__name__ != "_LazyModule"))))
sys.argv = ["mmsearch"] + sys.argv[2:]
runpy.run_module("mmsearch", run_name="__main__", alter_sys=True)
"""
ENCODING_ONLY = ("torch", "open_clip", "onnxruntime", "faiss", "pebble", "av", "multiprocessing.forkserver")


def session_members(sid: int) -> list[str]:
    """Command lines of the processes still running in session ``sid`` (a zombie, a process that
    has exited and waits for init to collect it, runs nothing)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if os.getsid(int(pid)) == sid and state != "Z":
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            pass  # gone meanwhile
    return found


def start(*args, recorder: Path | None = None, modules: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, str(recorder), str(modules)] if recorder else [sys.executable, "-m", "mmsearch"]
    return subprocess.Popen([*command, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ENV, start_new_session=True)


def finished(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, list[str], str]:
    """(exit code, stderr, processes of its session left, stdout) once ``proc`` has exited."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace"), session_members(proc.pid), out.decode(errors="replace")


def stamps(idx: Path) -> dict[str, int]:
    """Modification times of the index's files but the database's own (each run records its roots)."""
    return {p.name: p.stat().st_mtime_ns for p in idx.iterdir() if not p.name.startswith(("mmsearch.db", ".lock"))}


def library(tmp_path: Path, n: int = 8) -> Path:
    root = tmp_path / "photos"
    for i in range(n):
        make_image(root / f"p{i}.jpg", seed=i)
    (root / "note.txt").write_text("a note about the holiday")
    return root


def test_an_unchanged_rerun_starts_no_workers_imports_no_encoder_and_leaves_nothing(tmp_path, tiny_model):
    root, idx = library(tmp_path), tmp_path / "idx"
    code, err, left, _ = finished(start("index", root, "-i", idx, *tiny_model.args, "-q"))
    assert code == 0, err
    assert left == []  # the first run's decode workers, their server and its resource tracker are gone
    before = stamps(idx)
    recorder, modules = tmp_path / "recorder.py", tmp_path / "modules.json"
    recorder.write_text(RECORDER)
    for args in (["index", "-i", idx, "-q"], ["index", root, "-i", idx, "--json"]):  # a bare re-run and a named root
        code, err, left, out = finished(start(*args, recorder=recorder, modules=modules))
        assert code == 0, err
        assert left == []
        loaded = set(json.loads(modules.read_text()))
        assert not [m for m in ENCODING_ONLY if m in loaded], sorted(m for m in ENCODING_ONLY if m in loaded)
    assert json.loads(out)["unchanged"] == 9
    # Nothing written again: the vectors file, the manifest, the exports are as they were.
    assert stamps(idx) == before


def test_a_run_that_decodes_and_one_stopped_by_ctrl_c_leave_no_process(tmp_path, tiny_model):
    root, idx = library(tmp_path), tmp_path / "idx"
    assert finished(start("index", root, "-i", idx, *tiny_model.args, "-q"))[0] == 0
    for i in range(3):  # new photos: decoded by workers forked from the forkserver
        make_image(root / f"new{i}.png", seed=100 + i)
    code, err, left, out = finished(start("index", "-i", idx, "--json"))
    assert code == 0 and json.loads(out)["added"] == 3, err
    assert left == []
    # Ctrl-C while a first run has its forkserver up (started before the engine imports).
    fresh = tmp_path / "fresh"
    proc = start("index", root, "-i", fresh, *tiny_model.args, "-q")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and \
            not any("forkserver" in c for c in session_members(proc.pid)):
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
    code, err, left, _ = finished(proc)
    assert left == [], (code, err)
