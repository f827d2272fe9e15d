"""Small shared pieces of the benchmark scripts: timing child processes, statistics, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ProcessRun:
    seconds: float
    max_rss_mb: float
    user_s: float
    sys_s: float
    returncode: int
    stdout: str
    stderr: str


TIME = "/usr/bin/time"


def run_process(cmd: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
                check: bool = True, replace_env: bool = False) -> ProcessRun:
    """Run ``cmd`` in a new process: wall time, CPU time and the process's own peak RSS.

    Peak RSS comes from GNU time, which forks the command from its own small process. Reading
    it with wait4 here would be wrong: Linux carries the RSS high-water mark of the forking
    process across exec, so a child of a large benchmark process reports the benchmark's size.
    """
    merged = dict(env or {}) if replace_env else dict(os.environ, **(env or {}))
    # A user's installation runs from bytecode caches. A shell that sets this variable (this
    # workplace's does) makes every new mmsearch process compile its ~60 editable modules again
    # (0.35 s a process here), while the peers' and baselines' packages, installed by pip, run
    # from the caches pip wrote: it is dropped, so both sides start alike.
    merged.pop("PYTHONDONTWRITEBYTECODE", None)
    use_time = os.access(TIME, os.X_OK)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        wrapped = [TIME, "-o", stats.name, "-f", "%M %U %S", *map(str, cmd)] if use_time else list(map(str, cmd))
        start = time.perf_counter()
        proc = subprocess.run(wrapped, env=merged, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        fields = stats.read().split()[-3:] if use_time else []
    rss_kb, user, system = (float(f) for f in fields) if len(fields) == 3 else (float("nan"),) * 3
    run = ProcessRun(seconds, rss_kb / 1024.0, user, system, proc.returncode, stdout, stderr)
    if check and run.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {run.returncode}: {stderr.strip()[-2000:]}")
    return run


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    return {"cpus": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_gib, 1), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def quantize_static_qdq(source: Path, target: Path, calibration, ops: tuple[str, ...], batch: int = 8) -> None:
    """Static int8 (QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration)
    of the ONNX image tower ``source`` into ``target``, calibrated on ``calibration`` (uint8
    pixels, the graph's ``pixels`` input): the benchmarks' alternative to onnx_image's dynamic int8."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"pixels": calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(ops),
                    calibrate_method=CalibrationMethod.MinMax)
