"""scripts/house_report.py on a tiny package whose every measure is known."""

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "house_report.py"


@pytest.fixture(scope="module")
def house():
    spec = importlib.util.spec_from_file_location("house_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["house_report"] = module   # dataclasses look the module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("house_report", None)


FILES = {
    "mmsearch/__init__.py": '"""A tiny package."""\n',
    # a <-> b: a cycle at module level; a imports a private name of b; a imports c in a def
    "mmsearch/a.py": """
        from . import b
        from .b import _helper


        def f():
            from .c import thing
            return thing
    """,
    "mmsearch/b.py": """
        import mmsearch.a


        def _helper():
            return 1
    """,
    # c -> d in a def while d -> c at module level: a cycle dodged by a function-level import
    "mmsearch/c.py": """
        # a comment line

        thing = 1


        class Mixin:
            def one(self):
                return 1

            def two(self):
                return 2


        def search(k, type, min_score, under, other=None):
            from . import d
            if row.modality == "video":
                return d
            if modality is not None:
                return None
            if Item.modality == modality:
                return None
            return m.modality in ("image", "text")


        def few(k, type, min_score):
            return "a video file"
    """,
    "mmsearch/d.py": """
        import mmsearch.c as cc

        value = cc._private_thing
    """,
    "mmsearch/engine.py": """
        from .c import Mixin


        class Engine(Mixin):
            def run(self):
                return self.one()
    """,
    "mmsearch/media/__init__.py": "",
    "mmsearch/media/v.py": """
        def kind(m):
            return "video" if m.modality == "video" else "image"
    """,
}


@pytest.fixture()
def tiny(tmp_path):
    for rel, text in FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return tmp_path


def test_every_measure_on_a_known_package(house, tiny):
    r = house.measure(tiny)
    g = r["graph"]
    assert g["modules"] == 8
    assert g["module_level_edges"] == 4          # a->b, b->a, d->c, engine->c
    assert g["cycles"] == [["mmsearch.a", "mmsearch.b"]]
    assert sorted(map(tuple, g["edges_in_cycles"])) == [
        ("mmsearch.a", "mmsearch.b"), ("mmsearch.b", "mmsearch.a")]
    assert g["function_level_edges"] == 2        # a->c, c->d
    assert g["cycles_with_function_level"] == [["mmsearch.a", "mmsearch.b"], ["mmsearch.c", "mmsearch.d"]]
    assert g["function_edges_closing_a_cycle"] == [["mmsearch.c", "mmsearch.d"]]
    assert g["function_edges_in_cycles"] == [["mmsearch.c", "mmsearch.d"]]
    # layers: c at 0; d, engine above it; the a/b cycle imports nothing below
    assert g["layer_of"]["mmsearch.c"] == 0 and g["layer_of"]["mmsearch.d"] == 1
    assert g["layer_of"]["mmsearch.a"] == g["layer_of"]["mmsearch.b"] == 0
    assert g["function_edges_upward"] == [["mmsearch.c", "mmsearch.d"]]

    private = [(p["file"], p["name"], p["kind"]) for p in r["private_imports"]]
    assert private == [("mmsearch/a.py", "_helper", "name"), ("mmsearch/d.py", "_private_thing", "attribute")]

    assert r["function_level_import_count"] == 2
    assert {f: [i["target"] for i in items] for f, items in r["function_level_imports"].items()} == {
        "mmsearch/a.py": ["mmsearch.c"], "mmsearch/c.py": ["mmsearch.d"]}

    # `row.modality == "video"` and `m.modality in (...)`; not the None check, not the generic
    # column == parameter, nothing in media/
    assert [(b["file"], b["line"]) for b in r["modality_branches"]] == [
        ("mmsearch/c.py", 16), ("mmsearch/c.py", 22)]
    assert [(v["file"], v["line"]) for v in r["video_literals"]] == [("mmsearch/c.py", 16)]

    assert r["engine"]["class"]["lines"] == 3
    assert [b["name"] for b in r["engine"]["bases_in_package"]] == ["Mixin"]
    assert r["engine"]["total_lines"] == 3 + 6
    assert r["largest_classes"][0]["name"] == "Mixin"
    assert r["largest_functions"][0]["name"] == "search"
    assert r["largest_functions"][0]["lines"] == 9

    assert [s["name"] for s in r["search_signatures"]] == ["search"]

    texts = [(tiny / rel).read_text().splitlines() for rel in FILES]
    assert r["size"]["lines"] == sum(len(t) for t in texts)
    assert r["size"]["code_lines"] == sum(1 for t in texts for line in t
                                          if line.strip() and not line.strip().startswith("#"))
    assert r["size"]["top_level"] == {
        "modules": ["a", "b", "c", "d", "engine"], "packages": ["media"], "count": 6}


def test_command_line_writes_text_and_json(house, tiny, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("out") / "report.json"
    assert house.main(["--root", str(tiny), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cycles (module-level SCCs > 1)" in text and "mmsearch.a, mmsearch.b" in text
    data = json.loads(out.read_text())
    assert data["summary"]["cycles (module-level SCCs > 1)"] == 1
    assert data["summary"]["modality branches outside media/"] == 2
