"""The library commands: index, query, info, check."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..errors import QueryError
from ..fsutil import display_path, printable_path, terminal_safe
from ..media.capabilities import modalities
from .base import DbOpt, DeviceOpt, IndexOpt, JsonOpt, ModelOpt, PretrainedOpt, open_engine, read_settings, command, err, out, write_json
from .progress import RichProgress, QuietProgress

# -- commands ------------------------------------------------------------------------------------
@command("index")
def index_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(metavar="PATHS", help="Folders or files to index \\[default: every folder indexed before, with the options it was indexed with].", show_default=False)] = None,
    index: IndexOpt = None,
    db: DbOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", "-x", metavar="GLOB", help="Files or folders to leave out (repeatable), e.g. '*.gif' or 'raw/*'; remembered for PATHS.")] = None,
    hidden: Annotated[bool, typer.Option("--hidden", metavar="", help="Also index hidden files and folders (names starting with '.'); remembered for PATHS.")] = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", metavar="", help="Follow symlinks that lead outside PATHS (loops are detected); remembered for PATHS. Without it such links are skipped with a message.")] = False,
    reembed: Annotated[bool, typer.Option("--reembed", metavar="", help="Allow a different model than the index's: embed everything again.")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, metavar="N", help="Items per encoder batch \\[default: 32 on CPU, 256 on GPU].")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, metavar="N", help="Worker processes decoding images and videos \\[default: CPU count, at most 8].")] = None,
    wait: Annotated[float, typer.Option("--wait", metavar="SECONDS", help="Seconds to wait for another indexing run on the same index (-1: forever).")] = 0.0,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar="", help="Also name the files skipped as before (unchanged since the last run skipped them, for the same reason); otherwise one line counts them.")] = False,
    refresh_metadata: Annotated[bool, typer.Option("--refresh-metadata", metavar="", help="Also read the capture date, camera and GPS position (EXIF, video tags) of images and videos already indexed, from their headers, without re-encoding: for items indexed before mmsearch read them.")] = False,
    index_type: Annotated[Optional[str], typer.Option("--index-type", metavar="TYPE", help="Expert: vector index auto, flat (exact), ivf-sq8, ivf-pq or ivf-ondisk (approximate, re-ranked exactly; ivf-ondisk: memory-mapped lists on disk, for indexes larger than memory); remembered, and the vectors are rebuilt from stored embeddings when it changes \\[default: the index's choice, auto].", show_default=False)] = None,
    runner: Annotated[str, typer.Option("--runner", metavar="RUNNER", help="Where images are decoded and encoded: local (worker processes here) or ray (Ray Data tasks and encode actors; needs pip install \"mmsearch[ray]\").")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", metavar="ADDRESS", help="With --runner ray: auto (the cluster started by `ray start`), HOST:PORT or ray://HOST:10001 \\[default: start a local Ray on this machine].", show_default=False)] = None,
    vectors: Annotated[Optional[str], typer.Option("--vectors", metavar="LAYOUT", help="Where a new index keeps its vectors: faiss (a vector index file in the index folder, synced from the catalogue) or pgvector (in the PostgreSQL catalogue given with --db, with an HNSW index: each query is one SQL statement with its filters, no local file) \\[default: the index's, faiss].", show_default=False)] = None,
) -> None:
    """Embed new and changed images, texts and videos under PATHS; remove what was deleted."""
    from .. import procs

    try:
        if runner == "local" and not (Path(index or read_settings(db).default_index()) / "manifest.json").is_file():
            # A first run always decodes: the decode workers' server imports Pillow and PyAV while
            # we import the rest. Into an existing index it starts only once a file needs decoding.
            procs.start_forkserver()
        with open_engine(index, model, pretrained, device, db, batch_size=batch_size, workers=workers) as engine:
            progress = QuietProgress(err, verbose) if quiet or as_json else RichProgress(err, verbose)
            with progress:
                report = engine.add(
                    [str(p) for p in paths] if paths else None,
                    exclude=exclude or (), include_hidden=hidden, follow_links=follow_links, reembed=reembed,
                    wait=wait, progress=progress, index_type=index_type, refresh_metadata=refresh_metadata,
                    runner=runner, ray_address=ray_address, vectors=vectors,
                )
    finally:
        procs.stop_forkserver()  # also after Ctrl-C and errors: nothing left running once we exit
    if report.skipped_before and not verbose and not as_json:
        err.print(Text(f"{report.skipped_before} file(s) skipped as before (unchanged); --verbose lists them"))
    if as_json:
        write_json(report.as_dict())
    else:
        out.print(report.summary())



TYPE_CHOICES = ("all", *modalities())  # what --type takes: every modality indexed, or all


@command("query")
def query_cmd(
    terms: Annotated[list[str], typer.Argument(metavar="TERMS", help="Texts and image paths, e.g. \"2:beach\" + ./dog.jpg - people", show_default=False)],
    index: IndexOpt = None,
    db: DbOpt = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, metavar="N", help="Number of results.")] = 10,
    type: Annotated[str, typer.Option("--type", "-t", metavar="TYPE", help="Result type: image, text, video or all.")] = "all",
    min_score: Annotated[Optional[float], typer.Option("--min-score", metavar="SCORE", help="Leave out results scoring below this cosine similarity.")] = None,
    under: Annotated[Optional[Path], typer.Option("--under", metavar="DIR", help="Only results inside this folder.")] = None,
    image: Annotated[bool, typer.Option("--image", metavar="", help="Treat every term as an image path.")] = False,
    text: Annotated[bool, typer.Option("--text", metavar="", help="Treat every term as text, even if it names a file.")] = False,
    include_self: Annotated[bool, typer.Option("--include-self", metavar="", help="Let a query image appear in its own results.")] = False,
    dedup: Annotated[bool, typer.Option("--dedup", metavar="", help="Collapse near-duplicate results (see `mmsearch dupes`): the best-ranked of each group stays; at most max(100, 4 x top) hits are compared, so fewer groups may come back.")] = False,
    after: Annotated[Optional[str], typer.Option("--after", metavar="DATE", help="Only items taken on or after DATE (YYYY-MM-DD, YYYY-MM, YYYY or an ISO date-time): the EXIF or video date, else the file's time.", show_default=False)] = None,
    before: Annotated[Optional[str], typer.Option("--before", metavar="DATE", help="Only items taken before DATE (exclusive).", show_default=False)] = None,
    camera: Annotated[Optional[str], typer.Option("--camera", metavar="NAME", help="Only items taken with this camera: model, make or both, e.g. 'Pixel 7', 'Canon' (any ASCII case).", show_default=False)] = None,
    near: Annotated[Optional[str], typer.Option("--near", metavar="LAT,LON,KM", help="Only items with a GPS position within KM kilometres of LAT,LON (decimal degrees), e.g. 48.8584,2.2945,5.", show_default=False)] = None,
    sort: Annotated[str, typer.Option("--sort", metavar="ORDER", help="relevance, date (newest first) or date-asc: the order of the results that pass the relevance cut (--top, --min-score).")] = "relevance",
    fusion: Annotated[str, typer.Option("--fusion", metavar="HOW", help="Rank documents (an image with its caption, sidecar or JSONL text) by both vectors: late, early, rrf; none ranks items alone.")] = "none",
    mode: Annotated[str, typer.Option("--mode", metavar="MODE", help="vector, lexical (BM25 over words and file names) or hybrid (both, by reciprocal rank).")] = "vector",
    image_weight: Annotated[Optional[float], typer.Option("--image-weight", metavar="W", help="Weight of a document's image in late and early fusion.")] = None,
    text_weight: Annotated[Optional[float], typer.Option("--text-weight", metavar="W", help="Weight of a document's text in late and early fusion.")] = None,
    calibrated: Annotated[bool, typer.Option("--calibrated", metavar="", help="Score and rank by calibrated score (images and texts on one scale, against the index's background); --json keeps the raw cosine.")] = False,
    cutoff: Annotated[Optional[str], typer.Option("--cutoff", metavar="CUT", help="Drop hits indistinguishable from the index's background: auto, or a calibrated score.")] = None,
    as_json: JsonOpt = False,
    paths: Annotated[bool, typer.Option("--paths", metavar="", help="Print the file of each result, one line per result (a record's image: the picture file; control characters and undecodable bytes escaped; use -0 for exact names).")] = False,
    print0: Annotated[bool, typer.Option("--print0", "-0", metavar="", help="Print matching paths exactly as they are on disk, each followed by a NUL byte (for xargs -0).")] = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Search the index with texts, images, or a weighted combination of both."""
    from ..search.query import IMAGE, TEXT
    from ..search.request import SearchRequest

    # Checked and parsed once, before anything starts (the encoders' preload below), each in one line.
    if image and text:
        raise QueryError("--image and --text exclude each other")
    request = SearchRequest.build(
        terms, k=top, type=type, min_score=min_score, under=under, include_query=include_self,
        force="image" if image else "text" if text else None, dedup=dedup, after=after, before=before,
        camera=camera, near=near, sort=sort, fusion=fusion, mode=mode, image_weight=image_weight,
        text_weight=text_weight, calibrated=calibrated, cutoff=cutoff, option_prefix="--")
    preloaded = preloaded_images = None
    if model is None and pretrained is None:
        from ..encoders import onnx_text

        settings = read_settings(db)
        folder = index if index is not None else settings.default_index()
        texts = [t.value for t in request.terms if t.kind == TEXT]
        images = [t.value for t in request.terms if t.kind == IMAGE and isinstance(t.value, str)]
        # Load the text encoder and encode the texts while the engine's libraries import.
        preloaded = onnx_text.preload(folder, texts, settings.onnx)
        if images:
            from ..encoders import onnx_image

            # Likewise the image encoder, decoding and encoding the query images.
            preloaded_images = onnx_image.preload(folder, images, settings)
    with open_engine(index, model, pretrained, device, db, text_encoder=preloaded, image_encoder=preloaded_images) as engine:
        hits = engine.search(request)
    if as_json:
        doc = {"query": [printable_path(t) for t in terms], "hits": [h.as_dict() for h in hits]}
        if not hits:
            doc["why_empty"] = hits.why_empty
        write_json(doc)
    elif paths or print0:
        for path in (hit.file for hit in hits):  # one line per hit; a record's image: the picture file
            if print0:
                sys.stdout.buffer.write(os.fsencode(path) + b"\0")
            else:
                sys.stdout.write(display_path(path) + "\n")
        sys.stdout.flush()
    else:
        _print_hits(hits, [name for name, used in (("date", sort != "relevance" or after or before),
                                                    ("camera", camera), ("place", near)) if used])


