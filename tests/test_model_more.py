"""Swap without THP_SWAP, NR_PAGETABLE per arch for the upper levels, and the diff's recognition of a live
khugepaged collapse that the trace did not cause."""

from __future__ import annotations

from thpsim.analysis.diff import diff_steps
from thpsim.model.engine import run_model
from thpsim.model.knobs import Knobs
from thpsim.observation import ProcObs, StepObs
from thpsim.trace import format as tf

SWAP_TRACE = "\n".join([
    '{"op": "mmap", "id": "a", "len": "2M"}',
    '{"op": "madvise", "id": "a", "advice": "hugepage"}',
    '{"op": "write", "id": "a", "stride": "8K"}',
    '{"op": "madvise", "id": "a", "advice": "pageout"}',
    '{"op": "read", "id": "a", "stride": "8K"}',
])


def test_pageout_with_swap_but_no_thp_swap_splits_then_swaps_order0_pages() -> None:
    r = run_model(tf.parse(SWAP_TRACE), knobs=Knobs(swap=True, thp_swap=False), check=True, shadow=True)
    after = r.steps[3]
    p = after.procs[0]
    assert after.counter("thp_swpout_fallback") == 1 and after.counter("thp_split_page") == 1
    assert after.counter("thp_swpout") == 0
    # 256 written pages swapped one by one; the 256 zero-filled ones went to the zero page at the split
    assert (p.rss_anon_kb, p.vm_swap_kb) == (0, 1024)
    assert {x.kind for x in p.pagemap} == {"swap", "zero"}
    assert r.steps[4].procs[0].rss_anon_kb == 1024 and not r.violations   # swap-in returns the data


def test_pageout_with_thp_swap_swaps_the_thp_whole() -> None:
    r = run_model(tf.parse(SWAP_TRACE), knobs=Knobs(swap=True, thp_swap=True), check=True, shadow=True)
    after = r.steps[3]
    assert after.counter("thp_swpout") == 1 and after.counter("thp_split_page") == 0
    assert after.counter("thp_split_pmd") == 1          # try_to_unmap_one splits the PMD (upstream §9.3 J)
    assert (after.procs[0].rss_anon_kb, after.procs[0].vm_swap_kb) == (0, 2048)


def test_nr_pagetable_counts_whole_pages_of_upper_tables() -> None:
    t = tf.parse('{"op": "mmap", "id": "a", "len": "8K"}\n{"op": "write", "id": "a", "len": "8K"}')
    # arm64-16k: the arena shares its 128 TiB top-level entry with the program text, so its PUD table exists
    # already (PMD table + PTE table only; measured in the arm64-16k lab guest)
    for arch, pt_kb in (("x86_64", 12), ("s390x", 4 + 16 + 16), ("arm64-16k", 16 * 2), ("arm64-64k", 64 * 2)):
        r = run_model(t, arch=arch, check=True)
        assert dict(r.steps[-1].meminfo)["PageTables"] == pt_kb, arch


def _step(i: int, collapse: int, runs: int) -> StepObs:
    return StepObs(step=i, line=i + 1, op="read", proc="main", result=0,
                   procs=(ProcObs(proc="main", vm_pte_kb=runs),),
                   vmstat=(("thp_collapse_alloc", collapse),) if collapse else ())


def test_diff_flags_a_background_khugepaged_collapse() -> None:
    model = [_step(0, 0, 12), _step(1, 0, 12)]
    live = [_step(0, 0, 12), _step(1, 1, 12)]
    d = diff_steps(model, live)
    assert d.background_collapse == 1 and not d.identical and "khugepaged" in d.note
    assert diff_steps(model, model).background_collapse is None


def test_host_noise_flags_only_host_wide_counters() -> None:
    from thpsim.analysis.diff import TraceDiff

    model = [_step(0, 0, 12)]
    noisy_live = [StepObs(step=0, line=1, op="read", proc="main", result=0,
                          procs=(ProcObs(proc="main", vm_pte_kb=12),), vmstat=(("thp_fault_alloc", 3),))]
    d = diff_steps(model, noisy_live)
    flagged = TraceDiff("t", d, None, True, host_noise=(("thp_fault_alloc", 41),))
    assert not flagged.identical and flagged.identical_but_host_noise and "other processes" in flagged.note
    # without evidence that other processes moved the counter it is a plain difference
    assert not TraceDiff("t", d, None, True).identical_but_host_noise
    # a per-process difference is never excused by host noise
    bad_live = [StepObs(step=0, line=1, op="read", proc="main", result=0,
                        procs=(ProcObs(proc="main", vm_pte_kb=16),), vmstat=(("thp_fault_alloc", 3),))]
    bad = TraceDiff("t", diff_steps(model, bad_live), None, True, host_noise=(("thp_fault_alloc", 41),))
    assert not bad.identical_but_host_noise
