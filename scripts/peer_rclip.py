"""Run the peer rclip 3.3.0 on this machine for the benchmarks (issue 6).

rclip cannot download its weights here, so we give it a randomly initialised open_clip
``ViT-B-32-256`` (its own architecture) exported exactly as its model repository ships it:

* ``$RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/visual.onnx``: input ``input`` float32
  [batch, 3, 256, 256] -> output ``output`` [batch, 512] (``model.visual``, unnormalised);
* ``$RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/textual.onnx``: input ``input`` int64
  [batch, 77] -> output ``output`` [batch, 512] (``model.encode_text``);
* ``$RCLIP_DATADIR/tokenizer/bpe_simple_vocab_16e6.txt.gz``: the CLIP BPE vocabulary (copied
  from the open_clip package, byte-identical to the one rclip vendors).

When all three files exist, rclip's ``model_download.ensure_downloaded`` makes no hub call at all;
we also set ``HF_HUB_OFFLINE=1``. ``RCLIP_DATADIR`` also holds rclip's index, ``db.sqlite3``, so
every data dir gets symlinks to one shared exported model (``.bench/rclip-model``).

rclip is installed in its own venv (``.bench/rclip-venv``, ``pip install rclip==3.3.0``), never in
the project's. Exporting needs the ``onnx`` package, which the project venv lacks; it is installed
with ``pip --target .bench/onnx-export --no-deps`` (plus protobuf and ml_dtypes) and put on
``PYTHONPATH`` of the export subprocess only.

Library use (the benchmark imports this file)::

    import peer_rclip
    peer_rclip.ensure_rclip()
    peer_rclip.prepare_rclip_model()
    run = peer_rclip.rclip_index_and_query(corpus, data_dir, "a dog on a beach")
    cold = peer_rclip.rclip_cold_query(corpus, data_dir, "a dog on a beach")
    syn = peer_rclip.rclip_fill_synthetic(other_dir, 100_000)
    big = peer_rclip.rclip_cold_query(syn["root"], other_dir, "a dog on a beach")

By hand::

    python scripts/peer_rclip.py trial            # install, export, index+query and cold query a small corpus
    python scripts/peer_rclip.py index CORPUS --data-dir D
    python scripts/peer_rclip.py query CORPUS --data-dir D
    python scripts/peer_rclip.py fill --data-dir D --n 100000 && python scripts/peer_rclip.py query D/synthetic-library --data-dir D
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.*: test helpers shared with scripts

from benchutil import run_process  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".bench"
DEFAULT_VENV = BENCH_DIR / "rclip-venv"
DEFAULT_MODEL_DIR = BENCH_DIR / "rclip-model"
ONNX_EXPORT_DIR = BENCH_DIR / "onnx-export"

RCLIP_VERSION = "3.3.0"
# rclip/model_download.py: MODEL_SUBDIR, VISUAL_ONNX, TEXTUAL_ONNX, TOKENIZER_VOCAB.
MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"
VISUAL_ONNX = "visual.onnx"
TEXTUAL_ONNX = "textual.onnx"
TOKENIZER_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
DB_NAME = "db.sqlite3"  # rclip/main.py: init_rclip
ARCH = "ViT-B-32-256"
VECTOR_DIM = 512  # rclip/model.py: Model.VECTOR_SIZE
CONTEXT_LENGTH = 77
# The ONNX exporter settings rclip's own conversion script uses (TorchScript exporter, opset 18,
# dynamic batch axis), so the graph ORT runs is the same shape of graph rclip users get.
ONNX_OPSET = 18
ONNX_EXPORT_PACKAGES = ["onnx", "protobuf>=6.31.1", "ml_dtypes>=0.5.4"]
DEFAULT_QUERY = "a dog playing on a beach"
SYNTHETIC_ROOT = "synthetic-library"


class PeerError(RuntimeError):
    """rclip could not be installed, prepared or run."""


# ---------------------------------------------------------------- installation


def _venv_bin(venv_dir: Path, name: str) -> Path:
    return Path(venv_dir) / "bin" / name


def rclip_python(venv_dir: str | Path = DEFAULT_VENV) -> Path:
    return _venv_bin(Path(venv_dir), "python")


def _pip(python: Path | str, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PeerError(f"pip install {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")


def ensure_rclip(venv_dir: str | Path = DEFAULT_VENV) -> Path:
    """Create ``venv_dir`` with rclip==3.3.0 unless it is there already; return the ``rclip`` executable."""
    venv_dir = Path(venv_dir)
    exe = _venv_bin(venv_dir, "rclip")
    python = rclip_python(venv_dir)
    if exe.exists() and python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('rclip'))"],
            capture_output=True, text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == RCLIP_VERSION:
            return exe
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    # A plain interpreter, not the project's venv python, so nothing of mmsearch leaks in.
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    proc = subprocess.run([base_python, "-m", "venv", str(venv_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PeerError(f"cannot create {venv_dir}: {proc.stderr.strip()}")
    _pip(python, f"rclip=={RCLIP_VERSION}")
    if not exe.exists():
        raise PeerError(f"rclip installed but {exe} is missing")
    return exe


def ensure_onnx_exporter(target: str | Path = ONNX_EXPORT_DIR) -> Path:
    """The ``onnx`` package for torch's exporter, in its own folder (numpy and torch come from the project venv)."""
    target = Path(target)
    if (target / "onnx" / "__init__.py").exists():
        return target
    _pip(sys.executable, "--no-deps", "--target", str(target), *ONNX_EXPORT_PACKAGES)
    return target