def _snippet(text: str | None, width: int = 80) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


MIN_TEXT_WIDTH = 12  # a text column narrower than this says nothing: left out


def _print_hits(hits, shown: Sequence[str] = ()) -> None:
    """The hits as a table. A path is never broken (copy it from the terminal): its column is as
    wide as the longest, and the text column gives way first (then the table is as wide as it
    must be). ``shown``: the extra columns a sort or filter uses ('date', 'camera', 'place')."""
    if not hits:
        why = getattr(hits, "why_empty", None)
        err.print(Text("no results" + (f": {why}" if why else "")))
        return
    rows = []
    for hit in hits:
        if hit.t is not None:  # a video: the moment, and the segment that matches
            where = f"{display_path(hit.path)} @ {clock(hit.t)}"
            if hit.start is not None and hit.end is not None:
                where += f" ({clock(hit.start)}-{clock(hit.end)})"
        else:
            where = display_path(hit.file) if hit.record is not None else (
                display_path(hit.path) + (f":{hit.locator}" if hit.locator else ""))
        notes = []  # on a line of their own below the path, cut first when space is short
        if hit.record is not None:  # a picture a JSONL record names: the record it belongs to
            notes.append(f"(record {display_path(os.path.basename(hit.record['path']))}:{hit.record['line']})")
        if hit.duplicates:
            notes.append(f"(+{len(hit.duplicates)} near-duplicate{'s' if len(hit.duplicates) > 1 else ''})")
        extra = [_extra_cell(hit, name) for name in shown]
        rows.append((str(hit.rank), f"{hit.score:.4f}", hit.modality, *extra, where, notes,
                     terminal_safe(_hit_text(hit))))
    narrow = ("#", "score", "type", *shown)
    widths = [max(len(name), *(len(r[n]) for r in rows)) for n, name in enumerate(narrow)]
    path_width = max(len("path"), *(len(r[len(narrow)]) for r in rows))
    # Every column gets an exact width: with a flexible (ratio) text column, rich shrank the
    # narrow columns to nothing when a text was long (the rank, score and type vanished).
    table = Table(show_edge=False, header_style="bold")
    for name, width in zip(narrow, widths):
        table.add_column(name, justify="right" if name in ("#", "score") else "left", no_wrap=True, width=width)
    table.add_column("path", no_wrap=True, overflow="ellipsis", width=path_width)
    # Each column but the text needs its width and a separator: a narrow terminal gets a wider
    # table (lines the terminal wraps, whole paths) rather than broken paths, and no text column
    # where it would hold less than a word or two.
    needed = sum(widths) + path_width + 3 * len(widths) + 2  # separators, and the outer padding
    text_width = out.width - needed - 3
    with_text = text_width >= MIN_TEXT_WIDTH
    if with_text:
        table.add_column("text", no_wrap=True, overflow="ellipsis", width=text_width)
    for *cells, where, notes, text in rows:
        table.add_row(*cells, Text("\n".join([where, *notes])), *([Text(text)] if with_text else []))
    if needed > out.width:
        table.width = needed
    out.print(table, crop=False)


