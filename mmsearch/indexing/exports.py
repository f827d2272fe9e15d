"""The ONNX export phase of an indexing run (and of ``check --repair``): each tower
(``onnx_text.TOWER``, ``onnx_image.TOWER``) exports the index's model into the index folder, or
takes the export from the cache, and the outcome is kept in the index's manifest under the
tower's key. The encoders make and read the files; only this module writes the manifest's
record of them and removes the exports the record no longer names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..encoders import onnx_image, onnx_text
from ..encoders.onnx_export import Tower, export_needed, first_line, now

if TYPE_CHECKING:  # pragma: no cover
    from ..encoders import ModelSpec, TorchEncoder
    from ..storage.store import IndexStore

TOWERS: tuple[Tower, ...] = (onnx_text.TOWER, onnx_image.TOWER)


def needed(store: IndexStore, enabled: bool = True) -> list[Tower]:
    """The towers whose export ``store`` lacks for its model (or must make again)."""
    return [tower for tower in TOWERS if export_needed(store.manifest, tower, enabled)]


def ensure_exported(store: IndexStore, tower: Tower, spec: ModelSpec, load: Callable[[], TorchEncoder],
                    cache: Path | None = None, enabled: bool = True) -> dict[str, Any] | None:
    """Export ``tower`` of the model ``spec`` names into ``store`` if needed (writer, under the
    lock); ``load()`` gives its torch encoder, called only when the cache cannot stand in for it.

    Returns the manifest record written, or None when nothing was needed (or a disk error is to
    be tried again). Never raises for a model that cannot be exported: the reason is logged and
    kept. ``cache``: the folder of shared exports (default: the user cache folder)."""
    if not export_needed(store.manifest, tower, enabled):
        return None
    fingerprint = store.manifest["model"]["fingerprint"]
    if spec.identity(known=store.manifest["model"])["fingerprint"] != fingerprint:
        return None  # not the index's model (the caller switches models first)
    tower.remove_stray_temps(store.folder)
    entry = tower.cache_entry(cache, fingerprint)
    old = store.manifest.get(tower.key)
    return record_export(store, tower, lambda: tower.produce(store.folder, fingerprint, old, load, entry))


def record_export(store: IndexStore, tower: Tower, produce: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run ``produce`` (export, or take from the cache) for ``tower`` of ``store``'s model and
    record the outcome in the manifest under the tower's key; files of the tower's prefix that
    the record does not name (earlier models' exports) go.

    One policy for both towers: a disk error is logged and tried again on the next run (None,
    nothing recorded); ``tower.unavailable`` (this model or installation cannot be exported) is
    recorded as skipped with its reason; anything else is a bug: logged as an error, recorded as
    failed and tried again, never allowed to fail indexing."""
    name, log = tower.name, tower.log
    fingerprint = store.manifest["model"]["fingerprint"]
    try:
        record = produce()
    except OSError as exc:  # disk full, read-only folder: try again on the next run
        log.warning("%s queries on %s will load torch: cannot write the ONNX %s encoder (%s)",
                    name, store.folder, name, exc)
        return None
    except tower.unavailable as exc:  # this model (or this installation) cannot be exported
        retry = isinstance(exc.__cause__, ImportError)
        log.warning("%s queries on %s will load torch: no ONNX %s encoder (%s)", name, store.folder, name, exc)
        record = {"status": "skipped", "fingerprint": fingerprint, "reason": str(exc), "retry": retry, "at": now()}
    except Exception as exc:  # noqa: BLE001 - a bug: never fail indexing for it, never hide it either
        log.error("exporting the ONNX %s encoder of %s failed unexpectedly (%s: %s); %s queries load torch "
                  "until the next indexing run tries again", name, store.folder, type(exc).__name__,
                  first_line(exc), name, exc_info=log.isEnabledFor(logging.DEBUG))
        record = {"status": "failed", "fingerprint": fingerprint, "reason": f"{type(exc).__name__}: {first_line(exc)}",
                  "retry": True, "at": now()}
    store.update_manifest(**{tower.key: record})
    keep = set(tower.parts(record).values()) if record["status"] == "ok" else set()
    for path in store.folder.glob(f"{tower.file_prefix}*"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    return record
