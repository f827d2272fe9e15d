"""Settings: every MMSEARCH_* variable is read once, by one parser, documented, and a bad value
stops a command at its start with one line naming the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmsearch.errors import SettingsError
from mmsearch.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_in_the_package_is_a_setting_and_documented():
    names = {v.name for v in VARIABLES}
    used: set[str] = set()
    for path in (ROOT / "mmsearch").rglob("*.py"):
        used |= set(re.findall(r"MMSEARCH_[A-Z_0-9]+", path.read_text(encoding="utf-8")))
    assert used <= names, f"read outside Settings or undocumented: {sorted(used - names)}"
    table = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")  # the documentation's table
    documented = set(re.findall(r"^\| `(MMSEARCH_[A-Z_0-9]+)` \|", table, re.M))
    assert documented == names, (sorted(names - documented), sorted(documented - names))
    # No module but settings reads the environment for them.
    for path in (ROOT / "mmsearch").rglob("*.py"):
        if path.name != "settings.py":
            assert "os.environ" not in path.read_text(encoding="utf-8") or path.name == "spec.py", path


@pytest.mark.parametrize("text, value", [("0", False), ("OFF", False), ("No", False), ("1", True), ("yes", True)])
def test_one_parser_for_flags(text, value):
    assert Settings.from_env({"MMSEARCH_FAISS_GPU": text}).faiss_gpu is value
    assert Settings.from_env({"MMSEARCH_ONNX": text}).onnx is value


@pytest.mark.parametrize("name, bad", [
    ("MMSEARCH_NPROBE", "many"), ("MMSEARCH_NPROBE", "0"), ("MMSEARCH_MAX_PIXELS", "1e9x"),
    ("MMSEARCH_FAISS_GPU", "maybe"), ("MMSEARCH_DECODE_TIMEOUT", "-1"), ("MMSEARCH_CPU_BF16", "fast"),
    ("MMSEARCH_FLAT_MAX", "1.5"), ("MMSEARCH_CHECKPOINT_SECONDS", "nan"),
])
def test_bad_values_name_the_variable(name, bad):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: bad})


def test_a_bad_value_stops_the_cli_at_start(tmp_path):
    for args in (["query", "cat", "-i", str(tmp_path)], ["info", "-i", str(tmp_path)]):
        result = subprocess.run([sys.executable, "-m", "mmsearch", *args], capture_output=True, text=True,
                                env=dict(os.environ, MMSEARCH_NPROBE="many"), timeout=120)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "MMSEARCH_NPROBE" in lines[0] and "whole number" in lines[0]


def test_empty_means_unset_and_defaults_hold():
    assert Settings.from_env({"MMSEARCH_NPROBE": " ", "MMSEARCH_INDEX": ""}) == Settings()
    s = Settings.from_env({"MMSEARCH_ALLOWED_HOSTS": "a.lan, b.lan,", "MMSEARCH_INDEX": "~/idx"})
    assert s.allowed_hosts == ("a.lan", "b.lan") and s.index == Path("~/idx").expanduser()
