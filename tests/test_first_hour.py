"""What a new user hits in the first hour (issue 11): each test reproduces one defect of a fresh
trial through real files, real subprocesses or the real CLI, and fails without its fix."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import IMAGE_COUNT, TEXT_COUNT, make_image
from mmsearch import Engine
from mmsearch.encoders import ModelSpec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV = dict(os.environ, HF_HUB_OFFLINE="1")


def run(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m mmsearch ARGS`` in a new process (bytes out, so odd names arrive exactly)."""
    return subprocess.run([sys.executable, "-m", "mmsearch", *map(str, args)], capture_output=True,
                          env=env or ENV, cwd=cwd, timeout=timeout)


def wait_for_items(idx: Path, proc: subprocess.Popen, n: int, timeout: float = 120) -> int:
    """Poll the index database of a running ``mmsearch index`` until it holds ``n`` items."""
    deadline = time.monotonic() + timeout
    items = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{idx / 'mmsearch.db'}?mode=ro", uri=True, timeout=1) as conn:
                items = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        except sqlite3.Error:
            items = 0
        if items >= n:
            break
        time.sleep(0.02)
    return items


def one_line(stderr: bytes) -> str:
    text = stderr.decode("utf-8")
    assert "Traceback" not in text and "terminate called" not in text, text
    assert len(text.strip().splitlines()) == 1, text
    return text.strip()


# -- 1. no abort, no traceback on a user error --------------------------------------------------
@pytest.mark.slow
def test_user_errors_never_abort_while_the_text_encoder_loads(tmp_path, midtext_model, corpus):
    """The ONNX text encoder loads in a thread while the CLI starts; a process that exits on an
    error meanwhile was aborted by onnxruntime ("terminate called...", exit 134) in about half
    the runs. A text tower of CLIP's size makes the load take long enough to show it."""
    idx = tmp_path / "idx"
    assert run("index", corpus, "-i", idx, *midtext_model.args, "-q").returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(idx, broken)
    for name in ("mmsearch.db-wal", "mmsearch.db-shm"):
        (broken / name).unlink(missing_ok=True)
    data = bytearray((broken / "mmsearch.db").read_bytes())
    data[100:] = os.urandom(len(data) - 100)
    (broken / "mmsearch.db").write_bytes(bytes(data))
    # Many text terms keep the loading thread busy encoding them when the error ends the process.
    many = " + ".join(["cat", "dog", "a red bus", "sunset over the sea", "a bowl of soup", "two people",
                       "a bird", "a tree", "snow", "a clock", "a boat", "a chair"])
    cases = [(["query", many, "-i", broken], 1), (["query", "cat", "-i", broken], 1),
             (["query", "--type", "foo", "cat", "-i", idx], 2), (["query", "cat", "+", "./missing.jpg", "-i", idx], 2)]
    for attempt in range(5):
        for args, code in cases:
            result = run(*args)
            assert result.returncode == code, (attempt, args, result.returncode, result.stderr)
            assert one_line(result.stderr).startswith("error:")


def test_usage_errors_are_one_line(tmp_path):
    for args in (["query", "cat", "--bogus"], ["query", "-k", "zero", "cat"], ["index", "--workers", "0"]):
        result = run(*args, "-i", tmp_path / "idx")
        assert result.returncode == 2
        assert one_line(result.stderr).startswith("error:")


# -- 2. file names that are not UTF-8 -------------------------------------------------------------
def test_json_output_is_valid_utf8_and_gives_back_exact_names(tmp_path, tiny_model):
    root = tmp_path / "lib"
    names = [b"caf\xe9.jpg", b"\xff\xfe-odd.png", "Zoë.jpg".encode()]
    for i, raw in enumerate(names):
        make_image(Path(os.fsdecode(bytes(root) + b"/" + raw)), seed=i)
    idx = tmp_path / "idx"
    result = run("index", root, "-i", idx, *tiny_model.args, "--json")
    assert result.returncode == 0
    json.loads(result.stdout.decode("utf-8"))  # strict UTF-8, valid JSON
    result = run("query", "a photo", "-i", idx, "--json", "-k", "10")
    doc = json.loads(result.stdout.decode("utf-8"))  # raises on invalid UTF-8
    found = set()
    for hit in doc["hits"]:
        exact = base64.b64decode(hit["path_bytes"]) if "path_bytes" in hit else hit["path"].encode()
        found.add(os.path.basename(exact))
        assert os.path.exists(exact)
    assert found == set(names)
    latin = next(h for h in doc["hits"] if "path_bytes" in h and h["path"].endswith("caf\\xe9.jpg"))
    assert latin["path"].isprintable()  # a readable form beside the exact bytes
    # info and the table are valid UTF-8 too
    for args in (("info", "-i", idx, "--json"), ("query", "a photo", "-i", idx)):
        result = run(*args)
        assert result.returncode == 0
        result.stdout.decode("utf-8")