# ---------------------------------------------------------------- model


def _model_ready(model_dir: Path, arch: str, seed: int) -> bool:
    try:
        meta = json.loads((model_dir / "export.json").read_text())
    except (OSError, ValueError):
        return False
    files = [model_dir / MODEL_SUBDIR / VISUAL_ONNX, model_dir / MODEL_SUBDIR / TEXTUAL_ONNX, model_dir / TOKENIZER_VOCAB]
    return meta.get("arch") == arch and meta.get("seed") == seed and meta.get("verified") and all(f.is_file() for f in files)


def prepare_rclip_model(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    *,
    arch: str = ARCH,
    seed: int = 0,
    force: bool = False,
    venv_dir: str | Path = DEFAULT_VENV,
    python: str | Path | None = None,
) -> Path:
    """Export a seeded random ``arch`` to rclip's ONNX layout under ``model_dir`` and verify it through rclip.

    The export runs in a subprocess of ``python`` (default: this interpreter, the project venv with
    torch and open_clip). The check loads the files with rclip's own loader and tokenizer in rclip's
    venv and compares its outputs with torch's. Returns ``model_dir``; cached by (arch, seed).
    """
    model_dir = Path(model_dir)
    if not force and _model_ready(model_dir, arch, seed):
        return model_dir
    ensure_rclip(venv_dir)
    onnx_path = ensure_onnx_exporter()
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir.parent if model_dir.parent.exists() else None))
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(onnx_path), os.environ.get("PYTHONPATH")])))
        proc = subprocess.run(
            [str(python or sys.executable), str(Path(__file__).resolve()), "_export", str(staging), "--arch", arch,
             "--seed", str(seed)],
            env=env, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise PeerError(f"ONNX export failed: {proc.stderr.strip()[-3000:]}")
        check = _verify_with_rclip(staging, venv_dir)
        meta = json.loads((staging / "export.json").read_text())
        meta.update(verified=True, rclip_check=check)
        (staging / "export.json").write_text(json.dumps(meta, indent=1))
        (staging / "reference.npz").unlink()
        staging.chmod(0o755)  # mkdtemp made it private
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.replace(model_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def _export(out: Path, arch: str, seed: int) -> None:
    """Runs in the project venv (torch, open_clip, onnx on PYTHONPATH): write the three files + reference outputs."""
    import warnings

    import open_clip
    import torch

    warnings.filterwarnings("ignore")
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=None)
    model.eval()
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    if image_size != 256:
        raise SystemExit(f"rclip 3.3 preprocesses to 256x256; {arch} wants {image_size}")

    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.visual(pixels)

    class Textual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.clip.encode_text(tokens)

    sub = out / MODEL_SUBDIR
    sub.mkdir(parents=True, exist_ok=True)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}}
    for module, example, name in (
        (Visual(), torch.randn(1, 3, image_size, image_size), VISUAL_ONNX),
        (Textual(), torch.zeros(1, CONTEXT_LENGTH, dtype=torch.long), TEXTUAL_ONNX),
    ):
        # Not under no_grad: that switches nn.MultiheadAttention to its fused fast path, which has no ONNX export.
        torch.onnx.export(module.eval(), (example,), str(sub / name), input_names=["input"], output_names=["output"],
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
    vocab = out / TOKENIZER_VOCAB
    vocab.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", vocab)
    # Reference outputs (batch 3, exercising the dynamic axis) for the check run through rclip.
    generator = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randn(3, 3, image_size, image_size, generator=generator)
    texts = ["a dog playing on a beach", "a red car", "ünïcode query with a longer tail " * 2]
    tokens = open_clip.get_tokenizer(arch)(texts)
    with torch.no_grad():
        np.savez(out / "reference.npz", pixels=pixels.numpy(), image_out=model.visual(pixels).numpy(),
                 tokens=tokens.numpy(), text_out=model.encode_text(tokens).numpy(), texts=np.array(texts))
    (out / "export.json").write_text(json.dumps({
        "arch": arch, "seed": seed, "pretrained": None, "opset": ONNX_OPSET, "torch": torch.__version__,
        "open_clip": open_clip.__version__, "rclip_model_subdir": MODEL_SUBDIR,
    }))


_VERIFY_SNIPPET = r"""
import json, sys
import numpy as np
from rclip import model_download
from rclip.model import Model
ref = np.load(sys.argv[1])
m = Model()
m.ensure_downloaded()
tokens = m._tokenizer([str(t) for t in ref["texts"]])
image = m._run_visual(ref["pixels"])
text = m._run_textual(tokens)
print(json.dumps({
  "tokens_equal": bool((tokens == ref["tokens"]).all()),
  "image_max_abs_diff": float(np.abs(image - ref["image_out"]).max()),
  "text_max_abs_diff": float(np.abs(text - ref["text_out"]).max()),
  "image_shape": list(image.shape), "text_shape": list(text.shape),
  "visual_input": model_download.load_visual_query_session().get_inputs()[0].type,
}))
"""


def _verify_with_rclip(model_dir: Path, venv_dir: str | Path) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        link_model(data_dir, model_dir)
        proc = subprocess.run([str(rclip_python(venv_dir)), "-c", _VERIFY_SNIPPET, str(model_dir / "reference.npz")],
                              env=rclip_env(data_dir), capture_output=True, text=True)
    if proc.returncode != 0:
        raise PeerError(f"rclip cannot load the exported model: {proc.stderr.strip()[-3000:]}")
    check = json.loads(proc.stdout.strip().splitlines()[-1])
    if not check["tokens_equal"] or check["image_max_abs_diff"] > 1e-3 or check["text_max_abs_diff"] > 1e-3:
        raise PeerError(f"rclip's run of the exported model disagrees with torch: {check}")
    return check


def link_model(data_dir: str | Path, model_dir: str | Path = DEFAULT_MODEL_DIR) -> Path:
    """Make ``data_dir`` a usable RCLIP_DATADIR: symlinks to the shared exported model files."""
    data_dir, model_dir = Path(data_dir), Path(model_dir).resolve()
    if not (model_dir / MODEL_SUBDIR / VISUAL_ONNX).is_file():
        raise PeerError(f"no exported model in {model_dir}; run prepare_rclip_model() first")
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_SUBDIR, Path(TOKENIZER_VOCAB).parts[0]):
        link = data_dir / name
        if link.is_symlink() and link.resolve() == model_dir / name:
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(model_dir / name, target_is_directory=True)
    return data_dir


