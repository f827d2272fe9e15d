"""The ONNX exporter both towers share: exporting a torch module, saving its weights beside
the graph, publishing files into a folder crash-safely, the per-model cache of exports,
onnxruntime sessions, digest checks, and the judgement of an export record (usable, to be made
again), parameterised by the tower (``Tower``: ``onnx_text.TOWER``, ``onnx_image.TOWER``).

Each tower describes its files as ``{digest key: file name}``, graph last (the graph names its
weights file, so it becomes visible after them), and how it makes an export into a folder
(``Tower.produce``); what keeps the index's record of an export (its manifest) is the indexing
run's (``indexing.exports``), not the encoders'.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import digest_mismatch, file_digest, fsync_dir

CACHE_RECORD = "record.json"
# Opset 17 has LayerNormalization as one operator, which onnxruntime runs fused.
OPSET = 17


_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tower:
    """What differs between the text and the image tower's exports.

    ``key``: the name its record goes by (in an index's manifest); ``file_prefix``: its files in
    an index folder; ``temp``: (prefix, suffix) of its temporary folders; ``cache_suffix``: its
    cache entry is ``<fingerprint><cache_suffix>``; ``unavailable``: the error saying a model or
    installation cannot be exported; ``parts(record)``: its files by digest key, graph last;
    ``produce(folder, fingerprint, old, load, entry)``: the export of the model ``fingerprint``
    written into ``folder`` (taken from the cache ``entry`` when there, else made from
    ``load()``'s torch encoder; ``old``: the folder's previous record or None), its record
    returned; ``outdated(record)``: a usable record still to be made again (by a newer method,
    on another machine); ``usable(record)``: tower-specific checks of a record; ``log``: where
    its outcome is told."""

    name: str
    key: str
    file_prefix: str
    temp: tuple[str, str]
    cache_suffix: str
    unavailable: type[Exception]
    parts: Callable[[dict[str, Any]], dict[str, str]]
    produce: Callable[..., dict[str, Any]]
    outdated: Callable[[dict[str, Any]], bool]
    usable: Callable[[dict[str, Any]], bool]
    log: logging.Logger

    def cache_entry(self, cache: Path | None, fingerprint: str) -> Path:
        """This tower's entry for the model ``fingerprint`` in the cache of exports."""
        return cache_dir(cache) / f"{fingerprint}{self.cache_suffix}"

    def remove_stray_temps(self, folder: Path) -> None:
        """Temporary export folders a killed writer left in ``folder``."""
        remove_stray_temps(folder, *self.temp)


def usable_record(manifest: dict[str, Any], tower: Tower, enabled: bool = True) -> dict[str, Any] | None:
    """``tower``'s export record in ``manifest`` when it is complete and belongs to the model
    the manifest names (fingerprint and dimension), else None."""
    record = manifest.get(tower.key)
    if not enabled or not isinstance(record, dict) or record.get("status") != "ok":
        return None
    if record.get("fingerprint") != manifest.get("model", {}).get("fingerprint") or record.get("dim") != manifest.get("dim"):
        return None
    return record if tower.usable(record) else None


def export_needed(manifest: dict[str, Any], tower: Tower, enabled: bool = True) -> bool:
    """True when ``manifest`` has no export record of ``tower`` for its model, one to try again
    (a failure not final), or an outdated one."""
    if not enabled:
        return False
    record = manifest.get(tower.key)
    if not isinstance(record, dict) or record.get("fingerprint") != manifest.get("model", {}).get("fingerprint"):
        return True
    if record.get("status") != "ok":
        return bool(record.get("retry"))
    return tower.outdated(record)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The index manifest in ``folder`` as a dict, read directly (a preload starts before the
    store layers are imported); None when there is none or it is not readable."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def l2(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, np.float32)
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session of ``path`` with every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    # Idle threads sleep instead of spinning: spinning steals the cores the decode workers (and,
    # while the encoders are measured, the torch encoder) need, for a few percent of ONNX's speed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# -- exporting -------------------------------------------------------------------------------------
def export_module(wrapper: Any, example: Any, path: Path, input_name: str, torch: Any,
                  unavailable: type[Exception], grad: bool = False) -> str:
    """Export ``wrapper`` (one input, one output ``embeddings``, dynamic batch) to ``path`` with
    the TorchScript-based exporter (no onnxscript needed), else torch.export's. Raises
    ``unavailable`` naming both failures. ``grad``: trace with gradients on, which keeps torch's
    attention off its inference fast path (``_native_multi_head_attention`` has no ONNX form)."""
    names = {"input_names": [input_name], "output_names": ["embeddings"]}
    errors: list[str] = []
    with torch.inference_mode(False), torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer notices are not the user's business
        try:
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
                dynamic_axes={input_name: {0: "batch"}, "embeddings": {0: "batch"}}, **names,
            )
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 - any exporter failure means "not exportable"
            errors.append(f"{type(exc).__name__}: {first_line(exc)}")
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                wrapper, (example,), dynamo=True, opset_version=OPSET, dynamic_shapes=({0: batch},), **names,
            )
            program.save(str(path), external_data=False)
            return "dynamo"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {first_line(exc)}")
    raise unavailable("the ONNX exporter failed: " + "; ".join(errors))


def save_external(raw: Path, target: Path) -> None:
    """``raw`` saved as ``target`` with its weights in ``target.data``: onnxruntime maps that
    file instead of parsing a protobuf."""
    import onnx

    graph = onnx.load(str(raw))
    onnx.save_model(graph, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{target.name}.data", size_threshold=1024)


def publish(tmp: Path, folder: Path, names: list[str]) -> None:
    """Move finished files from ``tmp`` into ``folder``, each durable before it is visible, in
    order (the graph last)."""
    for name in names:
        (tmp / name).chmod(0o644 & ~umask())
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp / name, folder / name)
    fsync_dir(folder)


