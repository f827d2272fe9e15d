"""The ``mmsearch`` command: a thin typer layer over ``mmsearch.Engine``.

Each command opens an engine, calls one library method and formats the result. Library errors
(``MMSearchError``) become one-line messages and non-zero exit codes in ``_friendly_errors``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .media import Skip
from .errors import MMSearchError, QueryError
from .fsutil import display_path, printable_path, terminal_safe

class _Command(TyperCommand):
    """Commands whose --help option shows no type marker (flags take no value)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Group(TyperGroup):
    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


app = typer.Typer(
    cls=_Group,
    name="mmsearch",
    help="Cross-modal search over your images and texts: index a folder, then query it with words, pictures, or both.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # errors stay on one line


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"mmsearch {__version__}")
        raise typer.Exit()


_state: dict[str, Any] = {}


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """Cross-modal search over your images and texts: index a folder, then query it with words, pictures, or both."""
    from .settings import Settings

    try:  # every MMSEARCH_* variable, read once; a bad value stops here, before any work
        _state["settings"] = Settings.from_env()
    except MMSearchError as exc:
        err.print(Text(f"error: {display_path(str(exc))}"), style="bold red")
        raise typer.Exit(exc.exit_code) from None


def _settings():
    from .settings import Settings

    if "settings" not in _state:  # commands invoked without the app's callback (tests of one command)
        _state["settings"] = Settings.from_env()
    return _state["settings"]


def _friendly_errors(func: Callable) -> Callable:
    """The one place where library errors become CLI errors."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MMSearchError as exc:
            err.print(Text(f"error: {display_path(str(exc))}"), style="bold red")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def command(*args: Any, **kwargs: Any) -> Callable:
    def register(func: Callable) -> Callable:
        return app.command(*args, cls=_Command, **kwargs)(_friendly_errors(func))

    return register


# -- shared options ------------------------------------------------------------------------------
IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", "-i", metavar="DIR", help="Index folder \\[default: $MMSEARCH_INDEX or ./indexes/default].", show_default=False),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", metavar="NAME", help="open_clip model name, JSON config path, hf-hub:ORG/REPO, local-dir:PATH, or a `mmsearch train` folder \\[default: the index's model, else ViT-B-32]."),
]
PretrainedOpt = Annotated[
    Optional[str],
    typer.Option("--pretrained", "-p", metavar="WEIGHTS", help="Pretrained tag (e.g. laion2b_s34b_b79k), checkpoint file, or 'none' for random weights."),
]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", metavar="DEVICE", help="cuda, mps or cpu \\[default: best available].")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON document instead of a table.")]


def _engine(index: Path | None, model: str | None = None, pretrained: str | None = None, device: str | None = None, **kwargs: Any):
    from .engine import Engine  # imported here so `mmsearch --help` stays instant

    return Engine(index, model=model, pretrained=pretrained, device=device, settings=_settings(), **kwargs)


class RichProgress:
    """Draws the library's progress events with rich, on stderr."""

    def __init__(self, console: Console):
        self.console = console
        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        )
        self.task = None
        self.task_total: int | None = None

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def start(self, phase: str, total: int | None) -> None:
        if self.task is not None and self.task_total is None:
            self.bar.update(self.task, total=1, completed=1)  # close an open-ended phase (scanning)
        self.task = self.bar.add_task(phase, total=total)
        self.task_total = total

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)

    def skip(self, skip: Skip) -> None:
        self.console.print(Text(f"skipped {display_path(skip.path)}: {skip.reason}", style="yellow"))

    def note(self, message: str) -> None:
        self.console.print(Text(message, style="bold yellow"))


