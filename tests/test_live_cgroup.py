"""The trace's own THP events: a memory cgroup per live run (thpsim.live.cgroup), and what the diff's retry
policy does with counters counted there (analysis.diff) — they are the trace's, never host noise."""

from __future__ import annotations

from pathlib import Path

import pytest

from thpsim.analysis.diff import _disturbed, diff_steps
from thpsim.engines import ModelEngine
from thpsim.errors import ThpsimError
from thpsim.lab.guest import guest_unavailable
from thpsim.live.cgroup import CGROUP_THP_EVENTS, RunCgroup
from thpsim.observation import StepObs
from thpsim.trace.format import load

ROOT = Path(__file__).resolve().parents[1]


def test_a_garbled_memory_stat_is_a_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "memory.stat").write_text("anon 0\nthp_fault_alloc 3\n")
    assert RunCgroup(str(tmp_path)).counters() == {"thp_fault_alloc": 3}
    (tmp_path / "memory.stat").write_text("anon 0\nthp_fault_alloc\n")
    with pytest.raises(ThpsimError, match=r"memory.stat is garbled: cannot read line 'thp_fault_alloc'"):
        RunCgroup(str(tmp_path)).counters()


def test_no_cgroup_without_a_v2_memory_controller(tmp_path):
    mounts = tmp_path / "mounts"
    own = tmp_path / "cgroup"
    own.write_text("0::/\n")
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert RunCgroup.create(1, "t", mounts=str(mounts), self_cgroup=str(own)) == (None, "no cgroup v2 hierarchy")
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("cpu io\n")
    mounts.write_text(f"cgroup2 {root} cgroup2 rw 0 0\n")
    cg, why = RunCgroup.create(1, "t", mounts=str(mounts), self_cgroup=str(own))
    assert cg is None and "memory controller is not enabled" in why
    # enabled, but the new directory is not a cgroup (no memory.stat appears): refused, and removed again
    (root / "cgroup.subtree_control").write_text("cpu memory\n")
    cg, why = RunCgroup.create(1, "t", mounts=str(mounts), self_cgroup=str(own))
    assert cg is None and "cannot use" in why


def _step(vm: dict[str, int], own: tuple[str, ...] = ()) -> StepObs:
    return StepObs(step=0, line=1, op="main: write", proc="main", result=0, vmstat=tuple(sorted(vm.items())),
                   own_counters=own)


def test_a_difference_in_a_host_wide_counter_is_retried_one_in_the_runs_own_cgroup_is_not():
    model = [_step({"thp_fault_alloc": 1})]
    host_wide = diff_steps(model, [_step({"thp_fault_alloc": 2})])
    own = diff_steps(model, [_step({"thp_fault_alloc": 2}, ("thp_fault_alloc",))])
    assert not host_wide.identical and not own.identical
    assert _disturbed(host_wide)          # another process may have faulted a THP: observe again
    assert not _disturbed(own)            # counted for the trace's processes only: a real difference


def test_run_summary_is_computed_from_observations_alone():
    t = load(str(ROOT / "scenarios" / "fault-thp-2m.jsonl"))
    run = ModelEngine().run({"t": t}).get("t")
    s = run.summary
    assert s.steps == len(t.ops) and dict(s.counters).get("thp_fault_alloc") == 1
    # the VmPTE the observations show is the model's own page-table count (12 kB: PUD + PMD tables + deposit)
    assert run.model is not None and s.peak_vm_pte_kb == 12 and s.peak_vm_pte_kb * 1024 == run.model.peak_pgtables_bytes
    assert s.final_vm_pte_kb * 1024 == run.model.final_pgtables_bytes


def _guest_skip() -> str | None:
    return guest_unavailable("debian-7.3")


@pytest.mark.slow
@pytest.mark.skipif(bool(_guest_skip()), reason=str(_guest_skip()))
def test_a_guest_run_counts_its_thp_faults_in_its_own_cgroup():
    from thpsim.engines import LiveEngine
    from thpsim.lab.guest import GuestConfig

    path = str(ROOT / "scenarios" / "fault-thp-4m.jsonl")
    t = load(path)
    live = LiveEngine("debian-7.3", GuestConfig(cpus=1)).run({path: t})
    run = live.get(path)
    assert run.error is None and run.steps
    own = set(run.steps[0].own_counters)
    assert {"thp_fault_alloc", "thp_collapse_alloc"} <= own <= set(CGROUP_THP_EVENTS)
    assert live.env is not None
    model = ModelEngine.like(live.env, "upstream").run({path: t}).get(path)
    assert dict(run.summary.counters).get("thp_fault_alloc") == dict(model.summary.counters)["thp_fault_alloc"] == 2