# -- 3. the README's Python example, saved and run as a script ------------------------------------
def test_readme_python_example_runs_as_a_script(tmp_path, tiny_model):
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "__main__" not in code  # the example is a plain script, as users write them
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    shutil.copytree(ROOT / "tests" / "data" / "photos", tmp_path / "tests" / "data" / "photos")
    env = dict(ENV, MMSEARCH_MODEL=str(tiny_model.config), MMSEARCH_PRETRAINED=str(tiny_model.checkpoint))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "IndexLockedError" not in done.stderr
    assert re.match(r"6 added, 0 updated", done.stdout)  # five photos and their README
    assert (tmp_path / "indexes" / "photos" / "manifest.json").is_file()


# -- 4. MMSEARCH_PRETRAINED alone -----------------------------------------------------------------
def test_pretrained_variable_alone_applies_to_the_default_model(monkeypatch, tiny_model, tmp_path):
    def spec():  # the model a new index would get, as the environment says now
        return Engine(tmp_path / "new").spec

    monkeypatch.delenv("MMSEARCH_MODEL", raising=False)
    monkeypatch.setenv("MMSEARCH_PRETRAINED", "none")
    assert spec() == ModelSpec("ViT-B-32", None)
    monkeypatch.setenv("MMSEARCH_PRETRAINED", str(tiny_model.checkpoint))
    assert spec() == ModelSpec("ViT-B-32", str(tiny_model.checkpoint))
    monkeypatch.setenv("MMSEARCH_MODEL", str(tiny_model.config))
    assert spec() == ModelSpec(str(tiny_model.config), str(tiny_model.checkpoint))


# -- 5. info after repair, updated time ----------------------------------------------------------
def test_info_after_repair_and_updated_time(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    first = json.loads(cli("info", "-i", idx, "--json").stdout)
    (corpus / "a.jpg").unlink()
    cli("check", "-i", idx, "--repair", "--json")
    info = json.loads(cli("info", "-i", idx, "--json").stdout)
    assert info["items"] == IMAGE_COUNT + TEXT_COUNT - 1 == info["vector_index"]["items"]
    time.sleep(1.1)  # the manifest's times have a resolution of one second
    make_image(corpus / "new.png", seed=77)
    cli("index", "-i", idx, "-q")
    later = json.loads(cli("info", "-i", idx, "--json").stdout)
    assert later["updated_at"] > first["updated_at"]
    assert later["items"] == later["vector_index"]["items"] == IMAGE_COUNT + TEXT_COUNT


# -- 6. missing roots, failed and killed first runs ----------------------------------------------
def test_missing_root_is_an_error_and_creates_nothing(tmp_path, tiny_model, cli):
    idx = tmp_path / "idx"
    result = cli("index", tmp_path / "photos", "-i", idx, *tiny_model.args, ok=False)
    assert result.exit_code == 2 and "no such file or folder" in result.stderr and "photos" in result.stderr
    assert not idx.exists()


def test_failed_first_run_leaves_no_folder(tmp_path, corpus, cli):
    idx = tmp_path / "idx"
    result = cli("index", corpus, "-i", idx, "--model", "ViT-B-3", ok=False)  # unknown model
    assert result.exit_code == 1 and not idx.exists()
    bad = tmp_path / "broken.json"
    bad.write_text("{}")
    result = cli("index", corpus, "-i", idx, "--model", bad, ok=False)
    assert result.exit_code == 1 and not idx.exists()


@pytest.mark.parametrize("left", ["lock", "lock+db"])
def test_first_run_killed_before_anything_was_saved(tmp_path, tiny_model, corpus, cli, left):
    """What a SIGKILL in the first moments of a first run leaves: the folder with its lock file,
    perhaps a database without items. Every command says what it is, never 'damaged'."""
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / ".lock").touch()
    if left == "lock+db":  # an empty database, as IndexStore.create makes it before the manifest
        (tmp_path / "empty-folder").mkdir()
        with Engine(tmp_path / "donor", model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint)) as e:
            e.add([tmp_path / "empty-folder"])
        shutil.copy(tmp_path / "donor" / "mmsearch.db", idx / "mmsearch.db")
    for args in (["info"], ["check"], ["query", "cat"]):
        result = cli(*args, "-i", idx, ok=False)
        assert result.exit_code == 1, (args, result.stderr)
        assert "empty index: nothing indexed yet" in result.stderr and "damaged" not in result.stderr + result.stdout
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")  # the folder is usable as it is
    assert json.loads(cli("info", "-i", idx, "--json").stdout)["items"] == IMAGE_COUNT + TEXT_COUNT


