"""The Ray runner (``--runner ray``): the same items, vectors and skips as a local run, on a real
local Ray (no mocks); a killed driver, Ctrl-C and a dying encode actor leave a consistent index.

The Ray tests are slow (a Ray start costs about 10 s and 1.4 GB here): they share one local Ray
per module (2 CPUs, a 300 MB object store, no dashboard), in-process runs through its
connection and CLI processes through its address (``--ray-address``), and run with
``-m slow -n 0``. The option checks at the end run by default and start no Ray.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ENV, one_line
from PIL import Image

from mmsearch import Engine
from mmsearch.check import check_folder
from test_bad_files import EXPECTED_SKIPS, bad_corpus  # noqa: F401 - a fixture used here
from test_crash_safety import (
    AFTER_KILL,
    _generation,
    assert_consistent,
    assert_same_state,
    build_corpus,
    index_cmd,
    mutate,
    open_engine,
    snapshot,
)

RAY_OBJECT_STORE = 300 * 2**20


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray for the module; its address for CLI processes (see ``ray_env``)."""
    import ray

    if ray.is_initialized():  # pragma: no cover - another module left one
        ray.shutdown()
    context = ray.init(num_cpus=2, object_store_memory=RAY_OBJECT_STORE, include_dashboard=False,
                       logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI process joining the module's Ray: Ray 2.60 starts clusters with
    token authentication (``RAY_AUTH_MODE=token``, set here by ``ray.init``; the token is in
    ~/.ray/auth_token), and a driver must say so to be let in."""
    return dict(ENV, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"), **extra)


def _cosines(a: dict, b: dict) -> list[float]:
    return [float(np.dot(a[key][1], b[key][1])) for key in a]


def _same_result(local_idx: Path, ray_idx: Path) -> None:
    """Same items (path, locator, content) and vectors at cosine >= 0.9999."""
    local, remote = snapshot(local_idx), snapshot(ray_idx)
    assert set(local) == set(remote)
    assert all(local[key][0] == remote[key][0] for key in local)
    assert min(_cosines(local, remote)) >= 0.9999


def _skips(report) -> dict[str, str]:
    return {s.path: s.reason for s in report.skipped}


@pytest.mark.slow
@pytest.mark.ray
def test_ray_run_gives_the_local_result(tmp_path, tiny_model, ray_address):
    corpus = build_corpus(tmp_path / "corpus", 24, 20)
    whole = (corpus / "d1" / "img001.jpg").read_bytes()
    # Passes the header check, fails in the decoder (a decode task's skip, not the reader's).
    (corpus / "d1" / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    shutil.copy(corpus / "d0" / "img000.png", corpus / "d0" / "copy.png")  # encoded once, written twice
    reports = {}
    for runner in ("local", "ray"):
        with open_engine(tmp_path / runner, tiny_model) as engine:
            reports[runner] = engine.add([corpus], runner=runner)
    local, remote = reports["local"], reports["ray"]
    _same_result(tmp_path / "local", tmp_path / "ray")
    assert _skips(remote) == _skips(local) and any("cannot decode image" in r for r in _skips(remote).values())
    assert (remote.added, remote.reused, remote.updated) == (local.added, local.reused, local.updated)
    where = remote.runner
    assert where["runner"] == "ray" and where["nodes"] == 1 and where["cpus"] == 2 and where["gpus"] == 0
    assert where["actors_used"] == where["encode_actors"] == 1 and where["decode_nodes_used"] == 1
    assert where["actor_restarts"] == 0 and local.runner is None

    # The same plan next time: changed, renamed, deleted and new files, through both runners.
    mutate(corpus, random.Random(3), 1)
    (corpus / "d0" / "img000.png").rename(corpus / "d0" / "renamed.png")
    for runner in ("local", "ray"):
        with open_engine(tmp_path / runner, tiny_model) as engine:
            reports[runner] = engine.add([corpus], runner=runner)
    for field in ("added", "updated", "reused", "removed", "unchanged"):
        assert getattr(reports["ray"], field) == getattr(reports["local"], field), field
    _same_result(tmp_path / "local", tmp_path / "ray")
    assert assert_consistent(tmp_path / "ray") == len(snapshot(tmp_path / "local"))


@pytest.mark.slow
@pytest.mark.ray
def test_ray_bad_files_skipped_as_locally(tmp_path, tiny_model, bad_corpus, ray_address, cli):  # noqa: F811
    """The CLI with --runner ray names the same bad files for the same reasons."""
    result = cli("index", bad_corpus, "-i", tmp_path / "idx", *tiny_model.args, "--json", "--runner", "ray")
    report = json.loads(result.stdout)
    skipped = {os.path.relpath(s["path"], bad_corpus): s["reason"] for s in report["skipped_files"]}
    assert set(skipped) == set(EXPECTED_SKIPS)
    for name, reason in EXPECTED_SKIPS.items():
        assert reason in skipped[name], (name, skipped[name])
    assert report["runner"]["runner"] == "ray"
    local = json.loads(cli("index", bad_corpus, "-i", tmp_path / "local", *tiny_model.args, "--json").stdout)
    assert (report["added"], report["reused"]) == (local["added"], local["reused"])
    _same_result(tmp_path / "local", tmp_path / "idx")


@pytest.mark.slow
@pytest.mark.ray
def test_ray_encode_actor_that_dies_is_restarted_and_reported(tmp_path, tiny_model, ray_address):
    """A real failure: the first encode actor's process exits (RayExecutor's crash_once test
    hook); Ray restarts it and retries its batch, the run completes and says so."""
    from mmsearch.indexing.ray_executor import RayExecutor

    corpus = build_corpus(tmp_path / "corpus", 16, 4)
    marker = tmp_path / "crashed"
    notes: list[str] = []

    class Notes:
        def start(self, phase, total): pass
        def advance(self, n=1): pass
        def skip(self, skip): notes.append(skip.reason)
        def note(self, message): notes.append(message)

    executor = RayExecutor(crash_once=str(marker), workers=2)
    with open_engine(tmp_path / "ray", tiny_model) as engine:
        report = engine.add([corpus], runner=executor, progress=Notes())
    assert marker.exists()  # the actor did die
    assert report.runner["actor_restarts"] == 1 and not report.skipped
    assert any("died and were restarted" in n for n in notes), notes
    with open_engine(tmp_path / "local", tiny_model) as engine:
        engine.add([corpus])
    _same_result(tmp_path / "local", tmp_path / "ray")
    assert_consistent(tmp_path / "ray")


def _ray_cmd(corpus: Path, idx: Path, tiny_model, address: str, *extra: str) -> list[str]:
    return [*index_cmd(corpus, idx, tiny_model, *extra), "--runner", "ray", "--ray-address", address]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_driver_sigkill_leaves_consistent_index_that_rerun_completes(tmp_path, tiny_model, ray_address):
    corpus = build_corpus(tmp_path / "corpus", 60, 20)
    idx = tmp_path / "idx"
    rng = random.Random(7)
    killed = 0
    for round_ in range(3):
        if round_:
            mutate(corpus, rng, round_)
        before = _generation(idx)
        proc = subprocess.Popen(_ray_cmd(corpus, idx, tiny_model, ray_address), env=ray_env(MMSEARCH_CHECKPOINT_SECONDS="0.05"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # After the first commits of this run (its roots, then a batch of vectors), while the
        # Ray job streams vectors in.
        while _generation(idx) <= before + 3 and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=120)
        if (idx / "manifest.json").exists():
            assert_consistent(idx, allow=AFTER_KILL)
    assert killed >= 2, f"only {killed} of 3 runs were still going when killed"
    # A Ray re-run completes the work; the result is what one local run over the corpus gives.
    done = subprocess.run(_ray_cmd(corpus, idx, tiny_model, ray_address, "--json"), env=ray_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    with open_engine(tmp_path / "ref", tiny_model) as engine:
        engine.add([corpus])
    reference = snapshot(tmp_path / "ref")
    assert assert_consistent(idx) == len(reference)
    assert_same_state(idx, reference)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_sigint_stops_the_job_and_keeps_what_was_committed(tmp_path, tiny_model, ray_address):
    import ray

    corpus = build_corpus(tmp_path / "corpus", 80, 10)
    idx = tmp_path / "idx"
    env = ray_env(MMSEARCH_CHECKPOINT_SECONDS="3600")  # only the interrupt handler saves vectors
    proc = subprocess.Popen(_ray_cmd(corpus, idx, tiny_model, ray_address), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while _generation(idx) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"indexing finished before it could be interrupted: {proc.communicate()}")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    items = assert_consistent(idx, allow=("changed_file",))
    assert 0 < items < 91
    # The job stopped with its driver: no actor of it is left holding the cluster's CPUs.
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
    report = json.loads(subprocess.run(_ray_cmd(corpus, idx, tiny_model, ray_address, "--json"), check=True, env=ray_env(),
                                       capture_output=True, text=True, timeout=300).stdout)
    assert report["added"] + items == 91 and assert_consistent(idx) == 91, report
    assert report["updated"] == 0  # nothing committed before the interrupt was embedded again


# -- videos, deadlines and decoder crashes on Ray -----------------------------------------------------
def _engine(idx: Path, tiny_model, **settings) -> Engine:
    from mmsearch.settings import Settings

    return Engine(idx, model=str(tiny_model.config), pretrained=str(tiny_model.checkpoint), batch_size=4, workers=2,
                  settings=Settings.from_env().but(**settings) if settings else None)


def _both(tmp_path: Path, tiny_model, lib: Path, **settings) -> dict:
    reports = {}
    for runner in ("local", "ray"):
        with _engine(tmp_path / runner, tiny_model, **settings) as engine:
            reports[runner] = engine.add([lib], runner=runner)
    return reports


@pytest.mark.slow
@pytest.mark.ray
def test_ray_videos_are_sampled_in_ranges_and_encoded_on_the_actors_as_locally(tmp_path, tiny_model, ray_address,
                                                                                  monkeypatch):
    """A video split into time ranges (SPLIT_SECONDS lowered: 16.5 s in 2 ranges, one per CPU),
    a video sampled whole and bad videos: the same frames at the same times, the same vectors
    and the same skips as a local run; the frames were encoded by Ray's actors."""
    from mmsearch.media import video as video_mod
    from support.videogen import COLOURS, make_video

    lib = tmp_path / "lib"
    lib.mkdir()
    scenes = [3.0, 5.0, 2.5, 6.0]
    make_video(lib / "long.mp4", scenes, gop=5)
    make_video(lib / "other.webm", [2.0, 2.0], codec="libvpx-vp9", gop=5, colours=COLOURS[4:])
    mp4 = (lib / "long.mp4").read_bytes()
    (lib / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])  # its index (moov) is at the end: gone
    (lib / "text.avi").write_text("not a video at all")
    monkeypatch.setattr(video_mod, "SPLIT_SECONDS", 5.0)
    assert len(video_mod.spans(16.5, 2)) == 2
    reports = _both(tmp_path, tiny_model, lib)
    local, remote = reports["local"], reports["ray"]
    _same_result(tmp_path / "local", tmp_path / "ray")
    times = sorted(float(loc[2:]) for path, loc in snapshot(tmp_path / "ray") if path.endswith("long.mp4"))
    assert len(times) == len(set(times)) and {0.0, 3.0, 8.0, 10.5} <= set(times)
    assert _skips(remote) == _skips(local) and len(_skips(remote)) == 2
    # 5 + 2 sampled (one extra frame at the range boundary, dropped as a repeat), 4 + 2 kept
    assert (remote.videos, remote.frames, remote.sampled) == (local.videos, local.frames, local.sampled) == (2, 6, 7)
    where = remote.runner  # a corpus of videos only: the actors encoded them
    assert where["runner"] == "ray" and where["actors_used"] == 1 and where["decode_nodes_used"] == 1
    report = check_folder(tmp_path / "ray")  # (assert_consistent's query expects one hit per row, not per video)
    assert not report.problems and report.items == len(snapshot(tmp_path / "local"))


