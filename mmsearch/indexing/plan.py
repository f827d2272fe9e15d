"""Planning a run: what the scan found against what the catalogue holds, as work to do.

Pure functions over data (no file or database access): the runner feeds them the scan, the
catalogue's rows and the records read from changed files, and gets back the plan. Unchanged
files (same size and mtime, vector present) are not read; changed files whose content hash is
unchanged are only touched; new or changed records whose content is already indexed (renames,
duplicates) copy a stored vector; the rest are encoded; items of vanished files are removed,
except under folders or files that could not be read this time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..library import under_any
from ..media import FileEntry, Record, Skip
from ..media.exif import captured_of
from ..media.records import is_placeholder
from ..storage import ExistingItem

UNSEALED = -1  # mtime_ns of rows whose multi-record file is not completely written yet


@dataclass
class Job:
    """A record that needs a vector: encoded, or copied from ``source`` (an item id)."""

    record: Record
    item_id: int | None  # existing row to update, or None for a new row
    source: int | None = None
    reembed: bool = False  # the row's content is unchanged; only its vector is missing
    # A video to sample: its file's existing rows by locator (frames at the same time are
    # updated in place, the others removed once the new frames are written).
    replaces: dict[str, int] | None = None

    @property
    def content(self) -> tuple[str, str]:
        return (self.record.modality, self.record.content_hash)


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    touch: list[tuple[int, Record]] = field(default_factory=list)
    remove: list[int] = field(default_factory=list)
    # Multi-record files (JSONL) being (re)written: (path, size, mtime_ns), sealed at the end.
    seal: list[tuple[str, int, int]] = field(default_factory=list)
    videos: list[Job] = field(default_factory=list)  # videos whose frames must be sampled
    unchanged: int = 0

    @property
    def to_encode(self) -> list[Job]:
        return [job for job in self.jobs if job.source is None]

    @property
    def to_copy(self) -> list[Job]:
        return [job for job in self.jobs if job.source is not None]


def find_changes(files: Sequence[FileEntry], existing: dict[str, list[ExistingItem]],
                 scan_skips: Sequence[Skip]) -> tuple[list[FileEntry], int, list[int]]:
    """(files to read again, items unchanged, items of files that vanished).

    A file is unchanged when every item of it has the same size and mtime and holds a vector.
    Items of files that vanished are removed, except under paths the scan could not read this
    time (``Skip.protects``: unmounted disk, permissions).
    """
    dirty: list[FileEntry] = []
    unchanged = 0
    for entry in files:
        old = existing.get(entry.path)
        if old and all(o.size == entry.size and o.mtime_ns == entry.mtime_ns and o.has_vector for o in old):
            unchanged += len(old)
        else:
            dirty.append(entry)
    present = {entry.path for entry in files}
    protected = tuple(s.path for s in scan_skips if s.protects)
    vanished = [o.id for path, olds in existing.items() if path not in present and not under_any(path, protected)
                for o in olds]
    return dirty, unchanged, vanished


def plan_records(dirty: Sequence[FileEntry], records: dict[str, list[Record]], undecodable: set[str],
                 existing: dict[str, list[ExistingItem]], multi_record: Iterable[str]) -> Plan:
    """The plan for the changed files, from the records read from them.

    ``records``: path -> records of each file that could be read; ``undecodable``: paths whose
    content can no longer be decoded (their old items are removed; files that could not be read
    now keep theirs); ``multi_record``: kinds of file holding several records (sealed when done).
    """
    plan = Plan()
    multi = set(multi_record)
    for entry in dirty:
        found = records.get(entry.path)
        if found is None:
            if entry.path in undecodable:
                plan.remove.extend(o.id for o in existing.get(entry.path, []))
            continue
        olds = {o.locator: o for o in existing.get(entry.path, [])}
        if len(found) == 1 and is_placeholder(found[0]):
            # A video whose content is not indexed anywhere: sampled, written and sealed by
            # the runner, frame by frame over its old rows.
            plan.videos.append(Job(found[0], None, replaces={loc: o.id for loc, o in olds.items()}))
            continue
        if entry.kind in multi or len(found) > 1:
            # A file's lines (or an image and its embedded caption) are written over several transactions. Until the last one is in,
            # its rows carry an mtime no file has, so a run killed half-way leaves the file
            # "changed" and the next run finishes it.
            plan.seal.append((entry.path, entry.size, entry.mtime_ns))
            for record in found:
                record.mtime_ns = UNSEALED
        for record in found:
            old = olds.pop(record.locator, None)
            same = old is not None and old.content_hash == record.content_hash and old.modality == record.modality
            if same and old.has_vector:
                plan.touch.append((old.id, record))
                plan.unchanged += 1
                continue
            plan.jobs.append(Job(record, old.id if old else None, reembed=same))
        plan.remove.extend(o.id for o in olds.values())
    return plan


def known_video_frames(records: dict[str, list[Record]], known: dict[str, list[Record]]) -> None:
    """Replace each video read but not sampled by the frames its content already has in the
    index (``known``: video content hash -> frame records at any path), so that an unchanged,
    touched, renamed or copied video is planned frame by frame (touch or copy, no decoding)."""
    for path, found in records.items():
        if len(found) == 1 and is_placeholder(found[0]):
            video = found[0]
            frames = known.get(video.content_hash)
            if frames:
                records[path] = [Record(path, f.locator, f.modality, video.size, video.mtime_ns, f.content_hash,
                                        width=f.width, height=f.height, meta=f.meta, captured=captured_of(f))
                                 for f in frames]


def assign_sources(jobs: Iterable[Job], sources: dict[tuple[str, str], int]) -> None:
    """Point each job whose content is already indexed at an item holding that vector."""
    for job in jobs:
        job.source = sources.get(job.content)


def group_by_content(jobs: Iterable[Job]) -> dict[tuple[str, str], list[Job]]:
    """Jobs of identical content, to encode once and write to every copy."""
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.content, []).append(job)
    return groups
