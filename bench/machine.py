"""What a benchmark ran on, and how busy the machine was meanwhile.

The machine is shared (other tenants run test suites on the same two cores),
so a run records, beside its figures: the CPU model, cores and memory; the
load average sampled through the run; and the CPU time the rest of the
machine used while it ran (all busy CPU time, less this process's and its
reaped children's, which include the servers, h2load and the child
benchmarks), as an average number of cores taken by others.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil

_SAMPLE_S = 5.0


def describe() -> dict[str, str | int | float]:
    """CPU model, cores, memory, kernel and tool versions."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _version(["node", "--version"]),
        "h2load": _version(["h2load", "--version"]),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "absent"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "unknown"


def _busy_s() -> float:
    times = psutil.cpu_times()
    return float(sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")))


def _own_s() -> float:
    mine = os.times()
    return mine.user + mine.system + mine.children_user + mine.children_system


@dataclass
class Load:
    """Load samples taken while a run goes on: use it as a context manager around the run."""

    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, 1-minute load)
    others_cores: float = float("nan")  # cores used on average by processes other than this run's
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _began: tuple[float, float, float] = (0.0, 0.0, 0.0)  # wall clock, busy CPU s, own CPU s

    def __enter__(self) -> Load:
        self._began = (time.monotonic(), _busy_s(), _own_s())
        self._thread = threading.Thread(target=self._sample, name="load-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_SAMPLE_S + 1)
        wall = time.monotonic() - self._began[0]
        others = (_busy_s() - self._began[1]) - (_own_s() - self._began[2])
        self.others_cores = max(others, 0.0) / wall if wall > 0 else float("nan")

    def _sample(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._began[0], os.getloadavg()[0]))
            if self._stop.wait(_SAMPLE_S):
                return

    def summary(self) -> str:
        """One line: the 1-minute load average's median and range, and the cores others used."""
        loads = [load for _, load in self.samples] or [float("nan")]
        return (
            f"1-minute load average {statistics.median(loads):.2f} (min {min(loads):.2f}, max {max(loads):.2f}); "
            f"other processes used {self.others_cores:.2f} cores on average"
        )

    def as_dict(self) -> dict[str, object]:
        return {"samples": self.samples, "others_cores": self.others_cores, "summary": self.summary()}