def rclip_env(data_dir: str | Path) -> dict[str, str]:
    """Environment for an offline rclip run whose model and index live in ``data_dir``."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env.update(RCLIP_DATADIR=str(Path(data_dir).resolve()), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


# ---------------------------------------------------------------- runs


def _run_measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Wall time, CPU time and the child's own peak RSS (see benchutil.run_process)."""
    run = run_process(cmd, env, cwd=cwd, check=False, replace_env=True)
    return {"wall_s": round(run.seconds, 3), "peak_rss_mb": round(run.max_rss_mb, 1),
            "user_s": round(run.user_s, 2), "sys_s": round(run.sys_s, 2),
            "returncode": run.returncode, "stdout": run.stdout, "stderr": run.stderr}


def _parse_results(stdout: str) -> list[tuple[float, str]]:
    """rclip prints ``score<TAB>filepath`` then ``0.123<TAB>"/abs/path"`` per hit."""
    hits = []
    for line in stdout.splitlines():
        score, sep, path = line.partition("\t")
        if not sep or score == "score":
            continue
        hits.append((float(score), path.strip().strip('"')))
    return hits


def db_items(data_dir: str | Path) -> int:
    """Rows a query can see (not flagged deleted)."""
    path = Path(data_dir) / DB_NAME
    if not path.exists():
        return 0
    with sqlite3.connect(path) as con:
        return con.execute("SELECT count(*) FROM images WHERE deleted IS NULL").fetchone()[0]