@pytest.mark.slow
@pytest.mark.ray
def test_ray_enforces_the_decode_deadline_as_locally(tmp_path, tiny_model, ray_address, monkeypatch):
    """MMSEARCH_DECODE_TIMEOUT on Ray: an image and a video that take longer are abandoned with
    the local run's message, the rest is indexed."""
    from mmsearch.media import video as video_mod
    from support.videogen import make_video

    monkeypatch.setattr(video_mod, "SECONDS_PER_SECOND_1080P", 0.0)  # a video's deadline: the base alone

    lib = tmp_path / "slow"
    lib.mkdir()
    # 36 megapixels of zeros: a 100 KB file whose decode takes far longer than the deadline.
    Image.new("L", (6000, 6000), 0).save(lib / "slow.png")
    # 900 one-frame scenes, all keyframes: sampling takes about a second.
    make_video(lib / "slow.mp4", [1 / 30] * 900, fps=30, gop=1)
    (lib / "note.txt").write_text("a short note")
    reports = _both(tmp_path, tiny_model, lib, decode_timeout=0.02)
    for runner, report in reports.items():
        assert report.added == 1 and report.videos == 0, runner
        skips = _skips(report)
        assert set(skips) == {str(lib / "slow.png"), str(lib / "slow.mp4")}, runner
        assert all(reason == "decoding took longer than 0.02s; abandoned" for reason in skips.values()), (runner, skips)
    _same_result(tmp_path / "local", tmp_path / "ray")


