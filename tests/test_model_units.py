"""Focused unit tests of the model core: free_pgd_range floor/ceiling rounding, VMA merge rules, rmap arithmetic
and deferred-split decisions, the folio split's zero-page remap, error returns per syscall, determinism, exit
leaving nothing behind, and every arch profile running a small trace with invariants on."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import pytest

from thpsim.model import memory
from thpsim.model.arch import ARCHES
from thpsim.model.engine import make_kernel, run_model
from thpsim.model.folio import Folio
from thpsim.model.page_alloc import FailPolicy
from thpsim.model.vma import VM_READ, VM_WRITE, Vma, can_merge
from thpsim.observation import to_dict
from thpsim.trace.format import ARENA_BASE, dumps_op, load, parse

M, G = 1 << 20, 1 << 30
A = ARENA_BASE
SCEN = os.path.join(os.path.dirname(__file__), os.pardir, "scenarios")


def trace(ops: list[dict[str, Any]]) -> Any:
    return parse("\n".join([json.dumps({"thpsim": 1, "name": "u"}), *(json.dumps(o) for o in ops)]), source="u")


def run(ops: list[dict[str, Any]], **kw: Any) -> Any:
    r = run_model(trace(ops), check=True, shadow=True, **kw)
    if kw.get("design", "upstream") == "upstream":
        assert r.violations == []
    return r


# ---- free_pgd_range -------------------------------------------------------------------------------------------
def _tables(addrs: list[int]) -> tuple[Any, Any]:
    k = make_kernel()
    mm = k.new_mm("t")
    for a in addrs:
        assert k.pmd_alloc(mm, a) and k.pte_alloc(mm, a)
    return k, mm


def _state(mm: Any) -> tuple[int, int, int]:
    return mm.pt.nr_ptes, mm.pt.nr_pmds, mm.pt.nr_puds


def test_free_pgd_range_nothing_around_frees_all_levels() -> None:
    k, mm = _tables([A])
    memory.free_pgd_range(k, mm, A, A + 2 * M, 0, 0)
    assert _state(mm) == (0, 0, 0) and k.vmstat.nr_pagetable_bytes == 0


def test_free_pgd_range_floor_in_same_pmd_keeps_pte_table() -> None:
    k, mm = _tables([A])
    memory.free_pgd_range(k, mm, A + 4096, A + 2 * M, A + 4096, 0)   # prev VMA ends inside the PMD range
    assert _state(mm) == (1, 1, 1)


def test_free_pgd_range_ceiling_in_same_pmd_keeps_pte_table() -> None:
    k, mm = _tables([A])
    memory.free_pgd_range(k, mm, A, A + M, 0, A + M + 4096)          # next VMA starts inside the PMD range
    assert _state(mm) == (1, 1, 1)


def test_free_pgd_range_neighbour_in_next_pmd_frees_pte_keeps_pmd() -> None:
    k, mm = _tables([A, A + 2 * M])
    memory.free_pgd_range(k, mm, A, A + 2 * M, 0, A + 2 * M)
    assert _state(mm) == (1, 1, 1) and mm.pt.slot(A) is None and mm.pt.slot(A + 2 * M) is not None


def test_free_pgd_range_neighbour_in_next_gib_frees_pmd_table_keeps_pud() -> None:
    k, mm = _tables([A, A + G])
    memory.free_pgd_range(k, mm, A, A + 2 * M, 0, A + G)
    assert _state(mm) == (1, 1, 1) and mm.pt.pmd_table_of(A) is None


def test_free_pgd_range_neighbour_far_away_frees_pud_too() -> None:
    k, mm = _tables([A, A + 512 * G])
    memory.free_pgd_range(k, mm, A, A + 2 * M, 0, A + 512 * G)
    assert _state(mm) == (1, 1, 1) and not mm.pt.has_pud_table(A) and mm.pt.has_pud_table(A + 512 * G)


def test_free_pgd_range_floor_one_pmd_below_frees() -> None:
    k, mm = _tables([A, A + 2 * M])
    memory.free_pgd_range(k, mm, A + 2 * M, A + 4 * M, A + 2 * M, 0)   # prev VMA ends exactly at the boundary
    assert mm.pt.slot(A + 2 * M) is None and mm.pt.slot(A) is not None and _state(mm) == (1, 1, 1)


@pytest.mark.parametrize("gap,delta", [("0", 0), ("512K", 0), ("1M", -4)])
def test_munmap_frees_pte_table_only_without_neighbour_in_its_2m(gap: str, delta: int) -> None:
    """A neighbour VMA [4M, 5M); the unmapped 512K VMA starts ``gap`` after it: in the same PMD range the PTE
    table is kept, in the next one it is freed."""
    r = run([{"op": "mmap", "id": "n", "at": "4M", "len": "1M"}, {"op": "write", "id": "n", "len": "4K"},
             {"op": "mmap", "id": "x", "at": f"5M+{gap}", "len": "512K"}, {"op": "write", "id": "x", "len": "4K"},
             {"op": "munmap", "id": "x"}])
    assert r.steps[4].procs[0].vm_pte_kb - r.steps[3].procs[0].vm_pte_kb == delta


# ---- VMA merge rules ------------------------------------------------------------------------------------------
RW = VM_READ | VM_WRITE


def test_can_merge_rules() -> None:
    a = Vma(0, 4096, RW, 0)
    b = Vma(4096, 8192, RW, 1)
    assert can_merge(a, b)
    assert not can_merge(a, Vma(4096, 8192, VM_READ, 1))            # flags differ
    assert not can_merge(a, Vma(4096, 8192, RW, 7))                 # pgoff not contiguous (moved by mremap)
    assert not can_merge(a, Vma(8192, 12288, RW, 2))                # not adjacent
    assert can_merge(Vma(0, 4096, RW, 0, anon_vma=5), Vma(4096, 8192, RW, 1, anon_vma=5))
    assert not can_merge(Vma(0, 4096, RW, 0, anon_vma=5), Vma(4096, 8192, RW, 1, anon_vma=6))
    assert can_merge(Vma(0, 4096, RW, 0), Vma(4096, 8192, RW, 1, anon_vma=6))
    assert not can_merge(Vma(0, 4096, RW, 0), Vma(4096, 8192, RW, 1, anon_vma=6, anon_vma_singular=False))


def test_mmap_adjacent_merges_and_mprotect_back_remerges() -> None:
    r = run([{"op": "mmap", "id": "a", "at": "0", "len": "2M"}, {"op": "mmap", "id": "b", "at": "2M", "len": "2M"},
             {"op": "mprotect", "at": "1M", "len": "4K", "prot": "r"},
             {"op": "mprotect", "at": "1M", "len": "4K", "prot": "rw"}])
    assert len(r.steps[1].procs[0].vmas) == 1
    assert len(r.steps[2].procs[0].vmas) == 3
    assert len(r.steps[3].procs[0].vmas) == 1


def test_merge_after_fork_parent_yes_child_no() -> None:
    """Live-verified on 6.18: after fork the parent's VMA (singular anon_vma chain) merges with a new adjacent
    mapping; the child's (chain holds the parent's anon_vma too: vma_had_uncowed_parents) does not."""
    r = run([{"op": "mmap", "id": "a", "at": "0", "len": "2M"}, {"op": "write", "id": "a", "len": "4K"},
             {"op": "fork", "child": "c"}, {"op": "mmap", "at": "2M", "len": "2M"},
             {"op": "mmap", "proc": "c", "at": "2M", "len": "2M"}])
    s = r.steps[-1]
    assert [(v.start, v.end) for v in s.proc_obs("main").vmas] == [(0, 4 * M)]
    assert [(v.start, v.end) for v in s.proc_obs("c").vmas] == [(0, 2 * M), (2 * M, 4 * M)]


def test_mremap_moved_vma_does_not_merge_with_new_neighbour() -> None:
    r = run([{"op": "mmap", "id": "a", "at": "0", "len": "2M"}, {"op": "write", "id": "a", "len": "4K"},
             {"op": "mmap", "id": "b", "at": "8M", "len": "2M"},
             {"op": "mremap", "id": "a", "new_len": "2M", "flags": ["maymove", "fixed"], "to": "6M"}])
    assert [(v.start, v.end) for v in r.steps[3].procs[0].vmas] == [(6 * M, 8 * M), (8 * M, 10 * M)]


# ---- rmap arithmetic and the deferred-split decision ----------------------------------------------------------
def test_rmap_pmd_then_ptes_counts() -> None:
    k = make_kernel()
    mm = k.new_mm("t")
    f = Folio(1, 9, 512)
    from thpsim.model import rmap
    from thpsim.model.vma import Vma

    rmap.folio_add_new_anon_rmap(k, mm, f, pmd=True, vma=Vma(0, 2 << 20, 0, 0, anon_vma=7, avc=(7,)), addr=0)
    assert f.mapping == 7 and f.index == 0
    assert (f.entire_mapcount, f.nr_pages_mapped, k.vmstat.nr_anon_thps, mm.anon_pages) == (1, 0, 1, 512)
    rmap.folio_add_anon_rmap_ptes(k, mm, f, range(512), count_rss=False)   # a PMD split
    rmap.folio_remove_rmap_pmd(k, mm, f, count_rss=False)
    assert (f.entire_mapcount, f.nr_pages_mapped, k.vmstat.nr_anon_thps, mm.anon_pages) == (0, 512, 0, 512)
    assert not f.partially_mapped and k.vmstat.nr_anon_pages == 512
    rmap.folio_remove_rmap_ptes(k, mm, f, [3, 4])
    assert f.partially_mapped and k.vmstat.events["thp_deferred_split_page"] == 1 and f.nr_pages_mapped == 510
    rmap.folio_remove_rmap_ptes(k, mm, f, [5])
    assert k.vmstat.events["thp_deferred_split_page"] == 1           # only the first time
    rmap.folio_remove_rmap_ptes(k, mm, f, [i for i in range(512) if i not in (3, 4, 5)])
    assert f.freed and mm.anon_pages == 0 and k.vmstat.mthp["nr_anon_partially_mapped"] == 0


def test_no_deferred_split_while_another_mm_pmd_maps_it() -> None:
    """Live-measured (docs/live.md): a partial munmap in the parent while the fork child still PMD-maps the
    folio queues no deferred split; the child's exit (entire mapping gone) does."""
    r = run([{"op": "mmap", "id": "a", "len": "2M"}, {"op": "madvise", "id": "a", "advice": "hugepage"},
             {"op": "write", "id": "a", "len": "4K"}, {"op": "fork", "child": "c"},
             {"op": "munmap", "id": "a", "off": "8K", "len": "4K"}, {"op": "exit", "proc": "c"}])
    assert r.steps[4].counter("thp_split_pmd") == 1 and r.steps[4].counter("thp_deferred_split_page") == 0
    assert r.steps[5].counter("thp_deferred_split_page") == 1