def _rclip_run(kind: str, corpus_dir: str | Path, data_dir: str | Path, query: str, extra: list[str], *, top: int,
               venv_dir: str | Path, model_dir: str | Path) -> dict:
    corpus_dir = Path(corpus_dir).resolve()
    if not corpus_dir.is_dir():
        raise PeerError(f"{corpus_dir} is not a folder")
    link_model(data_dir, model_dir)
    exe = ensure_rclip(venv_dir)
    # rclip searches the current directory; the query is positional.
    cmd = [str(exe), *extra, "--top", str(top), query]
    run = _run_measured(cmd, corpus_dir, rclip_env(data_dir))
    if run["returncode"] != 0:
        raise PeerError(f"rclip exited {run['returncode']}: {run['stderr'].strip()[-2000:]}")
    results = _parse_results(run["stdout"])
    return {
        "tool": f"rclip {RCLIP_VERSION}", "kind": kind, "command": cmd, "cwd": str(corpus_dir),
        "wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"], "user_s": run["user_s"], "sys_s": run["sys_s"],
        "items": db_items(data_dir), "results": results, "stderr_tail": run["stderr"][-500:],
    }


def rclip_index_and_query(
    corpus_dir: str | Path, data_dir: str | Path, query: str = DEFAULT_QUERY, *, top: int = 10,
    batch_size: int | None = None, fresh: bool = True, venv_dir: str | Path = DEFAULT_VENV,
    model_dir: str | Path = DEFAULT_MODEL_DIR,
) -> dict:
    """One new rclip process that indexes ``corpus_dir`` (from an empty index when ``fresh``) and answers ``query``.

    This is what an rclip user runs: ``cd corpus && rclip QUERY``. Returns wall seconds, the
    process's peak RSS, CPU seconds, the number of indexed items and the hits.
    """
    if fresh:
        for suffix in ("", "-journal", "-wal", "-shm"):
            (Path(data_dir) / (DB_NAME + suffix)).unlink(missing_ok=True)
    extra = ["--indexing-batch-size", str(batch_size)] if batch_size else []
    return _rclip_run("index+query", corpus_dir, data_dir, query, extra, top=top, venv_dir=venv_dir,
                      model_dir=model_dir)


def rclip_cold_query(
    corpus_dir: str | Path, data_dir: str | Path, query: str = DEFAULT_QUERY, *, top: int = 10,
    no_indexing: bool = True, venv_dir: str | Path = DEFAULT_VENV, model_dir: str | Path = DEFAULT_MODEL_DIR,
) -> dict:
    """One new rclip process answering ``query`` over an existing index.

    ``no_indexing`` (default) passes ``--no-indexing``: rclip skips the folder walk and only loads
    every vector under the folder from SQLite, scores and sorts them in Python. Without it rclip also
    walks the folder and looks each file up in the index (nothing to re-embed). Synthetic indexes
    (``rclip_fill_synthetic``) must use ``no_indexing=True``: their files do not exist, so a walk
    would mark every row deleted.
    """
    if not (Path(data_dir) / DB_NAME).exists():
        raise PeerError(f"no rclip index in {data_dir}")
    extra = ["--no-indexing"] if no_indexing else []
    return _rclip_run("cold query" + (" --no-indexing" if no_indexing else " (with folder check)"), corpus_dir,
                      data_dir, query, extra, top=top, venv_dir=venv_dir, model_dir=model_dir)


# ---------------------------------------------------------------- synthetic index

VectorSource = np.ndarray | Callable[[int, int], np.ndarray] | Iterable[np.ndarray] | None


def clustered_vectors(n: int, dim: int = VECTOR_DIM, seed: int = 0, chunk: int = 50_000) -> Iterator[np.ndarray]:
    """mmsearch's CLIP-like clustered unit vectors (``tests/support/synthetic.py``), in chunks."""
    from support.synthetic import clustered_vectors as generate

    data = generate(n, dim, seed=seed)
    for start in range(0, n, chunk):
        yield data[start:start + chunk]


