"""The worked examples A–J (spec upstream.md §9.3) and the modelling checklist items 1–24 as unit tests on the
model (upstream design, x86_64): deltas of VmPTE, RssAnon, AnonHugePages, thp_* counters and page-map runs.

Every run has invariants (check=True) and shadow memory (shadow=True) on. Where the live kernel (6.18, this
machine; docs/live.md "Findings") contradicts the spec, the test asserts the live-measured behaviour and says so.
Unless a test says otherwise a "warm" THP at arena offset 0 makes the arena's PUD and PMD tables exist, so that the
deltas are the spec's "the PUD/PMD tables already exist" numbers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from thpsim.model.engine import ModelRun, run_model
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy
from thpsim.observation import ProcObs, StepObs
from thpsim.trace.format import parse

THP = 2048  # kB
WARM = [{"op": "mmap", "id": "w", "at": "0", "len": "2M"},
        {"op": "madvise", "id": "w", "advice": "hugepage"},
        {"op": "write", "id": "w", "len": "4K"}]


def thp_region(rid: str = "a", at: str = "4M", length: str = "2M", fill: bool = False) -> list[dict[str, Any]]:
    w: dict[str, Any] = {"op": "write", "id": rid, "stride": "4K"}
    if fill:
        w = {"op": "write", "id": rid, "fill": True}
    return [{"op": "mmap", "id": rid, "at": at, "len": length},
            {"op": "madvise", "id": rid, "advice": "hugepage"}, w]


def run(ops: list[dict[str, Any]], *, design: str = "upstream", knobs: Knobs | None = None,
        policy: FailPolicy | None = None) -> ModelRun:
    text = "\n".join([json.dumps({"thpsim": 1, "name": "t"}), *(json.dumps(o) for o in ops)])
    r = run_model(parse(text, source="test"), design=design, knobs=knobs, policy=policy, check=True, shadow=True)
    assert r.violations == [], r.violations
    return r


def P(s: StepObs, proc: str = "main") -> ProcObs:
    p = s.proc_obs(proc)
    assert p is not None, f"no process {proc} in step {s.step}"
    return p


def ahp(s: StepObs, proc: str = "main") -> int:
    return P(s, proc).rollup()["anon_huge_kb"]


def mi(s: StepObs, name: str) -> int:
    return dict(s.meminfo).get(name, 0)


def d(r: ModelRun, i: int, f: str, proc: str = "main") -> int:
    """Delta of a per-process field (vm_pte_kb, rss_anon_kb, ...) over step i."""
    return getattr(P(r.steps[i], proc), f) - getattr(P(r.steps[i - 1], proc), f)


def dc(r: ModelRun, i: int, name: str) -> int:
    """Delta of a vmstat counter over step i."""
    return r.steps[i].counter(name) - r.steps[i - 1].counter(name)


def runs(s: StepObs, proc: str = "main") -> list[tuple[int, int, str]]:
    return [(x.start, x.end, x.kind) for x in P(s, proc).pagemap]


M = 1 << 20


# ---- §9.3 worked examples -------------------------------------------------------------------------------------
def test_A_thp_write_fault() -> None:
    r = run(WARM + thp_region(fill=False)[:2] + [{"op": "write", "id": "a", "len": "4K"}])
    i = len(r.steps) - 1
    s = r.steps[i]
    assert d(r, i, "vm_pte_kb") == 4
    assert d(r, i, "rss_anon_kb") == THP
    assert ahp(s) - ahp(r.steps[i - 1]) == THP
    assert mi(s, "AnonHugePages") - mi(r.steps[i - 1], "AnonHugePages") == THP
    assert mi(s, "PageTables") - mi(r.steps[i - 1], "PageTables") == 4
    assert dc(r, i, "thp_fault_alloc") == 1
    assert (4 * M, 6 * M, "pmd") in runs(s)
    assert r.kernel is not None and r.kernel.vmstat.mthp["anon_fault_alloc"] == 2
    assert r.kernel.vmstat.mthp["nr_anon"] == 2


def test_A_first_thp_in_fresh_region_adds_pud_and_pmd_table() -> None:
    """Checklist 2: the first THP fault in a fresh 1 GiB (and 512 GiB) region: PUD + PMD + deposit = 12 kB."""
    r = run(thp_region(at="0"))
    assert d(r, 2, "vm_pte_kb") == 12
    assert mi(r.steps[2], "PageTables") == 12


def test_B_huge_zero_read_then_write() -> None:
    r = run(WARM + thp_region()[:2] + [{"op": "read", "id": "a", "len": "4K"},
                                       {"op": "write", "id": "a", "len": "4K"}])
    i = len(r.steps) - 2
    s = r.steps[i]
    assert d(r, i, "vm_pte_kb") == 4 and d(r, i, "rss_anon_kb") == 0
    assert ahp(s) == THP   # only the warm THP
    assert dc(r, i, "thp_zero_page_alloc") == 1   # first use system-wide (knobs.huge_zero_allocated=False)
    assert (4 * M, 6 * M, "pmd_zero") in runs(s)
    # the write gets a THP that reuses the zero PMD's deposit
    assert d(r, i + 1, "vm_pte_kb") == 0 and d(r, i + 1, "rss_anon_kb") == THP
    assert dc(r, i + 1, "thp_fault_alloc") == 1
    assert (4 * M, 6 * M, "pmd") in runs(r.steps[i + 1])


def test_B_write_to_huge_zero_when_thp_allocation_fails() -> None:
    r = run(WARM + thp_region()[:2] + [{"op": "read", "id": "a", "len": "4K"},
                                       {"op": "write", "id": "a", "len": "4K"}],
            policy=FailPolicy(persistent_site="folio@thp_fault"))
    # the warm THP itself fell back too (the site fails persistently): look only at the last step
    i = len(r.steps) - 1
    assert dc(r, i, "thp_fault_fallback") == 1
    assert dc(r, i, "thp_split_pmd") == 1
    assert d(r, i, "rss_anon_kb") == 4 and d(r, i, "vm_pte_kb") == 0
    kinds = {k for _s, _e, k in runs(r.steps[i]) if _s >= 4 * M}
    assert kinds == {"pte", "zero"}


def test_C_munmap_upper_half_then_deferred_split() -> None:
    r = run(WARM + thp_region() + [{"op": "munmap", "id": "a", "off": "1M", "len": "1M"},
                                   {"op": "shrink_deferred"}])
    i = len(r.steps) - 2
    s = r.steps[i]
    assert dc(r, i, "thp_split_pmd") == 1
    assert ahp(s) - ahp(r.steps[i - 1]) == -THP
    assert d(r, i, "rss_anon_kb") == -1024
    assert dc(r, i, "thp_deferred_split_page") == 1
    assert d(r, i, "vm_pte_kb") == 0          # floor S+1M rounds up: the table stays
    k = r.kernel
    assert k is not None
    assert k.vmstat.mthp["split_deferred"] == 1
    # ... the whole 2 MiB stays allocated until the shrinker runs
    sh = r.steps[i + 1]
    assert sh.counter("thp_split_page") - s.counter("thp_split_page") == 1
    assert k.vmstat.mthp["split"] == 1 and k.vmstat.mthp["nr_anon"] == 1   # only the warm THP is left
    assert k.vmstat.mthp["nr_anon_partially_mapped"] == 0
    assert d(r, i + 1, "rss_anon_kb") == 0


def test_C_folio_stays_allocated_until_shrinker() -> None:
    ops = WARM + thp_region() + [{"op": "munmap", "id": "a", "off": "1M", "len": "1M"}]
    r = run(ops)
    before = run(WARM + thp_region()).kernel
    assert r.kernel is not None and before is not None
    assert r.kernel.alloc.pages_in_use == before.alloc.pages_in_use   # 512 pages still allocated
    r2 = run([*ops, {"op": "shrink_deferred"}])
    assert r2.kernel is not None
    assert r2.kernel.alloc.pages_in_use == before.alloc.pages_in_use - 256


@pytest.mark.parametrize("how", ["munmap", "dontneed"])
def test_D_full_aligned_2m(how: str) -> None:
    op = ({"op": "munmap", "id": "a"} if how == "munmap" else
          {"op": "madvise", "id": "a", "advice": "dontneed"})
    r = run(WARM + thp_region() + [op])
    i = len(r.steps) - 1
    assert d(r, i, "vm_pte_kb") == -4 and d(r, i, "rss_anon_kb") == -THP
    assert mi(r.steps[i], "PageTables") - mi(r.steps[i - 1], "PageTables") == -4
    assert mi(r.steps[i], "AnonHugePages") - mi(r.steps[i - 1], "AnonHugePages") == -THP
    assert dc(r, i, "thp_split_pmd") == 0


def test_D_munmap_last_vma_frees_pmd_and_pud_tables() -> None:
    r = run([*thp_region(at="0"), {"op": "munmap", "id": "a"}])
    assert d(r, 3, "vm_pte_kb") == -12 and P(r.steps[3]).vm_pte_kb == 0


def test_E_dontneed_first_4k() -> None:
    r = run(WARM + thp_region() + [{"op": "madvise", "id": "a", "len": "4K", "advice": "dontneed"}])
    i = len(r.steps) - 1
    assert dc(r, i, "thp_split_pmd") == 1
    assert d(r, i, "rss_anon_kb") == -4 and d(r, i, "vm_pte_kb") == 0
    assert ahp(r.steps[i]) - ahp(r.steps[i - 1]) == -THP
    assert dc(r, i, "thp_deferred_split_page") == 1


def test_F_mprotect_first_4k() -> None:
    r = run(WARM + thp_region() + [{"op": "mprotect", "id": "a", "len": "4K", "prot": "r"}])
    i = len(r.steps) - 1
    assert dc(r, i, "thp_split_pmd") == 1
    assert ahp(r.steps[i]) - ahp(r.steps[i - 1]) == -THP
    assert d(r, i, "rss_anon_kb") == 0 and d(r, i, "vm_pte_kb") == 0
    assert dc(r, i, "thp_deferred_split_page") == 0
    assert [v.perms for v in P(r.steps[i]).vmas][1:] == ["r--p", "rw-p"]


def test_G_fork_then_child_and_parent_write() -> None:
    r = run(WARM + [
        {"op": "fork", "child": "c"},
        {"op": "write", "proc": "c", "id": "w", "len": "4K", "byte": 1},
        {"op": "write", "id": "w", "len": "4K", "byte": 2}])
    f = r.steps[3]
    c = P(f, "c")
    assert c.vm_pte_kb == 12 and c.rss_anon_kb == THP and c.rollup()["anon_huge_kb"] == THP
    assert mi(f, "AnonHugePages") == mi(r.steps[2], "AnonHugePages") == THP   # one folio
    cw = r.steps[4]
    assert dc(r, 4, "thp_split_pmd") == 1
    assert d(r, 4, "rss_anon_kb", "c") == 0 and P(cw, "c").rollup()["anon_huge_kb"] == 0
    assert dc(r, 4, "thp_deferred_split_page") == 0
    assert dc(r, 5, "thp_split_pmd") == 1           # still shared: the parent's PMD is split too
    assert d(r, 5, "rss_anon_kb") == 0


def test_H_madv_collapse_of_pte_mapped_pages() -> None:
    r = run(WARM + [{"op": "mmap", "id": "a", "at": "4M", "len": "2M"},
                    {"op": "write", "id": "a", "stride": "8K"},
                    {"op": "madvise", "id": "a", "advice": "collapse"}])
    i = len(r.steps) - 1
    assert r.steps[i].result == 0
    assert dc(r, i, "thp_collapse_alloc") == 1
    assert ahp(r.steps[i]) - ahp(r.steps[i - 1]) == THP
    assert d(r, i, "vm_pte_kb") == 0
    assert d(r, i, "rss_anon_kb") == 256 * 4    # 256 none PTEs filled
    assert (4 * M, 6 * M, "pmd") in runs(r.steps[i])


def test_H_khugepaged_collapse() -> None:
    r = run(WARM + [{"op": "mmap", "id": "a", "at": "4M", "len": "2M"},
                    {"op": "write", "id": "a", "stride": "4K"},
                    {"op": "madvise", "id": "a", "advice": "hugepage"},
                    {"op": "khugepaged"}])
    i = len(r.steps) - 1
    assert r.steps[i].result == 1
    assert dc(r, i, "thp_collapse_alloc") == 1
    assert d(r, i, "vm_pte_kb") == 0 and d(r, i, "rss_anon_kb") == 0


def test_I_mremap_aligned_to_other_pmd_table() -> None:
    r = run(WARM + thp_region() + [{"op": "mremap", "id": "a", "new_len": "2M", "flags": ["maymove", "fixed"],
                                    "to": "1G"}])
    i = len(r.steps) - 1
    assert r.steps[i].result == 1 << 30
    assert dc(r, i, "thp_split_pmd") == 0
    assert d(r, i, "vm_pte_kb") == 4     # the new PMD table only: the deposit moved with the PMD
    assert ((1 << 30), (1 << 30) + 2 * M, "pmd") in runs(r.steps[i])
    k = r.kernel
    assert k is not None
    assert k.procs["main"].pt.pmd_table_of((1 << 30) + 0x2000_0000_0000).deposits == 1


def test_I_mremap_misaligned_destination_splits() -> None:
    r = run(WARM + thp_region() + [{"op": "mremap", "id": "a", "new_len": "2M", "flags": ["maymove", "fixed"],
                                    "to": "8M+4K"}])
    i = len(r.steps) - 1
    assert dc(r, i, "thp_split_pmd") == 1
    # source: the ex-deposit is freed by free_pgtables (its 2M range is empty): -4;
    # destination: two new PTE tables (the 2M straddles two PMD slots): +8
    assert d(r, i, "vm_pte_kb") == 4
    assert d(r, i, "rss_anon_kb") == 0


def test_J_pageout_full_thp_with_swap() -> None:
    r = run(WARM + thp_region() + [{"op": "madvise", "id": "a", "advice": "pageout"}], knobs=Knobs(swap=True))
    i = len(r.steps) - 1
    assert dc(r, i, "thp_split_pmd") == 1
    assert dc(r, i, "thp_swpout") == 1
    assert d(r, i, "vm_pte_kb") == 0
    assert d(r, i, "rss_anon_kb") == -THP and d(r, i, "vm_swap_kb") == THP
    assert (4 * M, 6 * M, "swap") in runs(r.steps[i])
    assert r.kernel is not None and r.kernel.vmstat.mthp["swpout"] == 1


def test_J_pageout_full_thp_without_swap_keeps_pages() -> None:
    """No swap device (this machine): reclaim cannot swap, the THP is split (thp_swpout_fallback) and kept."""
    r = run(WARM + thp_region() + [{"op": "madvise", "id": "a", "advice": "pageout"}])
    i = len(r.steps) - 1
    assert dc(r, i, "thp_swpout") == 0 and dc(r, i, "thp_swpout_fallback") == 1
    assert dc(r, i, "thp_split_page") == 1
    assert d(r, i, "rss_anon_kb") == 0 and d(r, i, "vm_pte_kb") == 0


# ---- checklist items not already covered by the examples ------------------------------------------------------
def test_item1_pgtables_bytes_formula_and_exit() -> None:
    r = run([*thp_region(at="0"), *thp_region("b", at="1G+2M"), {"op": "exit"}])
    k = r.kernel
    assert k is not None
    pt = k.procs["main"].pt
    s = r.steps[5]
    # 2 deposits + 2 PMD tables + 1 PUD table
    assert P(s).vm_pte_kb == (2 + 2 + 1) * 4
    assert pt.pgtables_bytes == 0 and r.steps[-1].procs == ()


def test_item3_one_deposit_per_huge_pmd() -> None:
    r = run([*thp_region(at="0", length="6M"), {"op": "read", "at": "8M", "len": "4K"}][:3]
            + [{"op": "mmap", "id": "z", "at": "8M", "len": "2M"}, {"op": "madvise", "id": "z", "advice": "hugepage"},
               {"op": "read", "id": "z", "len": "4K"}])
    k = r.kernel
    assert k is not None
    pt = k.procs["main"].pt
    assert pt.pmd_table_of(0x2000_0000_0000).deposits == 4   # 3 THPs + 1 huge zero PMD
    assert pt.nr_ptes == 4


def test_item4_fork_of_huge_zero_pmd() -> None:
    r = run(WARM + thp_region()[:2] + [{"op": "read", "id": "a", "len": "4K"}, {"op": "fork", "child": "c"}])
    c = P(r.steps[-1], "c")
    # 2 deposits (THP + zero PMD) + PMD + PUD table; RSS only for the THP
    assert c.vm_pte_kb == 16 and c.rss_anon_kb == THP


def test_item6_lazyfree_pageout_discard_after_pmd_split() -> None:
    """Live-measured (docs/live.md, scenario free-then-pageout-discard): MADV_PAGEOUT of a clean lazyfree PMD THP
    splits the PMD (thp_split_pmd +1) and discards the PTEs; VmPTE is unchanged (the ex-deposit stays as an
    empty PTE table), RssAnon -2048. The spec's no-split __discard_anon_folio_pmd_locked (VmPTE -4) was not
    what the 6.18 kernel did."""
    r = run(WARM + thp_region(fill=True) + [{"op": "madvise", "id": "a", "advice": "free"},
                                            {"op": "madvise", "id": "a", "advice": "pageout"}])
    i = len(r.steps) - 1
    assert P(r.steps[i - 1]).rollup()["lazyfree_kb"] == THP
    assert dc(r, i, "thp_split_pmd") == 1
    assert d(r, i, "vm_pte_kb") == 0 and d(r, i, "rss_anon_kb") == -THP


def test_item7_fork_of_pinned_thp_splits_parent() -> None:
    r = run(WARM + thp_region() + [{"op": "gup", "id": "a", "len": "4K", "flags": ["pin"]},
                                   {"op": "fork", "child": "c"}])
    i = len(r.steps) - 1
    assert r.steps[i].result == 0
    assert dc(r, i, "thp_split_pmd") == 1
    assert d(r, i, "vm_pte_kb") == 0
    c = P(r.steps[i], "c")
    # child: warm THP deposit + PTE table for the copied PTEs + PMD + PUD
    assert c.vm_pte_kb == 16
    assert c.rss_anon_kb == 2 * THP


@pytest.mark.parametrize("pt_reclaim,delta", [(True, -4), (False, 0)])
def test_item10_dontneed_frees_ex_deposit_only_with_pt_reclaim(pt_reclaim: bool, delta: int) -> None:
    r = run(WARM + thp_region() + [{"op": "madvise", "id": "a", "len": "4K", "advice": "dontneed"},
                                   {"op": "madvise", "id": "a", "advice": "dontneed"}],
            knobs=Knobs(pt_reclaim=pt_reclaim))
    i = len(r.steps) - 1
    assert d(r, i, "vm_pte_kb") == delta


def test_item10_pt_reclaim_needs_a_pmd_sized_range_per_vma() -> None:
    """Live-measured (docs/live.md): a 2 MiB MADV_DONTNEED spanning 3 VMAs frees no PTE table (the >= PMD_SIZE
    test applies per VMA chunk)."""
    r = run(WARM + thp_region() + [{"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"},
                                   {"op": "madvise", "id": "a", "advice": "dontneed"}])
    i = len(r.steps) - 1
    assert d(r, i, "vm_pte_kb") == 0 and P(r.steps[i]).rss_anon_kb == THP   # only the warm THP is left


def test_item12_huge_zero_split_keeps_rss_zero() -> None:
    """Partial munmap of a huge-zero PMD (live-measured): thp_split_pmd +1, zero runs, VmPTE unchanged."""
    r = run(WARM + thp_region()[:2] + [{"op": "read", "id": "a", "len": "4K"},
                                       {"op": "munmap", "id": "a", "off": "1M", "len": "4K"}])
    i = len(r.steps) - 1
    assert dc(r, i, "thp_split_pmd") == 1
    assert d(r, i, "vm_pte_kb") == 0 and d(r, i, "rss_anon_kb") == 0
    assert {k for s, _e, k in runs(r.steps[i]) if s >= 4 * M} == {"zero"}


def test_item12_cow_after_split() -> None:
    r = run(WARM + [{"op": "fork", "child": "c"}, {"op": "write", "id": "w", "len": "4K", "byte": 7}])
    assert d(r, 4, "rss_anon_kb") == 0   # -1 shared page, +1 new page


def test_items14_16_smaps_per_mapping_meminfo_once() -> None:
    r = run(WARM + thp_region() + [{"op": "fork", "child": "c"}])
    s = r.steps[-1]
    assert ahp(s) == 2 * THP and ahp(s, "c") == 2 * THP
    assert mi(s, "AnonHugePages") == 2 * THP
    assert [v.anon_huge_kb for v in P(s).vmas] == [THP, THP]


def test_item15_huge_zero_counts_nowhere_but_vmpte() -> None:
    r = run(thp_region(at="0")[:2] + [{"op": "read", "id": "a", "len": "4K"}])
    p = P(r.steps[2])
    assert p.vm_pte_kb == 12 and p.rss_anon_kb == 0 and p.vmas[0].rss_kb == 0 and p.vmas[0].anon_huge_kb == 0
    assert mi(r.steps[2], "AnonHugePages") == 0 and mi(r.steps[2], "PageTables") == 12


def test_item17_18_fault_alloc_and_fallback() -> None:
    r = run([{"op": "mmap", "id": "a", "len": "4M"}, {"op": "write", "id": "a", "len": "4K"},
             {"op": "madvise", "id": "a", "advice": "hugepage"}, {"op": "write", "id": "a", "off": "2M", "len": "4K"}])
    assert r.steps[1].counter("thp_fault_fallback") == 0   # not allowed is not a fallback
    assert dc(r, 3, "thp_fault_alloc") == 1
    r = run(thp_region(at="0"), policy=FailPolicy(persistent_site="folio@thp_fault"))
    assert r.steps[2].counter("thp_fault_fallback") == 1 and r.steps[2].counter("thp_fault_alloc") == 0
    assert P(r.steps[2]).rss_anon_kb == THP and {k for _s, _e, k in runs(r.steps[2])} == {"pte"}


@pytest.mark.parametrize("allocated,expected", [(False, 1), (True, 0)])
def test_item19_zero_page_alloc_once(allocated: bool, expected: int) -> None:
    r = run([*thp_region(at="0")[:2], {"op": "read", "id": "a", "len": "4K"},
             {"op": "fork", "child": "c"},
             *thp_region("b", at="4M")[:2], {"op": "read", "id": "b", "len": "4K"}],
            knobs=Knobs(huge_zero_allocated=allocated))
    assert r.steps[-1].counter("thp_zero_page_alloc") == expected


def test_item21_split_page_failed_when_pinned() -> None:
    r = run(WARM + thp_region() + [{"op": "gup", "id": "a", "len": "4K", "flags": ["pin"]},
                                   {"op": "munmap", "id": "a", "off": "1M", "len": "1M"},
                                   {"op": "shrink_deferred"}])
    i = len(r.steps) - 1
    assert dc(r, i, "thp_split_page_failed") == 1 and dc(r, i, "thp_split_page") == 0


def test_item22_deferred_split_counted_once() -> None:
    r = run(WARM + thp_region() + [{"op": "munmap", "id": "a", "off": "1M", "len": "4K"},
                                   {"op": "munmap", "id": "a", "off": "1M+8K", "len": "4K"}])
    assert r.steps[-1].counter("thp_deferred_split_page") == 1
    assert r.kernel is not None and r.kernel.vmstat.mthp["nr_anon_partially_mapped"] == 1


def test_item23_collapse_alloc_failed() -> None:
    r = run(WARM + [{"op": "mmap", "id": "a", "at": "4M", "len": "2M"}, {"op": "write", "id": "a", "stride": "4K"},
                    {"op": "madvise", "id": "a", "advice": "collapse"}],
            policy=FailPolicy(persistent_site="folio@collapse"))
    assert r.steps[-1].result == "ENOMEM" and dc(r, len(r.steps) - 1, "thp_collapse_alloc_failed") == 1


def test_item24_pte_table_failure_in_thp_fault_is_oom_not_fallback() -> None:
    r = run(WARM + thp_region()[:2] + [{"op": "write", "id": "a", "len": "4K"}],
            policy=FailPolicy(persistent_site="pte_alloc_one@fault"))
    # the warm write failed the same way: nothing is mapped anywhere, no fallback was counted
    s = r.steps[-1]
    assert s.result == "LIVELOCK" and s.counter("thp_fault_fallback") == 0 and s.counter("thp_fault_alloc") == 0
    assert P(s).rss_anon_kb == 0


def test_item24_pte_table_failure_in_fork_is_enomem() -> None:
    r = run(WARM + [{"op": "fork", "child": "c"}], policy=FailPolicy(persistent_site="pte_alloc_one@fork"))
    assert r.steps[-1].result == "ENOMEM" and r.steps[-1].proc_obs("c") is None


def test_item24_upstream_split_never_allocates() -> None:
    r = run(WARM + [{"op": "munmap", "id": "w", "off": "4K", "len": "4K"}],
            policy=FailPolicy(persistent_site="pte_alloc_one@split"))
    assert r.steps[-1].result == 0 and r.steps[-1].counter("thp_split_pmd") == 1
    assert r.steps[-1].counter("thp_split_pmd_failed") == 0


# ---- live-measured deviations from the spec -------------------------------------------------------------------
def test_live_partial_madv_free_remaps_zero_subpages() -> None:
    """Live-measured (docs/live.md): a partial MADV_FREE (4 KiB) of a PMD THP splits the folio, and the
    zero-filled subpages are remapped to the shared zero page: RssAnon 2048 -> 4, runs pte + zero."""
    r = run(thp_region(at="0")[:2] + [{"op": "write", "id": "a", "len": "4K"},
                                      {"op": "madvise", "id": "a", "len": "4K", "advice": "free"}])
    s = r.steps[-1]
    assert dc(r, 3, "thp_split_page") == 1 and dc(r, 3, "thp_split_pmd") == 1
    assert P(s).rss_anon_kb == 4
    assert {k for _s, _e, k in runs(s)} == {"pte", "zero"}


def test_live_madv_collapse_of_read_only_data() -> None:
    """Live-measured (scenario collapse-readonly-data): MADV_COLLAPSE collapses 512 written pages in a PROT_READ
    VMA (no writable PTE), which the spec's SCAN_PAGE_RO rule would refuse."""
    r = run(WARM + [{"op": "mmap", "id": "a", "at": "4M", "len": "2M"}, {"op": "write", "id": "a", "stride": "4K"},
                    {"op": "mprotect", "id": "a", "prot": "r"}, {"op": "madvise", "id": "a", "advice": "collapse"}])
    i = len(r.steps) - 1
    assert r.steps[i].result == 0 and dc(r, i, "thp_collapse_alloc") == 1 and d(r, i, "vm_pte_kb") == 0


def test_live_mlock_populates_huge_zero_as_thp() -> None:
    """Live-measured (docs/live.md): mlock of a writable range holding a huge-zero PMD write-faults it into a
    THP (thp_fault_alloc +1, VmPTE unchanged)."""
    r = run(WARM + thp_region()[:2] + [{"op": "read", "id": "a", "len": "4K"}, {"op": "mlock", "id": "a"}])
    i = len(r.steps) - 1
    assert dc(r, i, "thp_fault_alloc") == 1 and d(r, i, "vm_pte_kb") == 0 and d(r, i, "rss_anon_kb") == THP
    assert P(r.steps[i]).vm_lck_kb == THP