def _extra_cell(hit, name: str) -> str:
    if name == "date":
        return (hit.taken_at or "").replace("T", " ")[:16]
    if name == "camera":
        return terminal_safe(hit.camera or "")
    if hit.lat is None or hit.lon is None:
        return ""
    return f"{hit.lat:.4f},{hit.lon:.4f}"


def _hit_text(hit) -> str:
    """The text column: the hit's own text, else (a document shown by its image) the caption
    that matched; then the query words the full-text index matched, in brackets."""
    matched = hit.matched or {}
    text = hit.text
    if not text and isinstance(matched.get("text"), dict):
        text = matched["text"].get("text")
    shown = _snippet(text)
    words = f"[{' '.join(matched['words'])}]" if matched.get("words") else ""
    return "  ".join(part for part in (shown, words) if part)


def clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour), seconds rounded down."""
    whole = int(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


@command("dupes")
def dupes_cmd(
    index: IndexOpt = None,
    db: DbOpt = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", metavar="SIMILARITY", show_default=False, help="Cosine similarity at or above which two items are near-duplicates, from 0.5 to 1 \\[default: 0.97].")] = None,
    type: Annotated[str, typer.Option("--type", "-t", metavar="TYPE", help="Items compared: image, text or all (never across types).")] = "all",
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
) -> None:
    """List groups of near-duplicate items (re-encoded, resized, slightly cropped copies), each with the one to keep."""
    from ..search.dupes import check_threshold

    if threshold is not None:
        check_threshold(threshold, "--threshold")
    if type not in TYPE_CHOICES:
        raise QueryError(f"unknown type {type!r}: choose one of {', '.join(TYPE_CHOICES)}")
    with open_engine(index, db=db) as engine:
        progress = QuietProgress(err) if quiet or as_json else RichProgress(err)
        with progress:
            groups = engine.duplicates(threshold=threshold, type=type, progress=progress)
    if as_json:
        from ..search.dupes import DEFAULT_THRESHOLD

        write_json({"threshold": threshold if threshold is not None else DEFAULT_THRESHOLD,
                    "groups": [g.as_dict() for g in groups],
                    "duplicates": sum(len(g.others) for g in groups)})
        return
    if not groups:
        err.print(Text("no near-duplicates found"))
        return
    table = Table(show_edge=False, header_style="bold")
    for name, justify in (("group", "right"), ("", "left"), ("similarity", "right"), ("size", "right"), ("path", "left")):
        table.add_column(name, justify=justify, overflow="fold" if name == "path" else None)
    for number, group in enumerate(groups, 1):
        for n, (item, sim) in enumerate(zip(group.items, [None, *group.similarity])):
            where = (f"{display_path(item.path)} @ {clock(item.t)}" if item.t is not None
                     else display_path(item.path) + (f":{item.locator}" if item.locator else ""))
            size = f"{item.width}x{item.height}" if item.width and item.height else ""
            table.add_row(str(number) if n == 0 else "", "keep" if n == 0 else "dupe",
                          "" if sim is None else f"{sim:.4f}", size, Text(where))
    out.print(table)
    out.print(Text(f"{len(groups)} group(s), {sum(len(g.others) for g in groups)} near-duplicate(s) besides the keepers"))


@command("info")
def info_cmd(index: IndexOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Show what is in an index: counts, roots, model, vector index and sizes."""
    with open_engine(index, db=db) as engine:
        info = engine.info()
    info["index"] = printable_path(info["index"])
    info["roots"] = [printable_path(r) for r in info["roots"]]
    if as_json:
        write_json(info)
        return
    model = info["model"]
    rows = [
        ("index", info["index"]),
        *([("database", info["database"])] if info.get("database", "sqlite") != "sqlite" else []),
        ("items", f"{info['items']} ({info['images']} images, {info['texts']} texts"
                  + (f", {info['video_frames']} frames of {info['videos']} videos" if info.get("videos") else "") + ")"),
        ("model", f"{model['name']} [{model.get('pretrained') or 'random init'}]"),
        ("dimension", str(info["dim"])),
        ("vector index", _describe_vector_index(info["vector_index"]) + ("" if info["vectors_up_to_date"] else " (file behind database; synced on open)")),
        ("vectors by", _describe_encoded_with(info.get("encoded_with"))),
        ("encoders now", _describe_encoders(info.get("encoders") or {})),
        ("roots", "\n".join(terminal_safe(r) for r in info["roots"]) or "-"),
        *([("spaces", "\n".join(f"{name}: {terminal_safe(space['model'])}, {space['items']} items"
                                for name, space in info["spaces"].items()))] if info.get("spaces") else []),
        ("disk", _human_bytes(info["disk_bytes"])),
        ("schema", str(info["schema_version"])),
        ("updated", str(info["updated_at"])),
    ]
    table = Table(show_header=False, show_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, Text(value))
    out.print(table)