def test_fully_unmapped_pte_mapped_folio_is_freed_not_queued() -> None:
    r = run([{"op": "mmap", "id": "a", "len": "2M"}, {"op": "madvise", "id": "a", "advice": "hugepage"},
             {"op": "write", "id": "a", "len": "4K"}, {"op": "mprotect", "id": "a", "len": "4K", "prot": "r"},
             {"op": "mprotect", "id": "a", "len": "4K", "prot": "rw"}, {"op": "munmap", "id": "a"}])
    k = r.kernel
    assert len(r.steps[4].procs[0].vmas) == 1 and r.steps[4].counter("thp_split_pmd") == 1
    assert r.steps[5].counter("thp_deferred_split_page") == 0
    assert k.vmstat.mthp["nr_anon"] == 0 and k.alloc.pages_in_use == 0 and not k.deferred


# ---- folio split: zero-filled subpages go to the shared zero page ---------------------------------------------
@pytest.mark.parametrize("stride,rss", [("4K", 2048), ("8K", 1024), ("2M", 4)])
def test_folio_split_remaps_zero_subpages(stride: str, rss: int) -> None:
    r = run([{"op": "mmap", "id": "a", "len": "2M"}, {"op": "madvise", "id": "a", "advice": "hugepage"},
             {"op": "write", "id": "a", "stride": stride}, {"op": "madvise", "id": "a", "len": "1M", "advice": "cold"},
             {"op": "read", "id": "a", "stride": "4K"}])
    s = r.steps[3]
    assert s.counter("thp_split_page") == 1
    assert s.procs[0].rss_anon_kb == rss and s.procs[0].vm_pte_kb == 12
    kinds = {x.kind for x in s.procs[0].pagemap}
    assert kinds == ({"pte"} if rss == 2048 else {"pte", "zero"})
    assert r.steps[4].data == run_model(trace([{"op": "mmap", "id": "a", "len": "2M"},
                                               {"op": "write", "id": "a", "stride": stride},
                                               {"op": "read", "id": "a", "stride": "4K"}])).steps[2].data


