"""The documentation: the site builds with `mkdocs build --strict`, every page is in the nav, the
README's and BENCHMARKS.md's links into docs/ exist, and every example marked runnable (an HTML
comment `<!-- test: run -->` on the line before a fenced python or bash block, see
docs/contributing.md) runs as written, in a new process, against the sample photos."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ENV, README, ROOT, serve_process

DOCS = ROOT / "docs"
BENCHMARKS = ROOT / "BENCHMARKS.md"
MARK = re.compile(r"<!-- test: run( server)? -->")
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # the mark's line, 1-based
    language: str  # python or bash
    server: bool  # run against `mmsearch serve --index indexes/photos`
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def runnable_blocks() -> list[Block]:
    """Every marked block of README.md and docs/, in order; a mark inside another fenced block
    (an example of the convention itself) is text, not a mark."""
    blocks = []
    for path in [README, *pages()]:
        lines = path.read_text(encoding="utf-8").splitlines()
        fence = None
        i = 0
        while i < len(lines):
            line = lines[i]
            opening = re.match(r"^(`{3,})", line)
            if fence:
                if line.strip() == fence:
                    fence = None
            elif opening:
                fence = opening.group(1)
            elif mark := MARK.fullmatch(line.strip()):
                where = f"{path.relative_to(ROOT)}:{i + 1}"
                start = re.match(r"^(`{3,})(python|bash)\s*$", lines[i + 1] if i + 1 < len(lines) else "")
                assert start, f"{where}: a runnable mark must stand just before a python or bash block"
                end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == start.group(1)), None)
                assert end is not None, f"{where}: the block is not closed"
                blocks.append(Block(str(path.relative_to(ROOT)), i + 1, start.group(2), bool(mark.group(1)),
                                    "\n".join(lines[i + 2:end]) + "\n"))
                i = end
            i += 1
    return blocks


BLOCKS = runnable_blocks()


# -- the marked examples run ----------------------------------------------------------------------
def test_the_examples_the_docs_promise_are_marked():
    """At least the Python API example, a CLI query with --json and a server example run."""
    kinds = {(b.path, b.language, b.server) for b in BLOCKS}
    assert ("docs/python-api.md", "python", False) in kinds
    assert ("docs/server.md", "python", True) in kinds
    assert any(b.language == "bash" and "mmsearch query" in b.code and "--json" in b.code for b in BLOCKS)
    assert any(b.path == "README.md" for b in BLOCKS)


def serving(index: Path, cwd: Path, env: dict):
    """`mmsearch serve --index INDEX` in a new process on a free loopback port: its URL."""
    return serve_process(index, cwd.parent / "server.log", cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_marked_example_runs_as_written(block, tmp_path, tiny_model):
    """The block in a new process, from a folder laid out as a checkout (the sample photos at
    tests/data/photos), with `mmsearch` on the PATH running this checkout and the tiny model as
    the default model (MMSEARCH_MODEL / MMSEARCH_PRETRAINED), offline."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "tests" / "data" / "photos", work / "tests" / "data" / "photos")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "mmsearch"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mmsearch "$@"\n')
    shim.chmod(0o755)
    env = dict(ENV, MMSEARCH_MODEL=str(tiny_model.config), MMSEARCH_PRETRAINED=str(tiny_model.checkpoint),
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               # this checkout's package, wherever the test runs from
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("MMSEARCH_INDEX", None)
    env.pop("MMSEARCH_URL", None)
    env.pop("MMSEARCH_TOKEN", None)

    def run(code: str) -> subprocess.CompletedProcess:
        if block.language == "python":
            script = tmp_path / "example.py"
            script.write_text(code, encoding="utf-8")
            command = [sys.executable, str(script)]
        else:
            script = tmp_path / "example.sh"
            script.write_text(code, encoding="utf-8")
            command = ["bash", "-euo", "pipefail", str(script)]
        return subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=300)

    if block.server:
        done = subprocess.run([sys.executable, "-m", "mmsearch", "index", "tests/data/photos", "--index",
                               "indexes/photos", "--quiet"], capture_output=True, text=True, cwd=work, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        with serving(work / "indexes" / "photos", work, env) as url:
            done = run(block.code.replace(DEFAULT_URL, url))
    else:
        done = run(block.code)
    assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip(), f"{block} printed nothing"
    if "--json" in block.code:
        # a query answering in JSON: its document is the last thing printed
        assert '"hits"' in done.stdout


# -- the site builds, with every page in its nav ------------------------------------------------
def have_mkdocs() -> bool:
    return importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("material") is not None


@pytest.mark.skipif(not have_mkdocs(), reason="mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')")
def test_site_builds_strict_without_warnings(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT, env=dict(ENV, NO_MKDOCS_2_WARNING="1"),
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def nav_pages() -> list[str]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (installed with mkdocs) is needed to read mkdocs.yml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    found = []

    def walk(node):
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, list):
            for entry in node:
                walk(entry)
        elif isinstance(node, dict):
            for entry in node.values():
                walk(entry)

    walk(config["nav"])
    return found


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = nav_pages()
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert on_disk - set(nav) == set(), "pages missing from mkdocs.yml's nav"
    assert set(nav) - on_disk == set(), "nav entries without a page"


LINK = re.compile(r"\]\(((?:docs/)[^)#\s]+)(?:#[^)\s]*)?\)")


@pytest.mark.parametrize("source", [README, BENCHMARKS], ids=lambda p: p.name)
def test_links_into_docs_exist(source):
    links = LINK.findall(source.read_text(encoding="utf-8"))
    assert links, f"{source.name} links to no docs page"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing


def test_site_is_ignored_by_git():
    done = subprocess.run(["git", "check-ignore", "-q", "site/index.html"], cwd=ROOT, capture_output=True)
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, "site/ (mkdocs' build output) must be in .gitignore"


# -- BENCHMARKS.md's headline table is the site's benchmarks overview ---------------------------
def headline_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_benchmarks_headline_matches_the_sites_overview():
    root = headline_rows(BENCHMARKS.read_text(encoding="utf-8"))
    site = headline_rows((DOCS / "benchmarks" / "index.md").read_text(encoding="utf-8"))
    assert root and [row.replace("](docs/benchmarks/", "](") for row in root] == site
    # one row per topic page, each linked
    topics = {p.name for p in (DOCS / "benchmarks").glob("*.md")} - {"index.md"}
    linked = set(re.findall(r"\]\(docs/benchmarks/([\w-]+\.md)", "\n".join(root)))
    assert linked == topics, (sorted(topics - linked), sorted(linked - topics))