def _describe_encoded_with(used: dict | None) -> str:
    """The encoders whose vectors the index holds (recorded by each indexing run)."""
    if not used:
        return "not recorded (indexed by an earlier mmsearch)"
    return "; ".join(f"{kind} {', '.join(names)}" for kind, names in sorted(used.items()))


def _describe_encoders(entry: dict) -> str:
    """Which encoders answer queries and index images, and why (``MMSEARCH_IMAGE_ENCODER``)."""
    image = entry.get("image") or {}
    text = f"text {entry.get('text', 'torch')}; images: indexing {image.get('indexing', 'torch')}, queries {image.get('queries', 'torch')}"
    measured = image.get("measured") or {}
    if image.get("setting", "auto") != "auto":
        text += f" (set by MMSEARCH_IMAGE_ENCODER={image['setting']})"
    elif measured.get("ms_per_image"):
        timings = ", ".join(f"{name} {ms:g}" for name, ms in sorted(measured["ms_per_image"].items(), key=lambda kv: kv[1]))
        text += f" (measured ms/image on {measured.get('cpu')}: {timings})"
    if image.get("status") == "ok" and not str(image.get("int8", "")).startswith("accepted"):
        text += f"; int8 {image.get('int8')}"
    elif image.get("status") not in ("ok", None, "none"):
        text += f"; no ONNX image encoder: {image.get('reason')}"
    return text