class _Killer:
    """Kills every other process that has ``path`` open (an out-of-memory killer that always
    picks the decoder of this one file), until stopped."""

    def __init__(self, path: Path):
        import threading

        self.path, self.kills, self._stop = str(path), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me):
                try:
                    if any(os.readlink(f"/proc/{pid}/fd/{fd}") == self.path for fd in os.listdir(f"/proc/{pid}/fd")):
                        os.kill(pid, signal.SIGKILL)
                        self.kills += 1
                except OSError:
                    pass
            time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_a_file_that_kills_its_decoder_is_skipped_as_locally(tmp_path, tiny_model, ray_address):
    """The process decoding one video is killed each time it opens it (a real SIGKILL of the
    decoder's process): locally and on Ray (where videos are sampled by Ray tasks, the runner's
    report says so) a one-line skip with the same message; the run goes on and the other video
    is indexed. (A Ray task whose own process died this way would fail the job after its
    retries: the sandbox process dies instead.)"""
    from support.videogen import make_video

    lib = tmp_path / "lib"
    lib.mkdir()
    make_video(lib / "crash.mp4", [1 / 30] * 900, fps=30, gop=1)
    make_video(lib / "fine.mp4", [2.0, 2.0], gop=5)
    with _Killer(lib / "crash.mp4") as killer:
        reports = _both(tmp_path, tiny_model, lib)
    assert killer.kills >= 2
    for runner, report in reports.items():
        assert _skips(report) == {str(lib / "crash.mp4"): "the decoder crashed on this file (exit code -9)"}, runner
        assert (report.videos, report.frames) == (1, 2), runner
    _same_result(tmp_path / "local", tmp_path / "ray")
    where = reports["ray"].runner
    assert where["actors_used"] == 1 and where["decode_nodes_used"] == 1 and where["actor_restarts"] == 0


