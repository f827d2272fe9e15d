"""The vector index a store serves, opened from the newest vectors file of its folder, whichever
kind it holds: an in-memory FAISS index (``vectors.VectorIndex``) or an on-disk IVF
(``ondisk.OnDiskVectorIndex``). The one module that knows both kinds (above ``vectors`` and
``ondisk``, which know nothing of each other's readers)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import IndexTypeError
from ..fsutil import digest_mismatch
from .ondisk import OnDiskVectorIndex
from .vectors import DEFAULT_SETTINGS, VectorIndex, VectorSettings, is_ondisk, read_index_file, saved_generations

log = logging.getLogger("mmsearch.storage.vectors")  # (where this warning was always logged)


def load_latest(folder: Path, records: dict[str, dict] | None = None,
                settings: VectorSettings = DEFAULT_SETTINGS) -> VectorIndex | OnDiskVectorIndex | None:
    """The newest readable FAISS file in ``folder``, or None if there is none.

    ``records``: the manifest's checksums of the files this index wrote, by generation
    (None for an index written before they were kept). A file without a record, or whose
    size or checksum differs from it (another index's file, flipped bits), is passed over:
    the vectors are derived data, rebuilt from the database when no file is left.
    """
    for _ in range(3):  # a concurrent save may delete the file between listing and reading
        for gen, path in saved_generations(folder):
            if records is not None:
                record = records.get(str(gen))
                problem = digest_mismatch(path, record) if record else f"{path.name} is not recorded in the manifest"
                if problem:
                    log.warning("vectors file passed over: %s; rebuilding from the database", problem)
                    continue
            try:
                # IVF cells are memory-mapped: a cold reader touches only the cells it probes
                # (1M items: 0.5 ms and a few MB instead of 0.25 s and 500 MB). They are copied
                # into memory before any change or save (``VectorIndex._writable``).
                # An on-disk IVF maps its data file read-only and is served as it is.
                index = read_index_file(path)
                if is_ondisk(index):
                    return OnDiskVectorIndex(index, gen, settings)
                return VectorIndex(index.d, index, gen, settings)
            except RuntimeError:
                if path.exists():
                    continue  # unreadable (damaged) file: fall back to an older one
                break  # replaced by a newer save: list again
            except IndexTypeError:
                continue  # a FAISS file of a kind this version cannot serve: rebuilt from the database
        else:
            return None
    return None
