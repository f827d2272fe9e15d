"""A first run: the README's commands on a fresh clone, folders that do not exist, runs that fail or
are killed before they save anything, no network, and the model named by the environment."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ENV, IMAGE_COUNT, README, ROOT, TEXT_COUNT, make_image, one_line, run, wait_for_items
from mmsearch import Engine
from mmsearch.encoders import ModelSpec

ITEMS = IMAGE_COUNT + TEXT_COUNT


# -- the README's first command works on a fresh clone ---------------------------------------
def test_readme_first_command_indexes_photos_the_repository_ships():
    block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    first = next(line for line in block.splitlines() if "mmsearch index" in line)
    folder = re.search(r"mmsearch index (\S+)", first).group(1)
    assert (ROOT / folder).is_dir() and any((ROOT / folder).glob("*.jpg")), folder


# -- the README's Python example, saved and run as a script ------------------------------------
# A script that forces the start method the platform lacks here (Windows has no forkserver).
FORCE_SPAWN = "import multiprocessing\nmultiprocessing.get_all_start_methods = lambda: ['spawn']\n"


@pytest.mark.parametrize("start", ["forkserver", "spawn"])
def test_readme_python_example_runs_as_a_script(tmp_path, tiny_model, start):
    """The example as a plain script, without a main guard, on both start methods the workers
    use: the README's claim that no guard is needed holds (issue 30 item 5)."""
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "__main__" not in code  # the example is a plain script, as users write them
    script = tmp_path / "example.py"
    script.write_text((FORCE_SPAWN if start == "spawn" else "") + code, encoding="utf-8")
    shutil.copytree(ROOT / "tests" / "data" / "photos", tmp_path / "tests" / "data" / "photos")
    env = dict(ENV, MMSEARCH_MODEL=str(tiny_model.config), MMSEARCH_PRETRAINED=str(tiny_model.checkpoint))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "IndexLockedError" not in done.stderr
    # five photos and their README, indexed once: worker processes never ran the script again
    assert re.match(r"6 added, 0 updated", done.stdout) and done.stdout.count(" added, ") == 1
    assert (tmp_path / "indexes" / "photos" / "manifest.json").is_file()