# ---- error returns --------------------------------------------------------------------------------------------
BASE = [{"op": "mmap", "id": "a", "at": "0", "len": "2M"}]


@pytest.mark.parametrize("op,want", [
    ({"op": "munmap", "at": "4K+1", "len": "4K"}, "EINVAL"),
    ({"op": "munmap", "at": "4K", "len": "0"}, "EINVAL"),
    ({"op": "munmap", "at": "64M", "len": "4K"}, 0),
    ({"op": "mmap", "at": "1M", "len": "2M", "flags": ["fixed_noreplace"]}, "EEXIST"),
    ({"op": "mprotect", "at": "1M", "len": "2M", "prot": "r"}, "ENOMEM"),
    ({"op": "mprotect", "at": "4K+1", "len": "4K", "prot": "r"}, "EINVAL"),
    ({"op": "madvise", "at": "1M", "len": "2M", "advice": "dontneed"}, "ENOMEM"),
    ({"op": "madvise", "at": "8M", "len": "2M", "advice": "hugepage"}, "ENOMEM"),
    ({"op": "madvise", "at": "4K+1", "len": "4K", "advice": "dontneed"}, "EINVAL"),
    ({"op": "madvise", "at": "0", "len": "2M", "advice": "collapse"}, "EINVAL"),
    ({"op": "madvise", "at": "0", "len": "1M", "advice": "collapse"}, "EINVAL"),
    ({"op": "mlock", "at": "1M", "len": "2M"}, "ENOMEM"),
    ({"op": "mremap", "at": "4K+1", "len": "4K", "new_len": "4K"}, "EINVAL"),
    ({"op": "mremap", "at": "0", "len": "2M", "new_len": "0"}, "EINVAL"),
    ({"op": "mremap", "at": "0", "len": "2M", "new_len": "2M", "flags": ["maymove", "fixed"], "to": "1M"}, "EINVAL"),
    ({"op": "mremap", "at": "16M", "len": "2M", "new_len": "4M"}, "EFAULT"),
    ({"op": "read", "at": "4M", "len": "4K"}, "SIGSEGV"),
])
def test_error_returns(op: dict[str, Any], want: int | str) -> None:
    r = run([*BASE, op])
    assert r.steps[1].result == want