# -- commands ------------------------------------------------------------------------------------
@command("index")
def index_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(metavar="PATHS", help="Folders or files to index \\[default: every folder indexed before, with the options it was indexed with].", show_default=False)] = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    exclude: Annotated[Optional[list[str]], typer.Option("--exclude", "-x", metavar="GLOB", help="Files or folders to leave out (repeatable), e.g. '*.gif' or 'raw/*'; remembered for PATHS.")] = None,
    hidden: Annotated[bool, typer.Option("--hidden", metavar="", help="Also index hidden files and folders (names starting with '.'); remembered for PATHS.")] = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", metavar="", help="Follow symlinks that lead outside PATHS (loops are detected); remembered for PATHS. Without it such links are skipped with a message.")] = False,
    reembed: Annotated[bool, typer.Option("--reembed", metavar="", help="Allow a different model than the index's: embed everything again.")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, metavar="N", help="Items per encoder batch \\[default: 32 on CPU, 256 on GPU].")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, metavar="N", help="Worker processes decoding images \\[default: CPU count, at most 8].")] = None,
    wait: Annotated[float, typer.Option("--wait", metavar="SECONDS", help="Seconds to wait for another indexing run on the same index (-1: forever).")] = 0.0,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
    index_type: Annotated[Optional[str], typer.Option("--index-type", metavar="TYPE", help="Expert: vector index auto, flat (exact), ivf-sq8 or ivf-pq (approximate, re-ranked exactly); remembered, and the vectors are rebuilt from stored embeddings when it changes \\[default: the index's choice, auto].", show_default=False)] = None,
) -> None:
    """Embed new and changed images and texts under PATHS; remove what was deleted."""
    with _engine(index, model, pretrained, device, batch_size=batch_size, workers=workers) as engine:
        progress = _QuietProgress(err) if quiet or as_json else RichProgress(err)
        with progress:
            report = engine.add(
                [str(p) for p in paths] if paths else None,
                exclude=exclude or (), include_hidden=hidden, follow_links=follow_links, reembed=reembed,
                wait=wait, progress=progress, index_type=index_type,
            )
    if as_json:
        _write_json(report.as_dict())
    else:
        out.print(report.summary())


def _write_json(data: Any) -> None:
    """One JSON document on stdout, always valid UTF-8 (file names come as ``path_fields``)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")


class _QuietProgress:
    """No bar, but skipped files are still named (on stderr)."""

    def __init__(self, console: Console):
        self.console = console

    def __enter__(self) -> _QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, phase: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def skip(self, skip: Skip) -> None:
        self.console.print(Text(f"skipped {display_path(skip.path)}: {skip.reason}"))

    def note(self, message: str) -> None:
        self.console.print(Text(message))


TYPE_CHOICES = ("all", "image", "text")


@command("query")
def query_cmd(
    terms: Annotated[list[str], typer.Argument(metavar="TERMS", help="Texts and image paths, e.g. \"2:beach\" + ./dog.jpg - people", show_default=False)],
    index: IndexOpt = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, metavar="N", help="Number of results.")] = 10,
    type: Annotated[str, typer.Option("--type", "-t", metavar="TYPE", help="Result type: image, text or all.")] = "all",
    min_score: Annotated[Optional[float], typer.Option("--min-score", metavar="SCORE", help="Leave out results scoring below this cosine similarity.")] = None,
    under: Annotated[Optional[Path], typer.Option("--under", metavar="DIR", help="Only results inside this folder.")] = None,
    image: Annotated[bool, typer.Option("--image", metavar="", help="Treat every term as an image path.")] = False,
    text: Annotated[bool, typer.Option("--text", metavar="", help="Treat every term as text, even if it names a file.")] = False,
    include_self: Annotated[bool, typer.Option("--include-self", metavar="", help="Let a query image appear in its own results.")] = False,
    as_json: JsonOpt = False,
    paths: Annotated[bool, typer.Option("--paths", metavar="", help="Print matching paths only, one per line (control characters and undecodable bytes escaped; use -0 for exact names).")] = False,
    print0: Annotated[bool, typer.Option("--print0", "-0", metavar="", help="Print matching paths exactly as they are on disk, each followed by a NUL byte (for xargs -0).")] = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Search the index with texts, images, or a weighted combination of both."""
    # Checked before anything starts (the text encoder's preload below), each in one line.
    if image and text:
        raise QueryError("--image and --text exclude each other")
    if type not in TYPE_CHOICES:
        raise QueryError(f"unknown type {type!r}: choose one of {', '.join(TYPE_CHOICES)}")
    if min_score is not None and not math.isfinite(min_score):
        raise QueryError(f"--min-score must be a finite number, not {min_score}")
    preloaded = None
    if model is None and pretrained is None:
        from .encoders import onnx_text
        from .query import TEXT, parse_query

        settings = _settings()
        try:
            texts = [t.value for t in parse_query(terms, "image" if image else "text" if text else None) if t.kind == TEXT]
        except MMSearchError:
            texts = []  # the search below reports it
        # Load the text encoder and encode the texts while the engine's libraries import.
        preloaded = onnx_text.preload(index if index is not None else settings.default_index(), texts, settings.onnx)
    with _engine(index, model, pretrained, device, text_encoder=preloaded) as engine:
        hits = engine.search(
            terms, k=top, type=type, min_score=min_score, under=under,
            include_query=include_self, force="image" if image else "text" if text else None,
        )
    if as_json:
        doc = {"query": [printable_path(t) for t in terms], "hits": [h.as_dict() for h in hits]}
        if not hits:
            doc["why_empty"] = hits.why_empty
        _write_json(doc)
    elif paths or print0:
        for path in dict.fromkeys(hit.path for hit in hits):
            if print0:
                sys.stdout.buffer.write(os.fsencode(path) + b"\0")
            else:
                sys.stdout.write(display_path(path) + "\n")
        sys.stdout.flush()
    else:
        _print_hits(hits)