def test_killed_first_run_resumes_with_a_bare_index_run(tmp_path, tiny_model):
    """Roots are recorded before the first item: a first run killed half-way is completed by
    `mmsearch index` with no path (and deleted files are then removed, issue 12 item 9)."""
    corpus = tmp_path / "big"
    for i in range(40):
        make_image(corpus / f"img{i:02d}.png", seed=200 + i, size=(64, 48))
    idx = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), *tiny_model.args,
                             "--batch-size", "1", "--workers", "1", "-q"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    items = wait_for_items(idx, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= items < 40, "the run should be killed half-way"
    with sqlite3.connect(idx / "mmsearch.db") as conn:
        assert conn.execute("SELECT path FROM roots").fetchall() == [(str(corpus),)]
    (corpus / "img00.png").unlink()
    result = run("index", "-i", idx, "-q")
    assert result.returncode == 0, result.stderr
    with Engine(idx) as engine:
        assert engine.info()["items"] == 39
        assert not any(h.path.endswith("img00.png") for h in engine.search("x", k=100))


# -- 7. offline first run -------------------------------------------------------------------------
def test_offline_first_run_fails_fast_with_the_ways_forward(tmp_path, corpus):
    """No network: one line at once (no minute of Hugging Face retries) naming local weights,
    HF_HUB_OFFLINE and --pretrained none. The hub is a closed loopback port here."""
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "MMSEARCH_MODEL", "MMSEARCH_PRETRAINED")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    started = time.monotonic()
    result = run("index", corpus, "-i", tmp_path / "idx", env=env)
    took = time.monotonic() - started
    message = one_line(result.stderr)
    assert result.returncode == 1
    assert "--pretrained none" in message and "HF_HUB_OFFLINE" in message and "cannot be reached" in message
    assert not (tmp_path / "idx").exists()
    assert took < 60  # (a bound on a hang, not a speed test: it took about a minute of retries)


# -- 8. a bare `mmsearch index` keeps each root's options ----------------------------------------
def test_bare_index_run_keeps_exclude_and_hidden(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    first = json.loads(cli("index", corpus, "-i", idx, *tiny_model.args, "--exclude", "*.png", "--hidden",
                           "--json").stdout)
    assert first["added"] == IMAGE_COUNT + TEXT_COUNT - 1 + 1  # b.png out, .hidden/secret.jpg in
    again = json.loads(cli("index", "-i", idx, "--json").stdout)
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, first["added"])
    roots = Engine(idx).roots()
    assert roots[0].exclude == ("*.png",) and roots[0].hidden is True


# -- 9. symlinks: --follow-links and one rule for what is inside the library --------------------
@pytest.fixture
def linked(tmp_path):
    """A root holding a symlinked folder and a symlinked file that lead outside it, and a loop."""
    outside = tmp_path / "outside"
    make_image(outside / "trip" / "far.jpg", seed=31)
    make_image(outside / "lone.png", seed=32)
    root = tmp_path / "root"
    make_image(root / "home.jpg", seed=33)
    (root / "trip").symlink_to(outside / "trip", target_is_directory=True)
    (root / "lone.png").symlink_to(outside / "lone.png")
    (outside / "trip" / "back").symlink_to(outside, target_is_directory=True)  # a loop once followed
    return root


def test_links_outside_are_skipped_by_default_and_named(tmp_path, tiny_model, linked, cli):
    idx = tmp_path / "idx"
    result = cli("index", linked, "-i", idx, *tiny_model.args, "--json")
    report = json.loads(result.stdout)
    assert report["added"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped_files"]}
    assert "--follow-links" in reasons["trip"] and "--follow-links" in reasons["lone.png"]
    with Engine(idx) as engine:  # nothing from outside is returned, so nothing outside is served
        assert [Path(h.path).name for h in engine.search("x", k=10)] == ["home.jpg"]


def test_follow_links_indexes_them_remembers_and_names_loops(tmp_path, tiny_model, linked, cli):
    from mmsearch.library import inside_library

    idx = tmp_path / "idx"
    report = json.loads(cli("index", linked, "-i", idx, *tiny_model.args, "--follow-links", "--json").stdout)
    assert report["added"] == 3
    loops = [s for s in report["skipped_files"] if "loop" in s["reason"]]
    assert loops and loops[0]["path"].endswith("back")
    again = json.loads(cli("index", "-i", idx, "--json").stdout)  # remembered
    assert (again["added"], again["removed"], again["unchanged"]) == (0, 0, 3)
    with Engine(idx) as engine:
        roots = engine.roots()
        assert roots[0].follow_links
        hits = engine.search("x", k=10)
        assert {Path(h.path).name for h in hits} == {"home.jpg", "far.jpg", "lone.png"}
        # what a search returns is inside the library, so the server may serve it
        assert all(inside_library(h.path, roots) for h in hits)
    assert inside_library(str(tmp_path / "outside" / "secret.txt"), roots) is None


# -- 10. the README's first command works on a fresh clone ---------------------------------------
def test_readme_first_command_indexes_photos_the_repository_ships():
    block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    first = next(line for line in block.splitlines() if "mmsearch index" in line)
    folder = re.search(r"mmsearch index (\S+)", first).group(1)
    assert (ROOT / folder).is_dir() and any((ROOT / folder).glob("*.jpg")), folder


# -- 11. Ctrl-C says at once what happens ---------------------------------------------------------
def test_first_ctrl_c_says_it_stops_after_the_batch(tmp_path, tiny_model):
    corpus = tmp_path / "c"
    for i in range(60):
        make_image(corpus / f"i{i:02d}.png", seed=300 + i, size=(64, 48))
    idx = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), *tiny_model.args,
                             "--batch-size", "1", "--workers", "1"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert wait_for_items(idx, proc, 2) < 60
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "stopping after the current batch (Ctrl-C again to stop now)" in err.decode()
    assert proc.returncode == 130