def test_error_returns_with_state() -> None:
    r = run([*BASE, {"op": "mlock", "id": "a"}, {"op": "madvise", "id": "a", "advice": "dontneed"},
             {"op": "madvise", "id": "a", "advice": "free"}, {"op": "mprotect", "id": "a", "prot": "none"},
             {"op": "madvise", "id": "a", "advice": "populate_write"}, {"op": "write", "id": "a", "len": "4K"},
             {"op": "mmap", "id": "b", "at": "4M", "len": "2M"}, {"op": "mmap", "id": "c", "at": "6M", "len": "2M"},
             {"op": "mremap", "id": "b", "new_len": "4M"}])
    assert [s.result for s in r.steps[2:]] == ["EINVAL", "EINVAL", 0, "EINVAL", "SIGSEGV", 4 * M, 6 * M, "ENOMEM"]


def test_fork_enomem_leaves_no_child() -> None:
    r = run([*BASE, {"op": "write", "id": "a", "len": "4K"}, {"op": "fork", "child": "c"}],
            policy=FailPolicy(persistent_site="__pte_alloc"))
    # the write itself cannot get a PTE table (OOM after retries), so fork has nothing to copy: it succeeds
    assert r.steps[1].result == "LIVELOCK" and r.steps[2].result == 0
    r = run([*BASE, {"op": "write", "id": "a", "len": "4K"}, {"op": "fork", "child": "c"}],
            policy=FailPolicy(fail_site="__pmd_alloc", fail_nth=2))
    assert r.steps[2].result == "ENOMEM" and [p.proc for p in r.steps[2].procs] == ["main"]


