"""Modalities as capabilities: outside ``mmsearch/media/`` code asks what a modality's items can
do (``media.capabilities``), never which modality they are, so that a new one (audio) is one
handler and one entry. The scan below holds that rule: it fails on each line that branches on a
modality's name, except in the few files where a user names a type."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from mmsearch.media import capabilities as caps

PACKAGE = Path(__file__).resolve().parent.parent / "mmsearch"

NAMES = {"image", "text", "video"}  # modality names as literals
CONSTANTS = {"IMAGE", "TEXT", "VIDEO"}  # ... and as the constants that spell them
# Calls whose arguments are modalities (a literal there picks one by name).
MODALITY_ARGUMENT = re.compile(r"modalit|file_count|hash_ranges|vectors_of|sample_vectors|capture_rows|counts\.get")

# A query term's kind ('text', 'image', 'item': what the user gave) is no modality: comparisons
# with it are left alone.
TERM_KIND = re.compile(r"\bkind\b|\bforce\b")

# Files (relative to the package) where a user names a modality, so the names belong there. Edit
# this list, with the reason, when a file is converted or legitimately names one.
ALLOWED = {
    "server/clip_back.py": "clip-retrieval's API: the request names its query modality ('image', 'text')",
}


def _spells_name(node: ast.AST) -> bool:
    """Whether ``node`` is a modality's name: a literal, a constant, or a collection of them."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in NAMES
    if isinstance(node, ast.Name):
        return node.id in CONSTANTS
    if isinstance(node, ast.Attribute):
        return node.attr in CONSTANTS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_spells_name(e) for e in node.elts)
    return False


def _mentions_modality(node: ast.AST) -> bool:
    return any((isinstance(n, ast.Attribute) and "modality" in n.attr) or (isinstance(n, ast.Name) and "modality" in n.id)
               for n in ast.walk(node))


def _offences(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(TERM_KIND.search(ast.unparse(o)) for o in operands):
                continue  # a query term's kind
            if any(_spells_name(o) for o in operands):
                found.append((node.lineno, "compares with a modality's name"))
            elif any(_mentions_modality(o) for o in operands) and any(
                    isinstance(o, ast.Constant) and isinstance(o.value, str) for o in operands):
                found.append((node.lineno, "compares a modality with a literal"))
        elif isinstance(node, ast.Call) and MODALITY_ARGUMENT.search(ast.unparse(node.func)):
            if any(_spells_name(a) for a in [*node.args, *(k.value for k in node.keywords)]):
                found.append((node.lineno, "passes a modality by name"))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) > 1 and _spells_name(node):
            found.append((node.lineno, "lists modalities by name"))
        elif isinstance(node, ast.Constant) and node.value == "video":
            found.append((node.lineno, "names video"))
    # One report per line and reason; a collection inside a comparison counts once.
    return sorted(set(found))


def modality_branches(root: Path, allowed: dict[str, str] | None = None) -> list[str]:
    """``path:line: reason: source`` for each place under ``root`` (a package folder), outside
    its ``media/`` and the ``allowed`` files, that picks a modality by its name."""
    allowed = ALLOWED if allowed is None else allowed
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("media/") or rel in allowed:
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        seen: set[int] = set()
        for line, reason in _offences(ast.parse(source)):
            if line in seen:
                continue
            seen.add(line)
            out.append(f"{rel}:{line}: {reason}: {lines[line - 1].strip()}")
    return out


def test_no_modality_is_picked_by_name_outside_media():
    offending = modality_branches(PACKAGE)
    assert not offending, ("ask media.capabilities what the items can do instead of naming a modality "
                           "(or add the file to ALLOWED with the reason a user names a type there):\n"
                           + "\n".join(offending))


def test_the_scan_finds_branches_on_names(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "video.py").write_text('VIDEO = "video"\nif modality == VIDEO: pass\n')
    (tmp_path / "a.py").write_text('from .media.video import VIDEO\n'
                                   'if row.modality == "video": pass\n'
                                   'if row.modality != "audio": pass\n'
                                   'ok = old.modality == new.modality\n'
                                   'if item.modality in (IMAGE, VIDEO): pass\n'
                                   'n = r.file_count("video")\n'
                                   'sides = ("image", "video")\n'
                                   'key = (path, "video")\n'
                                   'kinds = ("text", onnx_text)\n'
                                   'if term.kind == TEXT: pass\n')
    assert [line.split(":")[1] for line in modality_branches(tmp_path, {})] == ["2", "3", "5", "6", "7", "8"]
    assert modality_branches(tmp_path, {"a.py": "test"}) == []


# -- the capabilities --------------------------------------------------------------------------
def test_capabilities_import_nothing_heavy():
    import subprocess

    code = ("import sys, mmsearch.media.capabilities; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'PIL', 'av', 'numpy', 'torch', 'sqlalchemy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_handler_declares_its_modalitys_capabilities():
    from mmsearch.media import media_registry

    registry = media_registry()
    for handler in registry.handlers.values():
        assert handler.capabilities == caps.capabilities(handler.modality)
    assert set(registry.modalities()) == set(caps.modalities())
    for modality in caps.modalities():
        c = caps.capabilities(modality)
        assert (registry.thumbnailer(modality) is not None) == (c.thumbnail and not c.moments)
        assert (registry.moment_thumbnailer(modality) is not None) == (c.thumbnail and c.moments)
        assert (registry.capture_reader(modality) is not None) == c.captured


def test_the_questions():
    assert caps.modalities() == ("image", "text", "video")
    assert caps.with_moments() == ("video",) and caps.has_moments("video") and not caps.has_moments("image")
    assert caps.on_side(caps.IMAGE_SIDE) == ("image", "video")
    assert caps.on_side(caps.IMAGE_SIDE, in_documents=True) == ("image",)
    assert caps.on_side(caps.TEXT_SIDE) == ("text",) and caps.in_documents() == ("image", "text")
    assert caps.captured() == ("image", "video")
    assert caps.is_text_side("text") and not caps.is_text_side("video") and caps.side_of("video") == caps.IMAGE_SIDE
    # A modality this version does not know (an index from a newer one): alone, on its own side.
    unknown = caps.capabilities("audio")
    assert (unknown.side, unknown.moments, unknown.in_documents) == ("audio", False, False)
    assert caps.info_counts({"image": 3, "text": 2, "video": 40}, {"video": 1}.get) == \
        {"images": 3, "texts": 2, "videos": 1, "video_frames": 40}


def test_documents_keys_of_files_that_join_none():
    from mmsearch.media.documents import doc_key, is_file_key

    assert doc_key("/v/a.mp4", "t=1.5", "video") == ("/v/a.mp4", "video") and is_file_key(("/v/a.mp4", "video"))
    assert not is_file_key(doc_key("/d/x.jsonl", "12:image", "image")) and not is_file_key(doc_key("/p/x.jpg", "", "image"))
    assert not is_file_key(doc_key("/p/x.jpg", "caption", "text"))


@pytest.mark.parametrize("modality", ["video"])
def test_placeholders_are_files_of_moments(modality):
    from mmsearch.media.records import Record, is_placeholder

    assert is_placeholder(Record("/v/a.mp4", "", modality, 1, 1, "h"))
    assert not is_placeholder(Record("/v/a.mp4", "t=1", modality, 1, 1, "h"))
    assert not is_placeholder(Record("/p/a.jpg", "", "image", 1, 1, "h"))
