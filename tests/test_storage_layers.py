"""The storage package's shape: its modules import each other in layers (no circle, no private
name across modules), only it speaks SQL, and each concern's SQL is a catalogue Reader/Writer
method (checked here on a small SQLite catalogue, without a model)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import mmsearch
from mmsearch.filters import Filters
from mmsearch.storage import postgres
from mmsearch.storage.catalogue import Catalogue
from mmsearch.storage.rows import NewRow

PACKAGE = Path(mmsearch.__file__).parent
STORAGE = PACKAGE / "storage"


def _storage_imports() -> dict[str, set[str]]:
    """Each storage module's imports of other storage modules (module-level and inside functions)."""
    modules = {p.stem for p in STORAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((STORAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        graph[name] = deps & modules
    return graph


def test_storage_modules_import_each_other_without_a_circle():
    graph = _storage_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"import circle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    # the vector backends and the catalogue's layers never reach up to the store
    for low in ("catalogue", "pgvector", "vectors", "ondisk", "documents", "filtering", "calibration", "rows"):
        assert "store" not in graph[low] and "docindex" not in graph[low], low
    assert "ondisk" not in graph["vectors"]


def test_no_private_name_is_imported_across_storage_modules():
    for path in STORAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1 and node.module != "__future__":
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_only_storage_speaks_sql():
    for path in PACKAGE.rglob("*.py"):
        if STORAGE in path.parents:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                names = []
            assert not any(n.split(".")[0] in ("sqlalchemy", "psycopg") for n in names), path
            if isinstance(node, ast.ImportFrom) and node.module and node.level >= 1:
                assert not node.module.endswith(("storage.schema", "storage.filtering", "storage.documents",
                                                 "storage.calibration")), f"{path} imports {node.module}"
        assert not re.search(r"\b(reader|writer|r|w)\.session\b", path.read_text()), f"{path} reaches a session"


@pytest.fixture
def catalogue(tmp_path):
    cat = Catalogue.sqlite(tmp_path / "catalogue.db")
    cat.create_schema({"name": "test", "fingerprint": "f"}, 4)
    yield cat
    cat.close()


def _rows() -> list[NewRow]:
    return [
        NewRow(None, "/photos/harbour.jpg", "", "image", 10, 1, "h1"),
        NewRow(None, "/photos/shop.jpg", "", "image", 10, 1, "h2", captured={"camera_make": "Canon"}),
        NewRow(None, "/notes/harbour.txt", "", "text", 10, 1, "h3", text="boats in the harbour"),
    ]


def test_reader_and_writer_methods_cover_each_concern(catalogue):
    vectors = np.eye(3, 4, dtype=np.float32)
    with catalogue.write() as w:
        ids = w.write_items(_rows(), vectors).tolist()
    assert catalogue.has_tables()
    with catalogue.read() as r:
        assert {i for i, _ in r.lexical_search("harbour", 10)} == {ids[0], ids[2]}
        assert r.lexical_holding(["boats"], ids) == {ids[2]}
        assert r.passing_ids(Filters(camera="canon")).tolist() == [ids[1]]
        assert r.passing_ids(Filters(), "image", ["/photos"]).tolist() == ids[:2]
        assert r.passing_ids(Filters(), "image", cap=1) is None
        assert r.sql_conditions(Filters(camera="canon"), "image")  # opaque conditions for a pgvector search
        assert [row[0] for row in r.capture_rows(["image"], ["/photos"])] == ids[:2]
        assert r.rows_by_id(ids)[ids[2]].text == "boats in the harbour"
        assert set(r.places_by_id(ids[:1], vectors=True)[ids[0]].vector) == set(vectors[0].tobytes())
        assert dict(r.vectors_by_id(ids[1:2])) == {ids[1]: vectors[1].tobytes()}
        assert [row.id for row in r.images_by_hash(["h2", "h3"])] == [ids[1]]
        assert r.has_modality("text") and not r.has_modality("video")
        assert [row[0] for chunk in r.embedded_places(2) for row in chunk] == ids
        assert r.calibration() is None and r.calibration_probes("f", 4) is None
        assert r.calibration_sample(("image",), 10, 4).shape == (2, 4)
        assert r.generation() == 1
    with catalogue.write() as w:
        assert w.set_captured([(ids[0], {"camera_make": "Nikon"})]) == 1
        w.save_calibration({"gen": 1})
        w.save_calibration_probes("f", vectors)
        assert w.changes.gen is None  # none of them changes a vector: no generation bump
    with catalogue.read() as r:
        assert r.passing_ids(Filters(camera="nikon")).tolist() == [ids[0]]
        assert r.calibration() == {"gen": 1}
        assert np.array_equal(r.calibration_probes("f", 4), vectors)
        assert r.calibration_probes("another model", 4) is None
        assert r.generation() == 1


def test_server_error_names_only_database_errors():
    assert postgres.server_error(ValueError("not a database error"), "the PostgreSQL catalogue") is None