# ---- determinism and exit -------------------------------------------------------------------------------------
SCENARIOS = sorted(glob.glob(os.path.join(SCEN, "*.jsonl")))


@pytest.mark.skipif(not SCENARIOS, reason="no scenarios/ directory")
def test_determinism_same_trace_twice() -> None:
    for p in SCENARIOS[::7]:
        t = load(p)
        a = [to_dict(s) for s in run_model(t, check=True, shadow=True).steps]
        b = [to_dict(s) for s in run_model(t, check=True, shadow=True).steps]
        assert a == b, p
        pol = FailPolicy(probability=0.3, seed=11)
        a = [to_dict(s) for s in run_model(t, design="lazy", policy=pol).steps]
        b = [to_dict(s) for s in run_model(t, design="lazy", policy=pol).steps]
        assert a == b, p


@pytest.mark.skipif(not SCENARIOS, reason="no scenarios/ directory")
@pytest.mark.parametrize("design", ["upstream", "lazy"])
def test_exit_leaves_all_counters_zero(design: str) -> None:
    for p in SCENARIOS:
        t = load(p)
        text = "\n".join([json.dumps({"thpsim": 1, "name": "x"}), *(dumps_op(o) for o in t.ops)])
        if not t.ops or t.ops[-1].kind != "exit" or t.ops[-1].proc != "main":
            text += "\n" + json.dumps({"op": "exit"})
        r = run_model(parse(text, source=p), design=design, knobs=None, check=True)
        k = r.kernel
        assert k is not None
        assert r.steps[-1].procs == ()
        assert all(not mm.alive and mm.pt.pgtables_bytes == 0 and mm.anon_pages == 0 and mm.swap_ents == 0
                   and mm.locked_vm == 0 for mm in k.procs.values()), p
        assert k.vmstat.nr_anon_thps == 0 and k.vmstat.nr_anon_pages == 0 and k.vmstat.nr_pagetable_bytes == 0, p
        assert k.vmstat.mthp["nr_anon"] == 0 and k.vmstat.mthp["nr_anon_partially_mapped"] == 0, p
        zero = k.nr if k.huge_zero_allocated and not k.knobs.huge_zero_allocated else 0
        assert k.alloc.pages_in_use == zero, p