def test_readme_says_the_same_about_the_main_guard_everywhere():
    """Every README sentence about `if __name__ == "__main__":` says what the test above shows:
    no guard is needed (one section once said a script without it fails)."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    sentences = [s for s in re.split(r"(?<=[.;])\s", text) if "__name__" in s]
    assert sentences
    for sentence in sentences:
        assert re.search(r"no `if __name__ == \"__main__\":` guard|needs no `if __name__", sentence), sentence
        assert "DecodeWorkersError" not in sentence and "must" not in sentence, sentence



def test_forkserver_started_early_never_runs_the_script_again(tmp_path, tiny_model, corpus):
    """`mmsearch index` starts the decode workers' server before importing the engine; a script
    that does the same (no main guard) must still run once, and its workers must decode."""
    marker = tmp_path / "ran.txt"
    script = tmp_path / "early.py"
    script.write_text(
        f"with open({str(marker)!r}, 'a') as f: f.write('ran\\n')\n"
        "from mmsearch.procs import start_forkserver\n"
        "start_forkserver()\n"
        "from mmsearch import Engine\n"
        f"with Engine({str(tmp_path / 'idx')!r}, model={str(tiny_model.config)!r}, "
        f"pretrained={str(tiny_model.checkpoint)!r}, workers=2) as e:\n"
        f"    report = e.add([{str(corpus)!r}])\n"
        "import json; print(json.dumps({'skipped': len(report.skipped), 'images': e.store.stats()['images']}))\n",
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "ran\n"  # the server and its workers never imported the script
    assert json.loads(done.stdout.splitlines()[-1]) == {"skipped": 0, "images": IMAGE_COUNT}

# -- missing roots, failed and killed first runs ----------------------------------------------
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
    for i in range(24):
        make_image(corpus / f"img{i:02d}.png", seed=200 + i, size=(64, 48))
    idx = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), *tiny_model.args,
                             "--batch-size", "1", "--workers", "1", "-q"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    items = wait_for_items(idx, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= items < 24, "the run should be killed half-way"
    with sqlite3.connect(idx / "mmsearch.db") as conn:
        assert conn.execute("SELECT path FROM roots").fetchall() == [(str(corpus),)]
    (corpus / "img00.png").unlink()
    result = run("index", "-i", idx, "-q")
    assert result.returncode == 0, result.stderr
    with Engine(idx) as engine:
        assert engine.info()["items"] == 23
        assert not any(h.path.endswith("img00.png") for h in engine.search("x", k=100))


# -- offline first run -------------------------------------------------------------------------
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


# -- MMSEARCH_PRETRAINED alone -----------------------------------------------------------------
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


# -- the model the environment names, for train too; a missing model folder ----------------------
def captioned(data):
    """A folder of images with same-named .txt captions (a dataset for train and eval)."""
    for i in range(4):
        make_image(data / f"p{i}.png", seed=i, size=(40, 40))
        (data / f"p{i}.txt").write_text(f"picture number {i}", encoding="utf-8")
    return data


def test_train_uses_the_model_the_environment_names(tmp_path, tiny_model):
    """`train` in a shell where MMSEARCH_MODEL / MMSEARCH_PRETRAINED are set starts from that
    model, as `eval` and `index` do (it tried to download ViT-B-32; issue 30 item 6)."""
    data = captioned(tmp_path / "captions")
    env = dict(ENV, MMSEARCH_MODEL=str(tiny_model.config), MMSEARCH_PRETRAINED=str(tiny_model.checkpoint),
               HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    result = run("train", data, "--out", tmp_path / "out", "--epochs", "1", "--batch-size", "2", "--json",
                 "--device", "cpu", env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    saved = json.loads((tmp_path / "out" / "train.json").read_text())
    assert json.dumps(saved).count(str(tiny_model.checkpoint)) >= 1
    assert (tmp_path / "out" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("command", ["index", "train", "eval"])
def test_a_missing_model_folder_is_named_as_such(tmp_path, corpus, command):
    missing = tmp_path / "no" / "such-model"
    data = captioned(tmp_path / "captions")
    args = {"index": ["index", corpus, "-i", tmp_path / "idx"], "train": ["train", data, "--out", tmp_path / "out"],
            "eval": ["eval", data]}[command]
    result = run(*args, "--model", missing)
    message = one_line(result.stderr)
    assert result.returncode != 0 and "no such folder or file" in message and str(missing) in message, message
    assert "unknown open_clip model" not in message
    assert not (tmp_path / "idx").exists() and not (tmp_path / "out").exists()


# -- first runs watched and interrupted (issue 30 item 7) -----------------------------------------
def _first_run(corpus, idx, model, *extra):
    return subprocess.Popen([sys.executable, "-m", "mmsearch", "index", str(corpus), "-i", str(idx), *model.args,
                             "--batch-size", "1", "--workers", "1", "-q", *extra], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_until(proc, condition, timeout=120):
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not condition():
        time.sleep(0.01)
    return condition()


def test_a_query_during_a_first_run_says_it_is_in_progress(tmp_path, midtext_model, corpus):
    """While a first run exports its model (CLIP's text tower here takes seconds), a query said the
    run had stopped and to run `mmsearch index` again, which would meet the lock."""
    idx = tmp_path / "idx"
    proc = _first_run(corpus, idx, midtext_model)
    try:
        assert _wait_until(proc, lambda: (idx / "manifest.json").is_file()), proc.stderr.read().decode()
        result = run("query", "cat", "-i", idx)
        message = one_line(result.stderr)
        assert result.returncode == 1 and "in progress" in message and "again to resume" not in message, message
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0
    assert run("query", "cat", "-i", idx).returncode == 0


@pytest.mark.parametrize("moment", [pytest.param("start", marks=pytest.mark.slow), "created",
                                    pytest.param("items", marks=pytest.mark.slow)])
def test_a_first_run_interrupted_at_any_moment_is_resumed_by_a_bare_index(tmp_path, midtext_model, moment):
    """Ctrl-C (SIGINT) at several moments of a first run: once the run has created the index (its
    folders recorded first), a bare `mmsearch index` completes it; before that nothing is left and
    a bare run says there is no index yet. (A Ctrl-C during the export removed the folder and its
    roots: 'the index has no known roots yet'.)"""
    corpus = tmp_path / "big"
    for i in range(12):
        make_image(corpus / f"img{i:02d}.png", seed=300 + i, size=(64, 48))
    idx = tmp_path / "idx"
    proc = _first_run(corpus, idx, midtext_model)
    if moment == "start":
        time.sleep(0.3)
    elif moment == "created":
        assert _wait_until(proc, lambda: (idx / "manifest.json").is_file())
    else:
        assert wait_for_items(idx, proc, 2) >= 2
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    # (130: mmsearch's own "interrupted"; at the very start Python may still be importing it)
    assert proc.returncode == 130 or (moment == "start" and proc.returncode == -signal.SIGINT), proc.stderr.read().decode()
    result = run("index", "-i", idx, "-q")
    if not (idx / "manifest.json").is_file():
        assert moment == "start" and not idx.exists()
        assert result.returncode != 0 and "no index in" in one_line(result.stderr)
        return
    assert result.returncode == 0, result.stderr.decode()
    with Engine(idx) as engine:
        assert engine.info()["items"] == 12 and engine.info()["roots"] == [str(corpus)]


def test_the_first_runs_export_is_a_step_and_counted_in_its_time(tmp_path, midtext_model, corpus):
    """`--pretrained none` on 6 photos took 36 s but said '6 added ... in 0.8s': the ONNX export of
    a first run was neither shown nor counted (issue 30 item 11)."""
    idx = tmp_path / "idx"
    done = run("index", corpus, "-i", idx, *midtext_model.args, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["stages"]["export"] > 0 and report["seconds"] >= report["stages"]["export"]
    assert "exporting" in done.stderr.decode() and "to ONNX" in done.stderr.decode()
    make_image(corpus / "later.png", seed=55)
    again = run("index", "-i", idx)  # exported once: no export step, no export time
    assert again.returncode == 0 and "ONNX" not in again.stdout.decode() + again.stderr.decode()
    assert "1 added" in again.stdout.decode()


# -- the default index, from any folder (issue 30 item 10) ------------------------------------------
def test_the_default_index_is_the_users_from_any_folder(tmp_path, tiny_model, corpus):
    """`mmsearch index notes` in one folder, then `mmsearch query cat` from another, answered
    'index not found: <that folder>/indexes/default'. Without --index: ./indexes/default where it
    exists, else the user's default index; the error says where it looked and how to name one."""
    env = {k: v for k, v in ENV.items() if k not in ("MMSEARCH_INDEX", "MMSEARCH_DB")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    here, there, project = tmp_path / "here", tmp_path / "there", tmp_path / "project"
    for folder in (here, there, project):
        folder.mkdir()
    missing = run("query", "cat", env=env, cwd=there)
    message = one_line(missing.stderr)
    user_index = tmp_path / "data" / "mmsearch" / "indexes" / "default"
    assert missing.returncode == 1 and str(user_index) in message and "--index" in message, message
    assert "./indexes/default" in message and "MMSEARCH_INDEX" in message
    assert run("index", corpus, *tiny_model.args, "-q", env=env, cwd=here).returncode == 0
    assert (user_index / "manifest.json").is_file() and not (here / "indexes").exists()
    found = run("query", "a black cat", "--json", env=env, cwd=there)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["hits"]
    (project / "indexes" / "default").mkdir(parents=True)  # a project's own index wins where it exists
    assert run("index", corpus / "notes", *tiny_model.args, "-q", env=env, cwd=project).returncode == 0
    assert json.loads(run("info", "--json", env=env, cwd=project).stdout)["items"] == 2
    assert json.loads(run("info", "--json", env=env, cwd=there).stdout)["items"] == ITEMS