def _snippet(text: str | None, width: int = 80) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _print_hits(hits) -> None:
    if not hits:
        why = getattr(hits, "why_empty", None)
        err.print(Text("no results" + (f": {why}" if why else "")))
        return
    table = Table(show_edge=False, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("type")
    table.add_column("path", overflow="fold")
    table.add_column("text", overflow="fold")
    for hit in hits:
        where = display_path(hit.path) + (f":{hit.locator}" if hit.locator else "")
        table.add_row(str(hit.rank), f"{hit.score:.4f}", hit.modality, Text(where), Text(terminal_safe(_snippet(hit.text))))
    out.print(table)


@command("info")
def info_cmd(index: IndexOpt = None, as_json: JsonOpt = False) -> None:
    """Show what is in an index: counts, roots, model, vector index and sizes."""
    with _engine(index) as engine:
        info = engine.info()
    info["index"] = printable_path(info["index"])
    info["roots"] = [printable_path(r) for r in info["roots"]]
    if as_json:
        _write_json(info)
        return
    model = info["model"]
    rows = [
        ("index", info["index"]),
        ("items", f"{info['items']} ({info['images']} images, {info['texts']} texts)"),
        ("model", f"{model['name']} [{model.get('pretrained') or 'random init'}]"),
        ("dimension", str(info["dim"])),
        ("vector index", _describe_vector_index(info["vector_index"]) + ("" if info["vectors_up_to_date"] else " (file behind database; synced on open)")),
        ("roots", "\n".join(terminal_safe(r) for r in info["roots"]) or "-"),
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


def _describe_vector_index(entry: dict) -> str:
    text = entry.get("type", "flat")
    if entry.get("nlist"):
        text += f" (nlist {entry['nlist']}, nprobe {entry.get('nprobe')}, {entry.get('code', '')} codes, re-rank {entry.get('rerank')}, trained for {entry.get('trained_for')} items)"
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
    repair: Annotated[bool, typer.Option("--repair", metavar="", help="Fix what can be fixed: re-embed bad or changed items, drop vanished files and orphans, rebuild the vectors file.")] = False,
    device: DeviceOpt = None,
    wait: Annotated[float, typer.Option("--wait", metavar="SECONDS", help="With --repair: seconds to wait for a running indexing run (-1: forever).")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Verify an index (manifest, schema, database, rows against vectors, files still there); exit 1 if damaged."""
    from .check import check_folder
    from .encoders import ModelSpec, TorchEncoder

    settings = _settings()
    folder = index if index is not None else settings.default_index()
    report = check_folder(
        folder, repair=repair, wait=wait, settings=settings,
        encoder_factory=lambda store: TorchEncoder(ModelSpec.from_manifest(store.manifest["model"]), device,
                                                   settings.cpu_bf16),
    )
    if as_json:
        _write_json(report.as_dict())
    else:
        for problem in report.problems:
            state = "repaired" if problem.repaired else ("repairable with --repair" if problem.repairable else "not repairable")
            err.print(Text(f"{problem.kind}: {display_path(problem.detail)} [{state}]"))
            for example in problem.examples:
                err.print(Text(f"    {display_path(example)}"))
        for note in report.notes:
            err.print(Text(f"note: {display_path(note)}"))
        verdict = "ok" if not report.problems else ("repaired" if report.ok else "damaged")
        out.print(Text(f"{display_path(report.index)}: {verdict} ({report.items} items, {len(report.problems)} problem(s))"))
    if not report.ok:
        raise typer.Exit(1)


@command("serve")
def serve_cmd(
    index: IndexOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; the default only accepts connections from this machine. Beyond loopback a token is required (see --token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    device: DeviceOpt = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.1, help="Largest accepted uploaded image, in MiB.")] = 20.0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    token: Annotated[Optional[str], typer.Option("--token", metavar="TOKEN", show_default=False, help="Require this bearer token on API requests ('Authorization: Bearer ...'; the page takes it once from /#token=...) \\[default: $MMSEARCH_TOKEN]. Binding beyond loopback without one generates one.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve beyond loopback without a token: anyone who reaches the port can read every indexed file.")] = False,
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", show_default=False, help="Also answer requests for this host name (repeatable; '*' answers any); added to the comma-separated names in $MMSEARCH_ALLOWED_HOSTS. The server's own address, and localhost on loopback, always work.")] = None,
) -> None:
    """Serve the HTTP API and the web page (http://HOST:PORT/) with the model kept loaded."""
    import secrets

    from .server import docs_available, is_loopback_host, serve
    from .server.security import normalise_hosts

    settings = _settings()
    from_env = token is None and settings.token is not None
    token = token if token is not None else settings.token

    def usage(message: str) -> None:
        err.print(f"[bold red]error:[/] {escape(message)}")
        raise typer.Exit(2)

    if token is not None and not token.strip():
        usage("the token is empty: give --token a value, or unset MMSEARCH_TOKEN")
    if no_auth and token:
        if not from_env:
            usage("--no-auth and --token contradict each other: give one of them")
        token = None  # an exported MMSEARCH_TOKEN is for clients; --no-auth says this server wants none
    try:
        hosts = sorted(normalise_hosts([*(allow_host or ()), ",".join(settings.allowed_hosts)]))
    except ValueError as exc:
        usage(f"--allow-host or MMSEARCH_ALLOWED_HOSTS: {exc}")
    loopback = is_loopback_host(host)
    generated = not loopback and not token and not no_auth
    if generated:
        token = secrets.token_urlsafe(24)

    def ready(url: str) -> None:
        # Only what works: /docs when its assets are installed, the token link when there is a token.
        err.print(f"mmsearch: serving on {url}/" + ("  (API docs at /docs)" if docs_available() else ""))
        if generated:
            err.print(f"access token (generated; choose one with --token or MMSEARCH_TOKEN): {token}")
            err.print(f"open the page once with the token: {url}/#token={token}")
        elif token:
            err.print(f"requests need the token (--token / MMSEARCH_TOKEN); open the page once as {url}/#token=<token>")
        if not loopback:
            names = ", ".join(hosts) if hosts else "none"
            err.print(f"reachable by address, by this machine's name, and by --allow-host names ({names})")
            if no_auth:
                err.print(f"[yellow]warning:[/] binding to {escape(host)} without a token: every file in the index can be "
                          "read by anyone who reaches this port")

    serve(index, host=host, port=port, device=device, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
          log_level=log_level, token=token, allowed_hosts=hosts, require_auth=not no_auth, on_ready=ready,
          settings=settings)


DataArg = Annotated[Path, typer.Argument(help="Captioned dataset: .jsonl, .csv/.tsv, Karpathy dataset_*.json, or a folder of images with same-named .txt captions.", show_default=False)]
ImageRootOpt = Annotated[Optional[Path], typer.Option("--image-root", help="Folder that relative image paths are resolved against \\[default: the dataset file's folder].")]


def _load_dataset(data: Path, image_root: Path | None, quiet: bool = False):
    from .training.datasets import load_dataset

    dataset = load_dataset(data, image_root)
    if Path(dataset.source) != data.expanduser():  # a folder holding a dataset file
        err.print(Text(f"reading {printable_path(dataset.source)}"))
    for problem in dataset.problems[:20]:
        err.print(Text(f"skipped {problem}", style="yellow"))
    if len(dataset.problems) > 20:
        err.print(Text(f"... and {len(dataset.problems) - 20} more skipped rows", style="yellow"))
    return dataset


def _recall_table(title: str, rows: list[tuple[str, dict | None, dict | None]]) -> Table:
    """One row per direction (and per model/baseline/reading of ties), Recall@1/5/10 in percent;
    a direction given as None has no row."""
    table = Table(title=Text(title), show_edge=False, header_style="bold")
    table.add_column("")
    for k in ("R@1", "R@5", "R@10"):
        table.add_column(k, justify="right")
    for direction, label in ((1, "text->image"), (2, "image->text")):
        for row in rows:
            figures = row[direction]
            if figures is not None:
                suffix = f" ({row[0]})" if row[0] else ""
                table.add_row(Text(label + suffix), *[f"{figures.get(k, 0):.2f}" for k in ("R@1", "R@5", "R@10")])
    return table


@command("eval")
def eval_cmd(
    data: DataArg,
    split: Annotated[Optional[str], typer.Option("--split", "-s", help="Evaluate one split (test, val, train) of a dataset that has them \\[default: test if present, else all].")] = None,
    index: IndexOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    image_root: ImageRootOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images or captions per encoder batch.")] = 64,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Evaluate only the first N images (quick checks).")] = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Text->image and image->text Recall@1/5/10 of a model (the index's, or --model) on a captioned dataset."""
    from .training.datasets import Dataset
    from .training.evaluate import evaluate

    dataset = _load_dataset(data, image_root)
    if split is None and "test" in dataset.splits:
        split = "test"
    subset = dataset.split(split)
    if limit is not None:
        subset = Dataset(subset.source, subset.items[:limit], subset.problems)
    with _engine(index, model, pretrained, device) as engine:
        encoder = engine.encoder
        progress = _QuietProgress(err) if quiet or as_json else RichProgress(err)
        with progress:
            report = evaluate(encoder, subset, batch_size=batch_size, progress=progress, split=split or "all")
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
        return
    title = f"{report.dataset} [{report.split}]: {report.images} images, {report.captions} captions; {report.model}"
    rows: list[tuple[str, dict | None, dict | None]] = [("", report.text_to_image, report.image_to_text)]
    for reading, name in (("strict", "ties against"), ("expected", "ties at random")):
        t2i, i2t = (report.ties.get(d, {}).get(reading) for d in ("text_to_image", "image_to_text"))
        if t2i is not None or i2t is not None:
            rows.append((name, t2i, i2t))
    rows.append(("chance", report.chance["text_to_image"], report.chance["image_to_text"]))
    out.print(_recall_table(title, rows))
    if report.ties:
        out.print("Tied scores (identical captions or images): the first rows rank ties in dataset order, the "
                  "top-K protocol of papers and open_clip; 'ties against' ranks every tie above the right answer, "
                  "'ties at random' is the mean over random orders of ties.")


class _TrainBar(RichProgress):
    """The training bar: one row per epoch, its batches with loss and learning rate; when the epoch
    ends, its row shows that epoch's own validation recall (never the previous epoch's)."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
        )
        self.info = ""

    def start(self, phase: str, total: int | None) -> None:
        if self.task is not None and self.task_total is None:
            self.bar.update(self.task, total=1, completed=1)
        self.info = ""
        self.task = self.bar.add_task(phase, total=total, info="")
        self.task_total = total

    def metrics(self, values: dict) -> None:
        self.info = f"loss {values['loss']:.4f}  lr {values['lr']:.2e}"
        if self.task is not None:
            self.bar.update(self.task, info=self.info)

    def epoch(self, record: Any) -> None:
        recall = ""
        if record.val:
            t2i, i2t = record.val["text_to_image"], record.val["image_to_text"]
            recall = f"val t2i R@5 {t2i['R@5']:.1f}  i2t R@5 {i2t['R@5']:.1f}  rsum {record.val['rsum']:.1f}"
        if record.epoch == 0:
            if recall:
                self.console.print(Text(f"start (before training): {recall}"))
            return
        if self.task is not None and recall:  # the finished epoch's row, still the current task
            self.bar.update(self.task, info=f"{self.info}  {recall}" if self.info else recall)
        line = f"epoch {record.epoch}: loss {record.loss:.4f}" + (f", {recall}" if recall else "")
        self.console.print(Text(line + ("  (best so far)" if record.best else "")))


class _QuietTrain(_QuietProgress):
    def metrics(self, values: dict) -> None:
        pass

    def epoch(self, record: Any) -> None:
        pass


@command("train")
def train_cmd(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for config.json, checkpoint.pt (best), last.pt (resume state), train.json.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Starting architecture: open_clip name, JSON config, local-dir:PATH or a `mmsearch train` folder \\[default: ViT-B-32].")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", "-p", help="Starting weights: tag, checkpoint file, or 'none' to train from scratch.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=2, help="Image-caption pairs per step (the contrastive negatives).")] = 64,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate \\[default: 1e-5 fine-tuning, 5e-4 from scratch].")] = None,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay (not on gains, biases, temperature).")] = 0.1,
    warmup: Annotated[Optional[int], typer.Option("--warmup", min=0, help="Linear warm-up steps before the cosine decay \\[default: 5% of steps, at most 1000].")] = None,
    grad_clip: Annotated[float, typer.Option("--grad-clip", min=0.0, help="Clip the gradient norm to this (0: off).")] = 1.0,
    lock_image: Annotated[bool, typer.Option("--lock-image", help="Freeze the image tower (LiT): train the text side only.")] = False,
    lock_text: Annotated[bool, typer.Option("--lock-text", help="Freeze the text tower: train the image side only.")] = False,
    augment: Annotated[bool, typer.Option("--augment", help="Random resized crops of training images (off by default).")] = False,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Images held out for validation when the dataset has no val split \\[default: 0, train on every image].")] = 0.0,
    keep: Annotated[str, typer.Option("--keep", help="Weights written to checkpoint.pt: 'last' epoch, or 'best' validation recall (needs a val split or --val-fraction).")] = "last",
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision \\[default: on with CUDA].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = None,
    image_root: ImageRootOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run saved in --out (its options are kept).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a previous run in --out.")] = False,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fine-tune (or train from scratch) the dual encoder on captioned images; index with --model OUT afterwards."""
    from .training.train import TrainOptions, train

    options = TrainOptions(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup,
        grad_clip=grad_clip or None, lock_image=lock_image, lock_text=lock_text, augment=augment,
        val_fraction=val_fraction, keep=keep, seed=seed, amp=amp,
    )
    dataset = _load_dataset(data, image_root)
    progress = _QuietTrain(err) if quiet or as_json else _TrainBar(err)
    with progress:
        report = train(dataset, out_dir, model, pretrained, options, device=device, resume=resume, overwrite=overwrite, progress=progress)
    for warning in report.warnings:  # on stderr, with --json too
        err.print(Text(f"warning: {warning}", style="bold yellow"))
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False) + "\n")
        return
    out.print(f"trained {report.epochs} epoch(s), {report.steps} steps on {report.train_images} images in {report.seconds:.0f} s")
    if report.start and report.end:
        where = (f"validation ({report.measured_images} images)" if report.measured_on == "validation"
                 else f"{report.measured_images} training images (not held out)")
        kept = "the starting weights" if report.kept_epoch == 0 else f"epoch {report.kept_epoch} ({report.keep})"
        out.print(_recall_table(f"{where}: start, and checkpoint.pt = {kept}", [
            ("start", report.start["text_to_image"], report.start["image_to_text"]),
            ("kept", report.end["text_to_image"], report.end["image_to_text"]),
        ]))
        out.print(f"recall sum {report.start['rsum']:.1f} -> {report.end['rsum']:.1f}"
                  + (f"; best validation epoch {report.best_epoch}" if report.best_epoch is not None else ""))
    out.print(f"model: {report.out}  (mmsearch index --model {report.out} ...)")


def main() -> None:
    """The console script: usage errors become one line (``error: ...``) with exit code 2."""
    # typer raises click's exception classes (from its own copy of click in recent versions):
    # found through the public typer.BadParameter, whichever click that is.
    usage_error, click_exception = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                                    for name in ("UsageError", "ClickException"))
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        if exc.format_message():  # (none when `mmsearch` alone printed the help)
            hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) is not None else ""
            err.print(Text(f"error: {display_path(exc.format_message())}{hint}"), style="bold red")
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("[bold red]interrupted[/]")
        sys.exit(130)
    except click_exception as exc:
        err.print(Text(f"error: {display_path(exc.format_message())}"), style="bold red")
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
