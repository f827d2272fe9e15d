"""Bad input: broken and unusual files are skipped with a reason or decoded correctly; bad queries fail in one line."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from mmsearch import Engine
from mmsearch.media import FileEntry, ScanOptions, media_registry, scan
from mmsearch.media.image import decode_for_model, load_image
from mmsearch.media import Skip

MB = 1 << 20


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _gradient(size=(96, 64)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


GOOD = ["good1.jpg", "good2.png", "sub/good3.webp"]


@pytest.fixture
def bad_corpus(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "bad"
    for i, name in enumerate(GOOD):
        make_image(root / name, seed=10 + i)
    whole = (root / "good1.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not a picture\n" * 20)
    (root / "binary.gif").write_bytes(os.urandom(4096))
    (root / "bomb.png").write_bytes(bomb_png(100_000, 100_000))
    # Over the (lowered) decode cap: a PNG cannot be decoded reduced, so it is skipped; a JPEG of
    # the same pixel count decodes in draft mode within the cap, so it is indexed.
    monkeypatch.setenv("MMSEARCH_MAX_PIXELS", "1000000")
    make_image(root / "huge.png", seed=20, size=(1200, 1000))
    make_image(root / "huge_ok.jpg", seed=21, size=(2400, 2000))
    (root / "empty.txt").write_text("   \n")
    (root / "junk.txt").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    (root / "latin1.txt").write_bytes("crème brûlée in a café".encode("latin-1"))
    (root / "huge.txt").write_text("pasta " * 300_000)
    (root / "lines.jsonl").write_text(
        '{"text": "a cat on a mat"}\n{not json\n{"title": "no text field"}\n[1, 2]\n{"text": "a dog in the park"}\n'
    )
    (root / "broken.jpg").symlink_to(root / "does-not-exist.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # folder loop, not followed
    weird = os.fsdecode(b"caf\xe9-\xff.png")
    make_image(root / weird, seed=30)
    make_image(root / ("long-" + "x" * 240 + ".png"), seed=31)
    return root


EXPECTED_SKIPS = {
    "truncated.jpg": "cannot decode image",
    "zero.jpg": "empty file",
    "text.png": "not an image",
    "binary.gif": "not an image",
    "bomb.png": "too large",
    "huge.png": "too large",
    "empty.txt": "empty text",
    "junk.txt": "binary data",
    "lines.jsonl:2": "malformed JSON line",
    "lines.jsonl:3": "no non-empty string 'text' field",
    "lines.jsonl:4": "not a JSON object",
    "broken.jpg": "broken symlink",
    "loop.jpg": "symlink loop",
}


def test_bad_files_skipped_with_reasons_good_ones_indexed(tmp_path, tiny_model, bad_corpus, cli):
    idx = tmp_path / "idx"
    result = cli("index", bad_corpus, "-i", idx, *tiny_model.args, "--json")
    report = json.loads(result.stdout)
    skipped = {os.path.relpath(s["path"], bad_corpus): s["reason"] for s in report["skipped_files"]}
    for name, reason in EXPECTED_SKIPS.items():
        assert name in skipped, f"{name} not skipped: {skipped}"
        assert reason in skipped[name], (name, skipped[name])
    assert set(skipped) == set(EXPECTED_SKIPS)
    assert report["skipped"] == len(EXPECTED_SKIPS)
    # Every skip is one line on stderr naming the path and the reason.
    for name, reason in EXPECTED_SKIPS.items():
        assert any(name.split(":")[0] in line and reason in line for line in result.stderr.splitlines())
    # good images + huge_ok.jpg + weird + long name; latin1.txt, huge.txt, 2 jsonl lines
    assert (report["added"], report["reused"]) == (len(GOOD) + 3 + 4, 0)

    with Engine(idx) as engine:
        paths = {h.path for h in engine.search("pasta", k=100)}
        assert str(bad_corpus / os.fsdecode(b"caf\xe9-\xff.png")) in paths
        assert any(len(os.path.basename(p)) > 240 for p in paths)
        latin = [h for h in engine.search("crème", k=100, type="text") if h.path.endswith("latin1.txt")]
        assert latin and latin[0].text == "crème brûlée in a café"
        huge = [h for h in engine.search("pasta", k=100, type="text") if h.path.endswith("huge.txt")][0]
        # Stored text is capped; the encoder saw the first context-length tokens only.
        assert len(huge.text) <= 20_000
        stored = _vector(engine, huge.id)
        assert np.allclose(stored, engine.encoder.encode_texts(["pasta " * 100])[0], atol=1e-5)
        # A non-UTF-8 file name round-trips through the database and back to the file system.
        weird = engine.search(bad_corpus / os.fsdecode(b"caf\xe9-\xff.png"), k=1, include_query=True)[0]
        assert weird.score == pytest.approx(1.0, abs=1e-4) and os.path.exists(weird.path)

    # -0 prints the original bytes of the name, --paths a readable escaped form (valid UTF-8);
    # --json and the table do not crash.
    result = cli("query", "pasta", "-i", idx, "-0", "-k", "100")
    assert b"caf\xe9-\xff.png\0" in result.stdout_bytes
    result = cli("query", "pasta", "-i", idx, "--paths", "-k", "100")
    assert "caf\\xe9-\\xff.png\n" in result.stdout_bytes.decode("utf-8")
    cli("query", "pasta", "-i", idx, "-k", "100")
    cli("query", "pasta", "-i", idx, "-k", "100", "--json")

    # A second run re-reads nothing and reports the same skips (the bad files are still there).
    again = json.loads(cli("index", bad_corpus, "-i", idx, *tiny_model.args, "--json").stdout)
    assert again["added"] == again["removed"] == 0 and again["unchanged"] == report["added"]


def _vector(engine: Engine, item_id: int) -> np.ndarray:
    with engine.store.read() as r:
        return np.frombuffer(r.vector_of(item_id), np.float32)


# -- decoding correctness ------------------------------------------------------------------------

def _mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    grey = np.linspace(0, 65535, 64 * 48, dtype=np.float64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode.startswith("I")  # really 16-bit on disk
    img = load_image(tmp_path / "deep.png")
    expected = (grey.astype(np.float64) / 65535 * 255)
    assert img.mode == "RGB" and np.abs(np.asarray(img)[..., 0] - expected).max() <= 1.0


def test_cmyk_greyscale_palette_transparency(tmp_path):
    src = _gradient()
    src.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert _mean_diff(load_image(tmp_path / "cmyk.jpg"), src) < 8

    src.convert("L").save(tmp_path / "grey.jpg", quality=95)
    grey = load_image(tmp_path / "grey.jpg")
    assert grey.mode == "RGB" and _mean_diff(grey, src.convert("L").convert("RGB")) < 3

    pal = Image.new("P", (40, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (20, 0, 40, 20))  # right half red, left half index 0 = transparent
    pal.save(tmp_path / "pal.png", transparency=0)
    arr = np.asarray(load_image(tmp_path / "pal.png"))
    assert (arr[:, :20] == 255).all()  # transparent -> white background, not black
    assert (arr[:, 20:] == [255, 0, 0]).all()


def test_animated_gif_and_multipage_tiff_use_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(tmp_path / "pages.tiff", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "pages.tiff"):
        arr = np.asarray(load_image(tmp_path / name)).astype(int)
        assert arr[..., 0].mean() > 200 and arr[..., 2].mean() < 50, name


def test_exif_rotated_photo_is_indexed_upright(tmp_path):
    src = _gradient((96, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    src.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    img = load_image(tmp_path / "rotated.jpg")
    assert img.size == (48, 96)
    assert _mean_diff(img, src.transpose(Image.Transpose.ROTATE_270)) < 4
    st = os.stat(tmp_path / "rotated.jpg")
    records, _ = media_registry().read_records(FileEntry(str(tmp_path / "rotated.jpg"), st.st_size, st.st_mtime_ns, "image"))
    assert (records[0].width, records[0].height) == (48, 96)


def test_large_jpeg_decodes_reduced_within_cap(tmp_path):
    make_image(tmp_path / "big.jpg", seed=3, size=(3000, 2000))
    img = load_image(tmp_path / "big.jpg", target=224, limit=1_000_000)
    assert min(img.size) >= 448 and img.size[0] * img.size[1] <= 1_000_000
    # The reduced decode matches a full decode scaled down (draft mode is a faithful shortcut).
    with Image.open(tmp_path / "big.jpg") as full:
        reference = full.convert("RGB").resize(img.size, Image.Resampling.BOX)
    assert _mean_diff(img, reference) < 6


# -- the file system changing under the indexer --------------------------------------------------

def test_file_deleted_or_replaced_after_listing(tmp_path):
    for name in ("gone.jpg", "fifo.jpg", "ok.png"):
        make_image(tmp_path / name, seed=1)
    entries = {os.path.basename(e.path): e for e in scan([tmp_path], ScanOptions()).files}
    (tmp_path / "gone.jpg").unlink()
    (tmp_path / "fifo.jpg").unlink()
    os.mkfifo(tmp_path / "fifo.jpg")  # reading a FIFO would block forever
    assert media_registry().read_records(entries["gone.jpg"])[1][0].reason == "file disappeared after it was listed"
    assert media_registry().read_records(entries["fifo.jpg"])[1][0].reason == "not a regular file"
    assert media_registry().read_records(entries["ok.png"])[0]
    # ... and between reading and decoding.
    result = decode_for_model(str(tmp_path / "gone.jpg"), 32, 10**7)
    assert isinstance(result, Skip) and "disappeared" in result.reason
    assert isinstance(decode_for_model(str(tmp_path / "fifo.jpg"), 32, 10**7), Skip)


def test_decode_timeout_abandons_slow_file(tmp_path, tiny_model, cli, monkeypatch):
    root = tmp_path / "slow"
    root.mkdir()
    # 36 megapixels of zeros: a 100 KB file whose decode takes far longer than the deadline.
    Image.new("L", (6000, 6000), 0).save(root / "slow.png")
    (root / "note.txt").write_text("a short note")
    monkeypatch.setenv("MMSEARCH_DECODE_TIMEOUT", "0.02")
    report = json.loads(cli("index", root, "-i", tmp_path / "idx", *tiny_model.args, "--json").stdout)
    assert report["added"] == 1 and report["skipped"] == 1
    assert "abandoned" in report["skipped_files"][0]["reason"]
    assert report["skipped_files"][0]["path"].endswith("slow.png")


def test_unreadable_file_and_folder(tmp_path, tiny_model):
    """Permission errors. Root reads everything, so as root the run drops the capabilities that let it."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", caps, "--"]
    root = tmp_path / "corpus"
    make_image(root / "ok.png", seed=1)
    make_image(root / "secret.png", seed=2)
    make_image(root / "locked" / "inside.png", seed=3)
    os.chmod(root / "secret.png", 0o000)
    os.chmod(root / "locked", 0o000)
    try:
        cmd = [*prefix, sys.executable, "-m", "mmsearch", "index", str(root), "-i", str(tmp_path / "idx"),
               *tiny_model.args, "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    finally:
        os.chmod(root / "secret.png", 0o644)
        os.chmod(root / "locked", 0o755)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    reasons = {os.path.basename(s["path"]): s["reason"] for s in report["skipped_files"]}
    assert "permission denied" in reasons["secret.png"].lower()
    assert "cannot list folder" in reasons["locked"] and "ermission" in reasons["locked"]
    assert report["added"] == 1 and report["skipped"] == 2


# -- bad query input -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_index(tmp_path_factory, tiny_model):
    from mmsearch.cli import app
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("q")
    make_image(root / "corpus" / "a.png", seed=1)
    result = CliRunner().invoke(app, ["index", str(root / "corpus"), "-i", str(root / "idx"), *tiny_model.args, "-q"])
    assert result.exit_code == 0, result.output
    return root


def _newer_schema(root: Path) -> Path:
    folder = root / "newer"
    if not folder.exists():
        shutil.copytree(root / "idx", folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["schema_version"] = 99
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _not_index(root: Path) -> Path:
    folder = root / "notindex"
    folder.mkdir(exist_ok=True)
    (folder / "photo.jpg").write_bytes(b"x")
    return folder


@pytest.mark.parametrize(
    "case, message, code",
    [
        ("empty", "empty query", 2),
        ("missing-image", "image not found", 2),
        ("bad-image", "cannot use image", 2),
        ("bad-type", "unknown type", 2),
        ("no-index", "index not found", 1),
        ("not-index", "not an mmsearch index", 1),
        ("newer", "newer mmsearch", 1),
    ],
)
def test_bad_query_input_one_line_error(small_index, cli, case, message, code):
    idx = small_index / "idx"
    (small_index / "junk.jpg").write_bytes(b"not really a jpeg")
    args = {
        "empty": ["query", "", "-i", idx],
        "missing-image": ["query", small_index / "nope.jpg", "-i", idx],
        "bad-image": ["query", small_index / "junk.jpg", "-i", idx],
        "bad-type": ["query", "cat", "--type", "audio", "-i", idx],
        "no-index": ["query", "cat", "-i", small_index / "absent"],
        "not-index": ["query", "cat", "-i", _not_index(small_index)],
        "newer": ["query", "cat", "-i", _newer_schema(small_index)],
    }[case]
    result = cli(*args, ok=False)
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# -- said once: HEIC without its extra, bad files that did not change ---------------------------
def _index(idx: Path, folder: Path, tiny_model, *extra: str) -> tuple[dict, list[str]]:
    """`mmsearch index` in a new process, as cron runs it: (the JSON report, stderr lines)."""
    from conftest import ENV

    args = ["-i", str(idx), *tiny_model.args, "-q"] if folder is not None else ["-i", str(idx), "-q"]
    done = subprocess.run([sys.executable, "-m", "mmsearch", "index", *([str(folder)] if folder else []), *args, *extra],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr.splitlines()


@pytest.mark.skipif(__import__("importlib").util.find_spec("pillow_heif") is not None,
                    reason="pillow-heif is installed here: HEIC photos are indexed")
def test_heic_without_the_extra_is_named_once_with_the_way_forward(tmp_path, tiny_model):
    """A .heic photo where pillow-heif is missing was neither indexed nor named (issue 30 item 9):
    one line per run names it (and how many more) and says what to install."""
    lib = tmp_path / "lib"
    make_image(lib / "a.jpg", seed=1)
    for n in range(3):
        (lib / f"IMG_{n}.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    _, lines = _index(tmp_path / "idx", lib, tiny_model)
    heic = [line for line in lines if "HEIC" in line]
    assert len(heic) == 1, lines
    assert 'pip install "mmsearch[heif]"' in heic[0] and "IMG_0.HEIC" in heic[0] and "2 more" in heic[0]
    with Engine(tmp_path / "idx") as engine:
        assert engine.info()["images"] == 1


def test_bad_files_are_named_once_then_counted(tmp_path, tiny_model):
    """A cron `mmsearch index` named the same unchanged bad files at every run (issue 30 item
    17): named when first seen, then one line counts them; --verbose names them again; a bad file
    that changes (still bad) is named again."""
    lib = tmp_path / "lib"
    make_image(lib / "good.jpg", seed=1)
    for n in range(3):
        (lib / f"bad{n}.jpg").write_bytes(b"not a picture " * (n + 1))
    idx = tmp_path / "idx"
    _, first = _index(idx, lib, tiny_model)
    assert sorted(line.split(":")[0] for line in first if line.startswith("skipped ")) == \
        [f"skipped {lib / f'bad{n}.jpg'}" for n in range(3)], first
    _, second = _index(idx, None, tiny_model)
    assert not [line for line in second if line.startswith("skipped ")], second
    assert "3 file(s) skipped as before (unchanged); --verbose lists them" in second
    _, verbose = _index(idx, None, tiny_model, "--verbose")
    assert len([line for line in verbose if line.startswith("skipped ")]) == 3 and not any("as before" in x for x in verbose)
    (lib / "bad1.jpg").write_bytes(b"still not a picture, but changed")
    report, third = _index(idx, None, tiny_model, "--json")
    assert [line for line in third if line.startswith("skipped ")] == [next(x for x in third if "bad1.jpg" in x)]
    assert json.loads(report)["skipped"] == 3 and json.loads(report)["skipped_before"] == 2