# ---- arch profiles --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(ARCHES))
@pytest.mark.parametrize("design", ["upstream", "lazy"])
def test_arch_profiles_small_trace(arch: str, design: str) -> None:
    a = ARCHES[arch]
    pmd, page = a.pmd_size, a.page_size
    ops = [{"op": "mmap", "id": "a", "len": 2 * pmd}, {"op": "madvise", "id": "a", "advice": "hugepage"},
           {"op": "write", "id": "a", "len": page}, {"op": "read", "id": "a", "off": pmd, "len": page},
           {"op": "munmap", "id": "a", "off": page, "len": page}, {"op": "fork", "child": "c"},
           {"op": "write", "proc": "c", "id": "a", "off": pmd, "len": page}, {"op": "exit", "proc": "c"},
           {"op": "madvise", "id": "a", "off": pmd, "len": pmd, "advice": "dontneed"}, {"op": "exit"}]
    r = run_model(trace(ops), design=design, arch=arch, check=True, shadow=True)
    deposit = design == "upstream" or a.needs_pgtable_deposit
    # VmPTE is pgtables_bytes >> 10 (ppc64 tables are smaller than 1 kB)
    # the PUD table is the trace's own unless the arena shares its top-level entry with the program text
    # (arm64 16K/64K: 128/256 TiB per entry; pgtable.PageTables.preexisting_pud)
    pud = 0 if a.p4d_size > ARENA_BASE else a.pud_table_bytes
    thp = (a.pte_table_bytes if deposit else 0) + a.pmd_table_bytes + pud
    assert r.steps[2].procs[0].vm_pte_kb == thp >> 10
    zero = thp + (a.pte_table_bytes if deposit else 0)          # + the huge zero PMD's deposit
    assert r.steps[3].procs[0].vm_pte_kb == zero >> 10
    # the split (munmap of one page) never changes the byte count upstream; lazy allocates the table now
    assert r.steps[4].procs[0].vm_pte_kb == (zero + (0 if deposit else a.pte_table_bytes)) >> 10
    assert r.steps[-1].procs == ()


# ---- regressions for bugs found while writing these tests -----------------------------------------------------
def test_shadow_mremap_fixed_replaces_destination_contents() -> None:
    """Found by test_hypothesis: MREMAP_FIXED onto a written page left the shadow expecting the old data."""
    r = run([{"op": "mmap", "id": "d", "at": "1G+2M", "len": "2M"}, {"op": "madvise", "id": "d", "advice": "hugepage"},
             {"op": "write", "id": "d", "off": "4K", "len": "4K", "fill": True, "byte": 48},
             {"op": "mmap", "id": "s", "at": "16M", "len": "2M"},
             {"op": "mremap", "id": "s", "len": "1M", "new_len": "1M", "flags": ["maymove", "fixed"], "to": "1G+2M"}])
    assert r.steps[-1].result == G + 2 * M and r.violations == []


def test_shadow_madvise_dontneed_with_hole_still_zaps_mapped_part() -> None:
    """scenarios/error-madvise-hole: ENOMEM for the hole, but the mapped part was zapped (no shadow report)."""
    r = run([{"op": "mmap", "id": "a", "at": "0", "len": "2M"}, {"op": "write", "id": "a", "stride": "4K"},
             {"op": "madvise", "at": "1M", "len": "2M", "advice": "dontneed"}, {"op": "read", "id": "a"}])
    assert r.steps[2].result == "ENOMEM" and r.steps[2].procs[0].rss_anon_kb == 1024 and r.violations == []


def test_op_of_process_whose_fork_failed_is_not_run() -> None:
    r = run([{"op": "mmap", "id": "a", "at": "0", "len": "2M"}, {"op": "write", "id": "a", "len": "4K"},
             {"op": "fork", "child": "c"}, {"op": "write", "proc": "c", "id": "a", "len": "4K"}],
            policy=FailPolicy(fail_site="__pmd_alloc", fail_nth=2))
    assert r.steps[2].result == "ENOMEM" and r.steps[3].result is None and "does not exist" in r.steps[3].notes[0]
