"""The house's boundaries cannot drift: the import contracts in pyproject.toml hold (checked by
import-linter on the code as it is), every top-level module is in a layer, and the layout page
of the docs lists the same layers."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
LAYERS = next(c for c in CONFIG["contracts"] if c["id"] == "layers")["layers"]


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    done = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout


def test_every_top_level_module_lies_in_a_layer():
    """A module outside every layer would be outside the contract: each file and package of
    mmsearch/ (but the package's own __init__) is named."""
    named = {name.strip() for layer in LAYERS for name in layer.split("|")}
    found = {p.stem for p in (ROOT / "mmsearch").glob("*.py") if p.stem != "__init__"}
    found |= {p.name for p in (ROOT / "mmsearch").iterdir() if (p / "__init__.py").is_file()}
    assert found == named, (sorted(found - named), sorted(named - found))


def test_the_layout_page_lists_the_contract_layers():
    page = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers: begin -->\s*```text\n(.*?)```\s*<!-- layers: end -->", page, re.S)
    assert block, "docs/architecture.md lost its layers block"
    listed = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert listed == [layer.strip() for layer in LAYERS]


def test_the_shipped_package_holds_no_test_helpers():
    assert not (ROOT / "mmsearch" / "synthetic.py").exists()
    assert not (ROOT / "mmsearch" / "media" / "videogen.py").exists()