# -- 12. "no results" says why --------------------------------------------------------------------
def test_no_results_says_why(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    cli("index", corpus, "-i", idx, *tiny_model.args, "-q")
    result = cli("query", "cat", "-i", idx, "--min-score", "0.999", "--type", "image")
    assert re.search(r"no results: the best match scores -?0\.\d{4}, below the minimum score 0\.999", result.stderr)
    (tmp_path / "elsewhere").mkdir()
    result = cli("query", "cat", "-i", idx, "--under", tmp_path / "elsewhere")
    assert "no results: no indexed items under" in result.stderr and "elsewhere" in result.stderr
    doc = json.loads(cli("query", "cat", "-i", idx, "--under", tmp_path / "elsewhere", "--json").stdout)
    assert doc["hits"] == [] and doc["why_empty"].startswith("no indexed items under")


# -- 13. -0 for xargs -0 ------------------------------------------------------------------------
def test_print0_gives_exact_names_and_the_readme_pipes_with_it(tmp_path, tiny_model):
    root = tmp_path / "lib"
    make_image(root / "with space.jpg", seed=1)
    make_image(Path(os.fsdecode(bytes(root) + b"/caf\xe9.jpg")), seed=2)
    idx = tmp_path / "idx"
    assert run("index", root, "-i", idx, *tiny_model.args, "-q").returncode == 0
    out = run("query", "x", "-i", idx, "-0").stdout
    assert sorted(out.split(b"\0")[:-1]) == sorted([bytes(root) + b"/with space.jpg", bytes(root) + b"/caf\xe9.jpg"])
    assert "--paths -0 | xargs -0" in README.read_text(encoding="utf-8")


# -- 16. small things -----------------------------------------------------------------------------
def test_version_help_and_random_weights_said_once(tmp_path, tiny_model, corpus):
    from mmsearch import __version__

    result = run("--version")
    assert result.returncode == 0 and result.stdout.decode().strip() == f"mmsearch {__version__}"
    for command in ("index", "query", "check", "info"):
        text = run(command, "--help").stdout.decode()
        assert "<bool>" not in text, command
    assert "processes" in re.sub(r"\s+", " ", run("index", "--help").stdout.decode())
    idx = tmp_path / "idx"
    created = run("index", corpus, "-i", idx, "--model", tiny_model.config, "--pretrained", "none", "-q")
    assert created.returncode == 0 and "random weights" in created.stderr.decode()
    queried = run("query", corpus / "a.jpg", "-i", idx)
    assert queried.returncode == 0
    assert "initialized randomly" not in queried.stderr.decode() and "random weights" not in queried.stderr.decode()


# -- 19. install where faiss-gpu has no wheels ---------------------------------------------------
def test_faiss_dependency_follows_the_platform():
    import tomllib

    from packaging.markers import Marker
    from packaging.requirements import Requirement

    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    faiss = [d for d in deps if d.name.startswith("faiss")]

    def chosen(system: str, machine: str) -> set[str]:
        env = {"sys_platform": system, "platform_machine": machine, "platform_system": system.capitalize()}
        return {d.name for d in faiss if d.marker is None or Marker(str(d.marker)).evaluate(env)}

    assert chosen("linux", "x86_64") == {"faiss-gpu"}
    assert chosen("linux", "aarch64") == chosen("darwin", "arm64") == chosen("darwin", "x86_64") == {"faiss-cpu"}