class _BusyDecoderKiller(_Killer):
    """Kills this test's decode worker processes (children of a multiprocessing forkserver that
    descend from this process: the local pool's workers, the Ray workers' sandboxes) while they
    are busy, as if the decoder crashed on the big file they decode: an image is read whole
    before it is decoded, so no open file names it."""

    def __init__(self):
        super().__init__(Path("/nonexistent"))

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        first: dict[int, float] = {}  # a worker's CPU seconds when first seen (decoding small files costs little)
        while not self._stop.is_set():
            for process in me.children(recursive=True):
                try:
                    if "forkserver" not in " ".join(process.parent().cmdline()):
                        continue
                    cpu = sum(process.cpu_times()[:2])
                    if cpu - first.setdefault(process.pid, cpu) >= 0.2:
                        process.kill()
                        self.kills += 1
                except (psutil.Error, AttributeError):  # gone meanwhile (parent() None)
                    pass
            time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.ray
def test_ray_an_image_that_kills_its_decoder_is_skipped_as_locally(tmp_path, tiny_model, ray_address):
    """The process decoding a 36-megapixel image is killed while it decodes: locally and on Ray
    a one-line skip with the same message, the other files indexed. (Before the sandbox, Ray
    decoded the image in the task's own process: this killer finds no decoder to kill there and
    the test fails; a real crash of that process failed the job after its retries.)"""
    lib = tmp_path / "lib"
    lib.mkdir()
    Image.new("L", (6000, 6000), 0).save(lib / "big.png")  # about a second of decoding
    Image.new("RGB", (64, 48), (200, 30, 30)).save(lib / "red.png")
    (lib / "note.txt").write_text("a short note")
    with _BusyDecoderKiller() as killer:
        reports = _both(tmp_path, tiny_model, lib)
    assert killer.kills >= 2
    for runner, report in reports.items():
        assert _skips(report) == {str(lib / "big.png"): "the decoder crashed on this file (exit code -9)"}, runner
        assert report.added == 2, runner
    _same_result(tmp_path / "local", tmp_path / "ray")
    assert reports["ray"].runner["actor_restarts"] == 0


