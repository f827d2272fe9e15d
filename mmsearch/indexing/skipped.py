"""Skipped files said once: which files a run skipped, and why, kept beside the index
(``skipped.json``, this machine's record), so the next run names only what is new or changed and
counts the rest (a cron ``mmsearch index`` would otherwise print the same bad files every time)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..fsutil import atomic_write_json
from ..media import Skip

FILE = "skipped.json"


class SeenSkips:
    """The skips of the last completed run in ``folder``, and this run's."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / FILE
        try:
            files = json.loads(self.path.read_text(encoding="utf-8"))["files"]
            self.before = {path: list(entry) for path, entry in files.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.before = {}
        self.now: dict[str, list] = {}

    def first_seen(self, skip: Skip) -> bool:
        """Record ``skip``; True unless the last run skipped the same file, unchanged (size and
        modification time), for the same reason."""
        try:
            st = os.lstat(skip.path)
            state = [st.st_size, st.st_mtime_ns]
        except OSError:
            state = None
        entry = [skip.reason, state]
        self.now[skip.path] = entry
        return self.before.get(skip.path) != entry

    def save(self) -> None:
        """Keep this run's skips for the next run (a failure to write costs only repeated lines).
        Unchanged skips are not written again: a run that finds nothing new writes nothing."""
        if self.now == self.before:
            return
        try:
            atomic_write_json(self.path, {"files": self.now})
        except OSError:
            pass