def _describe_vector_index(entry: dict) -> str:
    text = entry.get("type", "flat")
    if text == "pgvector":
        hnsw = entry.get("hnsw") or {}
        return (f"pgvector in the PostgreSQL catalogue (HNSW, m {hnsw.get('m', '?')}, ef_construction "
                f"{hnsw.get('ef_construction', '?')}; no local file), chosen with --vectors pgvector")
    if entry.get("nlist"):
        text += f" (nlist {entry['nlist']}, nprobe {entry.get('nprobe')}, {entry.get('code', '')} codes, re-rank {entry.get('rerank')}, trained for {entry.get('trained_for')} items)"
    if entry.get("data_bytes") is not None:
        text += f", lists on disk ({_human_bytes(entry['data_bytes'])}, memory-mapped)"
    if entry.get("requested", "auto") != "auto":
        text += f", chosen with --index-type {entry['requested']}"
    return text


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@command("check")
def check_cmd(
    index: IndexOpt = None,
    db: DbOpt = None,
    repair: Annotated[bool, typer.Option("--repair", metavar="", help="Fix what can be fixed: re-embed bad or changed items, drop vanished files and orphans, rebuild the vectors file.")] = False,
    device: DeviceOpt = None,
    wait: Annotated[float, typer.Option("--wait", metavar="SECONDS", help="With --repair: seconds to wait for a running indexing run (-1: forever).")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Verify an index (manifest, schema, database, rows against vectors, files still there); exit 1 if damaged, 0 if only out of date."""
    from ..check import check_folder
    from ..encoders import ModelSpec, TorchEncoder

    settings = read_settings(db)
    folder = index if index is not None else settings.default_index()
    report = check_folder(
        folder, repair=repair, wait=wait, settings=settings,
        encoder_factory=lambda store: TorchEncoder(ModelSpec.from_manifest(store.manifest["model"]), device,
                                                   settings.cpu_bf16),
    )
    if as_json:
        write_json(report.as_dict())
    else:
        for problem, outdated in [(p, False) for p in report.problems] + [(p, True) for p in report.outdated]:
            if problem.repaired:
                state = "repaired"
            elif outdated:
                state = "`mmsearch index` updates it"
            else:
                state = "repairable with --repair" if problem.repairable else "not repairable"
            err.print(Text(f"{problem.kind}: {display_path(problem.detail)} [{state}]"))
            for example in problem.examples:
                err.print(Text(f"    {display_path(example)}"))
        for note in report.notes:
            err.print(Text(f"note: {display_path(note)}"))
        verdict = report.out_of_date() if report.state == "out_of_date" else report.state
        out.print(Text(f"{display_path(report.index)}: {verdict} ({report.items} items, {len(report.problems)} problem(s))"))
    if not report.ok:
        raise typer.Exit(1)