@pytest.mark.slow
@pytest.mark.ray
def test_ray_driver_loads_no_model_and_texts_are_encoded_on_the_actors(tmp_path, tiny_model, ray_address):
    """With the torch encoder (the model the actors load) and a model this machine has exported
    before, the indexing process never imports torch; a corpus of texts only is encoded by the
    actors (the report's runner says so) with the local run's vectors."""
    root = tmp_path / "texts"
    root.mkdir()
    for n in range(6):
        (root / f"note{n}.txt").write_text(f"note number {n} about a {['cat', 'dog', 'boat'][n % 3]}")
    (root / "lines.jsonl").write_text("\n".join(json.dumps({"text": f"line {n}"}) for n in range(5)) + "\n")
    with _engine(tmp_path / "local", tiny_model, image_encoder="torch") as engine:  # fills the export cache
        assert engine.add([root]).added == 11
    code = ("import sys\nsys.argv = ['mmsearch'] + sys.argv[1:]\nfrom mmsearch.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, "index", str(root), "-i", str(tmp_path / "ray"), *tiny_model.args,
                           "--json", "--runner", "ray", "--ray-address", ray_address],
                          env=ray_env(MMSEARCH_IMAGE_ENCODER="torch"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "no torch", done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == 11 and report["runner"]["actors_used"] == 1 and report["runner"]["encoder"].startswith("torch")
    _same_result(tmp_path / "local", tmp_path / "ray")


# -- option checks: run by default, start no Ray ------------------------------------------------------------
def test_runner_ray_without_ray_says_how_to_install(tmp_path, tiny_model, corpus):
    """Ray made unimportable in a fresh process: one line naming the extra, exit 2, nothing created."""
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['mmsearch'] + sys.argv[1:]; "
            "from mmsearch.cli import main; main()")
    idx = tmp_path / "idx"
    result = subprocess.run([sys.executable, "-c", code, "index", str(corpus), "-i", str(idx), *tiny_model.args,
                             "--runner", "ray"], capture_output=True, env=ENV, timeout=120, check=False)
    assert result.returncode == 2
    assert 'pip install "mmsearch[ray]"' in one_line(result.stderr)
    assert not idx.exists()


def test_runner_options_are_checked(tmp_path, tiny_model, corpus, cli):
    idx = tmp_path / "idx"
    result = cli("index", corpus, "-i", idx, *tiny_model.args, "--runner", "spark", ok=False)
    assert result.exit_code == 2 and "unknown runner 'spark'" in result.stderr
    result = cli("index", corpus, "-i", idx, *tiny_model.args, "--ray-address", "auto", ok=False)
    assert result.exit_code == 2 and "--runner ray" in result.stderr
    assert not idx.exists()


@pytest.mark.slow
@pytest.mark.ray
def test_ray_cli_without_address_starts_and_stops_its_own_ray(tmp_path, tiny_model, ray_address):
    """No --ray-address: the process starts a local Ray of its own (not the module's, although
    one runs here), indexes, and leaves none of that Ray's processes behind."""
    import psutil

    corpus = build_corpus(tmp_path / "corpus", 12, 4)
    proc = psutil.Popen([*index_cmd(corpus, tmp_path / "idx", tiny_model, "--json"), "--runner", "ray"],
                        env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started: dict[int, psutil.Process] = {}
    names: set[str] = set()
    while proc.poll() is None:  # the processes of the Ray it starts (gcs, raylet, workers)
        try:
            for child in proc.children(recursive=True):
                started[child.pid] = child
                names.add(child.name())
        except psutil.Error:
            pass
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["added"] == 17 and report["runner"]["runner"] == "ray"  # 12 images, 4 lines, a note
    assert "raylet" in names, names  # a Ray of its own: a driver joining one starts no raylet
    assert assert_consistent(tmp_path / "idx") == 17
    deadline = time.monotonic() + 30
    while any(_alive(c) for c in started.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [c.pid for c in started.values() if _alive(c)]


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
