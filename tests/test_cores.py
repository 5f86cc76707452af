"""Default thread count: physical cores (SMT siblings once), among the CPUs the process may use, split per session."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from rerank_runtime import cores
from rerank_runtime.onnx_backend import default_options
from rerank_runtime.providers import Placement


def fake_sysfs(root: Path, topology: dict[int, tuple[int, int]]) -> Path:
    """cpuN/topology/{physical_package_id,core_id} for each logical CPU N -> (package, core)."""
    for cpu, (package, core) in topology.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")
    return root


def test_smt_siblings_count_once(tmp_path: Path) -> None:
    # 2 packages x 2 cores x 2 threads: 8 logical CPUs, 4 physical cores (core ids repeat across packages)
    topo = {cpu: (cpu // 4, (cpu % 4) // 2) for cpu in range(8)}
    sysfs = fake_sysfs(tmp_path, topo)
    assert cores.physical_cores(range(8), sysfs) == 4
    assert cores.physical_cores([0, 1], sysfs) == 1  # an affinity mask holding one core's two threads
    assert cores.physical_cores([0, 2, 4, 6], sysfs) == 4


def test_unreadable_topology_counts_every_usable_cpu(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, {0: (0, 0)})
    assert cores.physical_cores([0, 1, 2], sysfs) == 3  # cpu1's topology is missing


def test_default_threads_split_between_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "physical_cores", lambda: 6)
    assert [cores.default_threads(n) for n in (1, 2, 4, 12)] == [6, 3, 1, 1]


def test_this_machine_has_at_least_one_core_and_no_more_than_cpus() -> None:
    n = cores.physical_cores()
    assert 1 <= n <= len(cores.usable_cpus())


def test_cpu_sessions_default_to_physical_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cores, "physical_cores", lambda: 5)
    placement = Placement("cpu", "cpu", 0, (("CPUExecutionProvider", {}),))
    assert default_options(ort, placement).intra_op_num_threads == 5
    assert default_options(ort, placement, share=2).intra_op_num_threads == 2  # two sessions side by side