def remove_stray_temps(folder: Path, prefix: str, suffix: str) -> None:
    """Temporary export folders a killed writer left behind."""
    for path in folder.glob(f"{prefix}*{suffix}"):
        shutil.rmtree(path, ignore_errors=True)


def mismatch(files: dict[str, Path], digests: Any, full: bool = False) -> str | None:
    """Why the files are not the ones ``digests`` (by key) describe; None: they are, or no digests."""
    if not isinstance(digests, dict):
        return None
    for key, path in files.items():
        problem = digest_mismatch(path, digests.get(key) or {}, full=full)
        if problem:
            return problem
    return None


# -- the cache of exports, shared by every index of a model ----------------------------------------
def cache_dir(base: Path | None = None) -> Path:
    """Where exports are kept for reuse by every index of the same model: ``base/onnx``
    (``MMSEARCH_CACHE``), else the user cache folder (``~/.cache/mmsearch/onnx`` on Linux)."""
    if base is None:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("mmsearch"))
    return Path(base) / "onnx"


def cached_record(entry: Path, fingerprint: str) -> dict[str, Any] | None:
    """The record of a complete, successful cached export of ``fingerprint`` in ``entry`` (its
    files present at their recorded sizes; digests are checked when the files are linked), or
    None. Reading it costs a stat per file: no torch, no ONNX Runtime."""
    try:
        record = json.loads((entry / CACHE_RECORD).read_text(encoding="utf-8"))
        if record.get("status") != "ok" or record.get("fingerprint") != fingerprint:
            return None
        sizes = record.get("sizes") or {}
        if not sizes or any(not (entry / name).is_file() or (entry / name).stat().st_size != size
                            for name, size in sizes.items()):
            return None
        return record
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def from_cache(folder: Path, entry: Path, fingerprint: str, parts_of: Callable[[dict], dict[str, str]],
               temp: tuple[str, str]) -> dict[str, Any] | None:
    """The cached export in ``entry`` linked (or copied) into ``folder``: its record, or None
    when the entry is absent, of another model, incomplete or damaged.

    Exporting takes seconds and a torch model in memory; a model exported once on this machine
    is reused by every new index of it, as peers reuse their downloaded ONNX files.
    """
    try:
        record = json.loads((entry / CACHE_RECORD).read_text(encoding="utf-8"))
        names = parts_of(record)
        parts = {key: entry / name for key, name in names.items()}
        if record.get("fingerprint") != fingerprint or not all(p.is_file() for p in parts.values()):
            return None
        sizes = record.get("sizes") or {record["data"]: record.get("data_bytes"), record["file"]: record.get("graph_bytes")}
        if any(p.stat().st_size != sizes.get(p.name) for p in parts.values()):
            return None
        digests = record.get("digests") or {}
        verified = record.get("verified") or {}
        # A part is hashed whole once per file version (hundreds of MB: 1.5 s of a new index's
        # 10 s here); while its size, mtime and inode stay those of that check, its size and
        # head/tail digests stand for it (`mmsearch check` still hashes the linked copy whole).
        if not digests or any(digest_mismatch(p, digests.get(k) or {}, full=verified.get(k) != _version(p))
                              for k, p in parts.items()):
            return None  # an entry from before digests were kept, or a damaged one: export again
        if any(verified.get(k) != _version(p) for k, p in parts.items()):
            update_cached_record(entry, {"verified": {k: _version(p) for k, p in parts.items()}}, _log)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    tmp = Path(tempfile.mkdtemp(prefix=temp[0], suffix=temp[1], dir=folder))
    try:
        for part in parts.values():
            try:
                os.link(part, tmp / part.name)  # same file system: no copy, no extra disk
            except OSError:
                shutil.copyfile(part, tmp / part.name)
                with open(tmp / part.name, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp / part.name, folder / part.name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(record, exported_at=now(), from_cache=str(entry))


def _version(path: Path) -> list[int]:
    """What says a file is unchanged since it was last hashed: size, mtime (ns), inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def to_cache(folder: Path, record: dict[str, Any], entry: Path, names: list[str], temp: tuple[str, str],
             log: Any) -> None:
    """Keep a fresh export for later indexes of the same model (best effort: never fails indexing)."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=temp[0], suffix=temp[1], dir=entry.parent))
        try:
            for name in names:
                try:
                    os.link(folder / name, tmp / name)
                except OSError:
                    shutil.copyfile(folder / name, tmp / name)
            sizes = {name: (folder / name).stat().st_size for name in names}
            saved = dict(record, sizes=sizes)
            if "data" in record and "file" in record:  # read by mmsearch versions before `sizes`
                saved.update(data_bytes=sizes.get(record["data"]), graph_bytes=sizes.get(record["file"]))
            (tmp / CACHE_RECORD).write_text(json.dumps(saved, indent=1), encoding="utf-8")
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        log.info("could not keep the ONNX export in the cache %s: %s", entry, exc)


def update_cached_record(entry: Path, changes: dict[str, Any], log: Any) -> None:
    """Add ``changes`` to the record of the cache entry ``entry`` (best effort, atomic), e.g. the
    encoder measurement made for this machine, so the next new index of the model reuses it."""
    path = entry / CACHE_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dict(record, **changes), indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        log.info("could not update the ONNX export record in the cache %s: %s", entry, exc)


def digests_of(folder: Path, names: dict[str, str]) -> dict[str, Any]:
    return {key: file_digest(folder / name) for key, name in names.items()}
