"""How many threads a CPU session gets by default: one per physical core this process may run on.

ONNX Runtime's own default, and os.cpu_count(), count logical CPUs: on an SMT machine two threads then share each
core's FMA units and the matmuls slow down instead of speeding up. A container's CPU affinity is honoured (only the
CPUs this process may run on are counted); a cgroup CPU quota is not a core count and is not read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

SYSFS_CPU = Path("/sys/devices/system/cpu")


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: Iterable[int] | None = None, sysfs: Path = SYSFS_CPU) -> int:
    """Distinct (package, core) pairs among `cpus` (default: usable_cpus()), read from sysfs topology; SMT siblings
    count once. Where the topology cannot be read (not Linux, a restricted /sys), every usable CPU counts."""
    cpus = list(usable_cpus() if cpus is None else cpus)
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_threads(sessions: int = 1) -> int:
    """intra-op threads for each of `sessions` CPU sessions sharing the machine: the physical cores split evenly."""
    return max(1, physical_cores() // max(1, sessions))
