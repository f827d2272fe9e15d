"""What an indexing run reports: counts, skipped files, seconds per stage, and progress events."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..fsutil import path_fields
from ..media import Skip
from ..progress import NullProgress, Progress  # noqa: F401 - named here for indexing's users

log = logging.getLogger(__name__)

# The stages of a run, in order, as the report names them.
STAGES = ("export", "scan", "read", "plan", "decode", "encode", "write", "save")


@dataclass
class IndexReport:
    """What an indexing run did."""

    added: int = 0  # new items, encoded
    updated: int = 0  # changed items, re-encoded
    reembedded: int = 0  # unchanged items encoded again (their vector was missing: a model switch)
    reused: int = 0  # new or changed items whose vector was copied (renamed or duplicate content)
    removed: int = 0  # items whose files are gone
    unchanged: int = 0
    videos: int = 0  # videos sampled and written (their frames are not counted as added)
    frames: int = 0  # frames of those videos written, one vector each
    sampled: int = 0  # frames sampled and encoded (before repeats were dropped by cosine)
    metadata: int = 0  # items whose capture metadata was read again (``--refresh-metadata``)
    skipped: list[Skip] = field(default_factory=list)
    skipped_before: int = 0  # of those, files the last run skipped too, unchanged, for the same reason
    seconds: float = 0.0
    interrupted: bool = False
    # Seconds spent in each stage (``STAGES``): decode is the time spent waiting for decoded
    # images (decoding runs ahead in worker processes, overlapping the encoder).
    stages: dict[str, float] = field(default_factory=dict)
    # Where the work ran, when not here (``RayExecutor.summary``: nodes, actors, GPUs, restarts).
    runner: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        """True when the run changed what the index holds."""
        return bool(self.added or self.updated or self.reembedded or self.reused or self.removed or self.videos)

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - started

    def summary(self) -> str:
        text = (
            (f"{self.reembedded} re-embedded, " if self.reembedded else "")
            + (f"{self.videos} video(s) sampled ({self.frames} frames), " if self.videos else "")
            + (f"metadata of {self.metadata} item(s) read again, " if self.metadata else "")
            + f"{self.added} added, {self.updated} updated, {self.reused} reused, "
            f"{self.removed} removed, {len(self.skipped)} skipped, {self.unchanged} unchanged "
            f"in {self.seconds:.1f}s"
            + (f" (ONNX export of the model {self.stages['export']:.1f}s)" if self.stages.get("export") else "")
        )
        return text + (" (interrupted: work so far saved)" if self.interrupted else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added, "updated": self.updated, "reembedded": self.reembedded, "reused": self.reused,
            "removed": self.removed, "unchanged": self.unchanged, "videos": self.videos, "frames": self.frames,
            "frames_sampled": self.sampled, "metadata_refreshed": self.metadata,
            "skipped": len(self.skipped), "skipped_before": self.skipped_before,
            "skipped_files": [{**path_fields(s.path), "reason": s.reason} for s in self.skipped],
            "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
            "stages": {stage: round(self.stages[stage], 3) for stage in STAGES if stage in self.stages},
            **({"runner": self.runner} if self.runner else {}),
        }
