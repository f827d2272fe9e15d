"""scripts/bench_gpu.py, the GPU run in one command, on a machine without CUDA: it runs its CPU
parts at a tiny size (a tiny open_clip config with random weights: nothing is downloaded), says
"no CUDA" for every GPU figure instead of failing, and prints its one table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ENV, ROOT

SCRIPT = ROOT / "scripts" / "bench_gpu.py"


@pytest.mark.slow
def test_the_gpu_benchmark_runs_without_cuda_and_prints_one_table(tmp_path):
    env = dict(ENV, CUDA_VISIBLE_DEVICES="", MMSEARCH_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path / "work"),
                           "--json-out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "no CUDA" in lines[0]
    start = lines.index("| measurement | CPU | GPU | GPU / CPU | against | ratio |")
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        table[cells[0]] = cells[1:]
    names = list(table)
    assert any(n.startswith("image tower alone") for n in names)
    assert any(n.startswith("naive loop") for n in names)
    assert any(n.startswith("mmsearch Engine.add") for n in names)
    assert any(n.startswith("clip-retrieval") for n in names)
    assert any(n.startswith("mmsearch --runner ray") for n in names)
    assert sum(n.startswith("FAISS Flat") for n in names) == 4  # two sizes, one query and batches
    for name, (cpu, gpu, *_) in table.items():
        if name.startswith("clip-retrieval"):
            assert gpu == "2,500.0 img/s" and cpu == "-"
        elif name.startswith("mmsearch --runner ray"):
            assert gpu == "no CUDA"
        else:  # measured on the CPU, not on a GPU this machine lacks
            assert gpu == "no CUDA" and cpu != "-" and float(cpu.split()[0].replace(",", "")) > 0, (name, cpu)
    data = json.loads(out.read_text())
    assert data["cuda"] is False and data["gpu"] is None
    assert [f["n"] for f in data["faiss"]] == [2000, 10000] and all("gpu" not in f for f in data["faiss"])
    assert len(data["rows"]) == len(table)