def _chunks(n: int, vectors: VectorSource, seed: int, chunk: int) -> Iterator[np.ndarray]:
    if vectors is None:
        yield from clustered_vectors(n, seed=seed, chunk=chunk)
    elif isinstance(vectors, np.ndarray):
        for start in range(0, n, chunk):
            yield vectors[start:start + chunk]
    elif callable(vectors):
        for start in range(0, n, chunk):
            yield vectors(start, min(chunk, n - start))
    else:
        yield from vectors


_CREATE_DB = "import sys; from rclip import db; db.DB(sys.argv[1]).close()"


def rclip_fill_synthetic(
    data_dir: str | Path, n: int, vectors: VectorSource = None, *, seed: int = 0, root: str | Path | None = None,
    chunk: int = 50_000, venv_dir: str | Path = DEFAULT_VENV, model_dir: str | Path = DEFAULT_MODEL_DIR,
) -> dict:
    """Replace ``data_dir``'s rclip index with ``n`` synthetic rows in rclip's own schema.

    The schema (table ``images``, its indexes, ``db_version`` = 4) is created by rclip's own ``DB``
    class in rclip's venv; rows are then bulk-inserted like rclip's ``upsert_image`` writes them:
    ``filepath`` = ``<root>/<nnnn>/IMG_<i>.jpg`` (absolute; ``root`` is an empty folder made here,
    default ``<data_dir>/synthetic-library``), a float ``modified_at``, a ``size``, a ``hash`` string
    and the 512 float32 values as a 2048-byte blob; ``deleted`` and ``indexing`` NULL.

    A query run in ``root`` with ``--no-indexing`` (``rclip_cold_query(root, data_dir)``) selects
    ``filepath, vector WHERE filepath LIKE '<root>/%' AND deleted IS NULL`` and never touches the
    files, so they need not exist. ``vectors``: None (clustered unit vectors from ``seed``), an
    (n, 512) array, a function ``(start, count) -> array``, or an iterable of arrays.
    """
    data_dir = Path(data_dir)
    link_model(data_dir, model_dir)
    root = Path(root) if root is not None else data_dir / SYNTHETIC_ROOT
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    db_path = data_dir / DB_NAME
    for suffix in ("", "-journal", "-wal", "-shm"):
        (data_dir / (DB_NAME + suffix)).unlink(missing_ok=True)
    proc = subprocess.run([str(rclip_python(venv_dir)), "-c", _CREATE_DB, str(db_path)], env=rclip_env(data_dir),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PeerError(f"rclip could not create its database: {proc.stderr.strip()[-2000:]}")
    start = time.perf_counter()
    written = 0
    mtime = 1_700_000_000.0  # + i + 0.25: fractional, REAL like a real st_mtime
    con = sqlite3.connect(db_path)
    try:
        con.execute("PRAGMA synchronous=OFF")  # this connection only; rclip's own runs use its defaults
        for block in _chunks(n, vectors, seed, chunk):
            block = np.ascontiguousarray(block[: n - written], dtype=np.float32)
            if block.ndim != 2 or block.shape[1] != VECTOR_DIM:
                raise PeerError(f"vectors must be (*, {VECTOR_DIM}), got {block.shape}")
            rows = []
            for offset, vector in enumerate(block):
                i = written + offset
                rows.append((f"{root}/{i // 1000:04d}/IMG_{i:07d}.jpg", mtime + i + 0.25, 2_000_000 + (i * 7919) % 3_000_000,
                             vector.tobytes(), hashlib.sha256(i.to_bytes(8, "little")).hexdigest()))
            con.executemany("INSERT INTO images(deleted, indexing, filepath, modified_at, size, vector, hash) "
                            "VALUES (NULL, NULL, ?, ?, ?, ?, ?)", rows)
            con.commit()
            written += len(block)
            if written >= n:
                break
    finally:
        con.close()
    if written != n:
        raise PeerError(f"vector source gave {written} vectors, {n} wanted")
    return {"root": str(root), "items": written, "db_bytes": db_path.stat().st_size,
            "fill_s": round(time.perf_counter() - start, 2)}


# ---------------------------------------------------------------- CLI


def _public(result: dict, hits: int = 3) -> dict:
    out = dict(result)
    if "results" in out:
        out["results"] = out["results"][:hits]
    return out


def _trial(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from photo_corpus import make_photo_corpus

    work = Path(args.workdir)
    corpus = work / "corpus"
    make_photo_corpus(corpus, args.n, (args.width, args.height), seed=0)
    ensure_rclip(args.venv)
    prepare_rclip_model(args.model_dir, venv_dir=args.venv)
    data = work / "data"
    indexed = rclip_index_and_query(corpus, data, args.query, venv_dir=args.venv, model_dir=args.model_dir)
    if indexed["items"] != args.n or not indexed["results"]:
        raise PeerError(f"rclip indexed {indexed['items']} of {args.n} images, {len(indexed['results'])} hits")
    cold = rclip_cold_query(corpus, data, args.query, venv_dir=args.venv, model_dir=args.model_dir)
    checked = rclip_cold_query(corpus, data, args.query, no_indexing=False, venv_dir=args.venv,
                               model_dir=args.model_dir)
    syn_dir = work / "synthetic"
    filled = rclip_fill_synthetic(syn_dir, args.synthetic, venv_dir=args.venv, model_dir=args.model_dir)
    syn = rclip_cold_query(filled["root"], syn_dir, args.query, venv_dir=args.venv, model_dir=args.model_dir)
    if syn["items"] != args.synthetic or len(syn["results"]) != min(10, args.synthetic):
        raise PeerError(f"synthetic query saw {syn['items']} items, {len(syn['results'])} hits")
    return {"index+query": _public(indexed), "cold_query": _public(cold), "cold_query_with_check": _public(checked),
            "synthetic_fill": filled, "synthetic_cold_query": _public(syn)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the peer rclip 3.3.0 offline with a random ViT-B-32-256.")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="rclip's own venv (default .bench/rclip-venv)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="exported model (default .bench/rclip-model)")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{install,prepare-model,index,query,fill,trial}")
    sub.add_parser("install", help="create the venv and pip install rclip==3.3.0")
    p = sub.add_parser("prepare-model", help="export a seeded random ViT-B-32-256 to rclip's ONNX files and verify")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    for name, text in (("index", "new process: index CORPUS from an empty index and run one query"),
                       ("query", "new process: query the existing index of CORPUS")):
        p = sub.add_parser(name, help=text)
        p.add_argument("corpus", type=Path)
        p.add_argument("--data-dir", type=Path, required=True, help="RCLIP_DATADIR: index + model links")
        p.add_argument("--query", default=DEFAULT_QUERY)
        p.add_argument("--top", type=int, default=10)
        if name == "index":
            p.add_argument("--batch-size", type=int, default=None, help="rclip --indexing-batch-size (default 8)")
        else:
            p.add_argument("--with-indexing", action="store_true", help="let rclip walk the folder first (no -n)")
    p = sub.add_parser("fill", help="replace DATA_DIR's index with N synthetic rows (query it in DATA_DIR/synthetic-library)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("trial", help="end to end on a small generated corpus")
    p.add_argument("--workdir", type=Path, default=BENCH_DIR / "rclip-trial")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--synthetic", type=int, default=2000)
    p.add_argument("--query", default=DEFAULT_QUERY)
    p = sub.add_parser("_export", help=argparse.SUPPRESS)
    p.add_argument("out", type=Path)
    p.add_argument("--arch", default=ARCH)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        if args.cmd == "_export":
            _export(args.out, args.arch, args.seed)
            return 0
        if args.cmd == "install":
            result: dict = {"rclip": str(ensure_rclip(args.venv))}
        elif args.cmd == "prepare-model":
            path = prepare_rclip_model(args.model_dir, seed=args.seed, force=args.force, venv_dir=args.venv)
            result = json.loads((path / "export.json").read_text()) | {"model_dir": str(path)}
        elif args.cmd == "index":
            result = _public(rclip_index_and_query(args.corpus, args.data_dir, args.query, top=args.top,
                                                   batch_size=args.batch_size, venv_dir=args.venv,
                                                   model_dir=args.model_dir), args.top)
        elif args.cmd == "query":
            result = _public(rclip_cold_query(args.corpus, args.data_dir, args.query, top=args.top,
                                              no_indexing=not args.with_indexing, venv_dir=args.venv,
                                              model_dir=args.model_dir), args.top)
        elif args.cmd == "fill":
            result = rclip_fill_synthetic(args.data_dir, args.n, seed=args.seed, venv_dir=args.venv,
                                          model_dir=args.model_dir)
        else:
            result = _trial(args)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
