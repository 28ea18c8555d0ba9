"""The lazy PTE-table series (spec series.md, "Modelling checklist" rows 1-38): one test per row.

Every failure outcome is reached by fault injection (``FailPolicy``) on the model with invariants checked after
every step and shadow memory checking the data contracts. Each test fails if the modelled behaviour changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from thpsim.analysis import review
from thpsim.analysis.selftest import run_selftests
from thpsim.model.arch import ARCHES
from thpsim.model.design import get_design
from thpsim.model.engine import ModelRun, make_kernel, run_model
from thpsim.model.page_alloc import FailPolicy
from thpsim.model.vma import Vma
from thpsim.trace.format import parse

ONE = FailPolicy(fail_nth=1, fail_site="pte_alloc_one@split")      # the first split allocation fails, once
ALWAYS = FailPolicy(persistent_site="pte_alloc_one@split")         # every split allocation fails
SECOND = FailPolicy(fail_nth=2, fail_site="pte_alloc_one@split")


def nth(n: int, site: str = "pte_alloc_one@split") -> FailPolicy:
    return FailPolicy(fail_nth=n, fail_site=site)


def trace(*ops: dict[str, Any], kernel: dict[str, Any] | None = None):  # noqa: ANN201
    hdr: dict[str, Any] = {"thpsim": 1}
    if kernel:
        hdr["kernel"] = kernel
    return parse("\n".join(json.dumps(o) for o in [hdr, *ops]))


def run(*ops: dict[str, Any], design: str = "lazy", policy: FailPolicy | None = None, arch: str = "x86_64",
        max_retries: int = 1000, kernel: dict[str, Any] | None = None) -> ModelRun:
    return run_model(trace(*ops, kernel=kernel), design=design, arch=arch, policy=policy, check=True, shadow=True,
                     max_retries=max_retries)


UFFD_REGISTER: dict[str, Any] = {"op": "uffd_register", "id": "a"}


def thp(rid: str = "a", size: str = "2M", byte: int = 0xAA, at: str | None = None) -> list[dict[str, Any]]:
    mm: dict[str, Any] = {"op": "mmap", "id": rid, "len": size}
    if at is not None:
        mm["at"] = at
    return [mm, {"op": "madvise", "id": rid, "advice": "hugepage"},
            {"op": "write", "id": rid, "fill": True, "byte": byte}]


def pm(r: ModelRun, step: int, proc: str = "main") -> list[tuple[int, int, str]]:
    for p in r.steps[step].procs:
        if p.proc == proc:
            return [(x.start, x.end, x.kind) for x in p.pagemap]
    raise KeyError(proc)


def proc(r: ModelRun, step: int, name: str = "main"):  # noqa: ANN201
    return next(p for p in r.steps[step].procs if p.proc == name)


def vmas(r: ModelRun, step: int, name: str = "main") -> list[tuple[int, int, str]]:
    return [(v.start, v.end, v.perms) for v in proc(r, step, name).vmas]


def ev(r: ModelRun, step: int, name: str) -> int:
    return dict(r.steps[step].vmstat).get(name, 0)


def meminfo(r: ModelRun, step: int, name: str) -> int:
    return dict(r.steps[step].meminfo).get(name, 0)


def sites(r: ModelRun, prefix: str) -> list[bool]:
    assert r.kernel is not None
    return [a.ok for a in r.kernel.alloc.log if a.site.startswith(prefix)]


M2 = 2 << 20
PMD_HUGE = [(0, M2, "pmd")]


# ---- allocation point and split primitives --------------------------------------------------------------------
def test_row01_split_allocates_first_and_fails_without_change() -> None:
    ops = [*thp(), {"op": "madvise", "id": "a", "off": "4K", "len": "4K", "advice": "dontneed"}]
    ok = run(*ops)
    assert sites(ok, "pte_alloc_one@split") == [True]
    assert proc(ok, 3).vm_pte_kb == proc(ok, 2).vm_pte_kb + 4      # the fresh table is installed
    bad = run(*ops, policy=ONE)
    assert sites(bad, "pte_alloc_one@split") == [False]
    assert bad.steps[3].result == 0 and ev(bad, 3, "thp_split_pmd_failed") == 1 and ev(bad, 3, "thp_split_pmd") == 0
    assert pm(bad, 3) == PMD_HUGE                                   # PMD unchanged
    assert proc(bad, 3).vm_pte_kb == proc(bad, 2).vm_pte_kb
    assert meminfo(bad, 3, "PageTables") == meminfo(bad, 2, "PageTables")   # nothing leaked
    assert bad.failed_sites == {"zap_pmd_range": 1}


def test_row02_table_freed_when_pmd_no_longer_huge() -> None:
    # the PMD is already a PTE table: split_huge_pmd_address still allocates, then frees the table, returns 0
    r = run(*thp(), {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"},
            {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "rw"},
            {"op": "munmap", "id": "a", "off": "8K", "len": "4K"})
    assert r.steps[5].result == 0
    assert sites(r, "pte_alloc_one@split") == [True, True]   # the mprotect split, then the freed one
    assert ev(r, 5, "thp_split_pmd") == ev(r, 4, "thp_split_pmd") == 1
    assert meminfo(r, 5, "PageTables") == meminfo(r, 4, "PageTables")
    assert proc(r, 5).vm_pte_kb == proc(r, 4).vm_pte_kb


def test_row03_file_shmem_dax_not_modelled() -> None:
    # The model has anonymous private VMAs only (vma.py "Left out: file and shmem VMAs"): file/shmem/DAX splits,
    # which never allocate, cannot be exercised. If file VMAs are added, this test must become a real one.
    assert "vm_file" not in Vma.__slots__ and "file" not in Vma.__slots__


def test_row04_split_huge_pmd_inline_allocates_only_for_huge_pmds() -> None:
    base = [*thp(), {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"},
            {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "rw"}]
    r = run(*base, {"op": "gup", "id": "a", "len": "16K", "flags": ["split_pmd"]},
            {"op": "madvise", "id": "a", "off": "1M", "len": "4K", "advice": "dontneed"},
            policy=nth(2))   # any split allocation after the first would fail
    assert r.steps[5].result == 4 and r.steps[6].result == 0
    assert sites(r, "pte_alloc_one@split") == [True]   # gup and zap saw a PTE table: no allocation


def test_row05_spurious_failure_on_pte_table_and_none_pmd() -> None:
    # (a) the PMD is already a PTE table
    r = run(*thp(), {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"},
            {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "rw"},
            {"op": "munmap", "id": "a", "off": "8K", "len": "4K"}, policy=SECOND)
    assert r.steps[5].result == "ENOMEM"
    assert ev(r, 5, "thp_split_pmd_failed") == 1 and ev(r, 5, "thp_split_pmd") == 1
    assert all(k != "pmd" for _s, _e, k in pm(r, 5))          # no THP was present
    # (b) the PMD is none (never faulted), but its PMD table exists (the PUD is present)
    r = run({"op": "mmap", "id": "a", "len": "4M"}, {"op": "madvise", "id": "a", "advice": "hugepage"},
            {"op": "write", "id": "a", "len": "2M", "fill": True},
            {"op": "munmap", "id": "a", "off": "2M+4K", "len": "4K"}, policy=ONE)
    assert r.steps[3].result == "ENOMEM" and ev(r, 3, "thp_split_pmd_failed") == 1
    assert pm(r, 3) == PMD_HUGE
    # without a PMD table mm_find_pmd() returns NULL: no allocation, success
    r = run({"op": "mmap", "id": "a", "len": "2M"}, {"op": "munmap", "id": "a", "off": "4K", "len": "4K"},
            policy=ALWAYS)
    assert r.steps[1].result == 0 and sites(r, "pte_alloc_one@split") == []


# ---- split callers ---------------------------------------------------------------------------------------------
def test_row06_vma_adjust_first_error_earlier_split_stays() -> None:
    one = run(*thp(), {"op": "munmap", "id": "a", "off": "4K", "len": "4K"}, policy=ONE)
    assert one.steps[3].result == "ENOMEM" and vmas(one, 3) == vmas(one, 2)
    two = run(*thp(size="4M"), {"op": "munmap", "id": "a", "off": "4K", "len": "2M"}, policy=SECOND)
    assert two.steps[3].result == "ENOMEM"
    assert pm(two, 3) == [(0, M2, "pte_thp"), (M2, 2 * M2, "pmd")]   # the first split stays
    assert proc(two, 3).rss_anon_kb == proc(two, 2).rss_anon_kb          # nothing unmapped
    assert not two.violations


@pytest.mark.parametrize("op", [
    {"op": "munmap", "id": "a", "off": "4K", "len": "4K"},
    {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"},
    {"op": "mlock", "id": "a", "off": "4K", "len": "4K"},
    {"op": "madvise", "id": "a", "off": "4K", "len": "4K", "advice": "nohugepage"},
    {"op": "madvise", "id": "a", "off": "4K", "len": "4K", "advice": "dontfork"},
    {"op": "mremap", "id": "a", "new_len": "1M"},
    {"op": "mmap", "at": "4K", "len": "4K"},
], ids=["munmap", "mprotect", "mlock", "madvise-nohugepage", "madvise-dontfork", "mremap-shrink", "map-fixed"])
def test_row07_vma_changing_syscalls_fail_with_enomem_and_change_nothing(op: dict[str, Any]) -> None:
    r = run(*thp(at="0"), op, policy=ONE)
    assert r.steps[3].result == "ENOMEM"
    assert vmas(r, 3) == vmas(r, 2) and pm(r, 3) == PMD_HUGE and not r.violations
    assert run(*thp(at="0"), op).steps[3].result != "ENOMEM"


def test_row07_munlock_fails_with_enomem() -> None:
    r = run(*thp(), {"op": "mlock", "id": "a"}, {"op": "munlock", "id": "a", "off": "4K", "len": "4K"}, policy=ONE)
    assert r.steps[4].result == "ENOMEM" and vmas(r, 4) == vmas(r, 3) and proc(r, 4).vm_lck_kb == 2048


def test_row08_fork_of_pinned_thp_fails_parent_stays_huge() -> None:
    ops = [*thp(), {"op": "gup", "id": "a", "len": "4K", "flags": ["pin"]}, {"op": "fork", "child": "c"}]
    r = run(*ops, policy=ONE)
    assert r.steps[4].result == "ENOMEM" and [p.proc for p in r.steps[4].procs] == ["main"]
    assert pm(r, 4) == PMD_HUGE and r.failed_sites == {"copy_huge_pmd": 1}
    ok = run(*ops)
    assert ok.steps[4].result == 0 and ok.split_sites == {"copy_huge_pmd": 1}


def test_row09_cow_write_fault_vm_fault_oom() -> None:
    ops = [*thp(), {"op": "fork", "child": "c"}, {"op": "write", "proc": "c", "id": "a", "len": "4K", "byte": 1}]
    once = run(*ops, policy=ONE)
    assert once.steps[4].result == 0
    assert any("VM_FAULT_OOM" in n and "retried" in n for n in once.steps[4].notes)
    assert once.failed_sites == {"do_huge_pmd_wp_page": 1} and once.split_sites == {"do_huge_pmd_wp_page": 1}
    stuck = run(*ops, policy=ALWAYS, max_retries=3)
    assert stuck.steps[4].result == "LIVELOCK"
    assert pm(stuck, 4, "c") == PMD_HUGE and ev(stuck, 4, "thp_split_pmd_failed") == 4


def test_row10_wp_huge_pmd_async_uffd_wp_split_failure() -> None:
    ops = [*thp(), UFFD_REGISTER, {"op": "uffd_wp", "id": "a"},
           {"op": "write", "id": "a", "off": "8K", "len": "4K", "byte": 7}]
    stuck = run(*ops, policy=ALWAYS, max_retries=2)
    assert stuck.steps[5].result == "LIVELOCK" and pm(stuck, 5) == PMD_HUGE
    assert stuck.failed_sites == {"wp_huge_pmd": 3}
    once = run(*ops, policy=ONE)
    assert once.steps[5].result == 0 and once.split_sites == {"wp_huge_pmd": 1} and not once.violations
    # the only failing case: a plain write-protected anonymous PMD does not split (reuse)
    plain = run(*thp(), {"op": "mprotect", "id": "a", "prot": "r"}, {"op": "mprotect", "id": "a", "prot": "rw"},
                {"op": "write", "id": "a", "len": "4K"}, policy=ALWAYS)
    assert plain.steps[5].result == 0 and pm(plain, 5) == PMD_HUGE


def test_row11_zap_skip_returns_success_and_continues() -> None:
    r = run({"op": "mmap", "id": "a", "len": "4M"}, {"op": "madvise", "id": "a", "len": "2M", "advice": "hugepage"},
            {"op": "write", "id": "a", "fill": True, "byte": 0xDD},
            {"op": "madvise", "id": "a", "off": "4K", "len": "4M-4K", "advice": "dontneed"}, policy=ALWAYS)
    assert r.steps[3].result == 0
    assert pm(r, 3) == PMD_HUGE                            # the partial PMD was skipped, the PTE part zapped
    assert any("MADV_DONTNEED returned 0 but" in v and "still holds data" in v for v in r.violations)
    assert any("[4K, 2M)" in v for v in r.violations) and not any("[2M," in v for v in r.violations)


def test_row12_change_pmd_range_retries_same_pmd() -> None:
    ops = [*thp(), UFFD_REGISTER, {"op": "uffd_wp", "id": "a", "off": "4K", "len": "4K"}]
    once = run(*ops, policy=ONE)
    assert once.steps[4].result == 0 and once.failed_sites == {"change_pmd_range": 1}
    assert once.split_sites == {"change_pmd_range": 1}
    stuck = run(*ops, policy=ALWAYS, max_retries=5)
    assert stuck.steps[4].result == "LIVELOCK" and stuck.failed_sites == {"change_pmd_range": 5}
    assert pm(stuck, 4) == PMD_HUGE


def test_row12_uffd_unregister_resolves_before_the_vma_split() -> None:
    """Issue 9 item 9: UFFDIO_UNREGISTER of [1M, 2M) of a write-protected THP.

        [0 ---------- 1M ---------- 2M)     one VMA, VM_UFFD_WP, one huge PMD (uffd-wp)
                      |<- unregister ->|
    userfaultfd_clear_vma: change_protection(MM_CP_UFFD_WP_RESOLVE) over [1M, 2M) splits the PMD in
    change_pmd_range (the v3 07/24 retry), then vma_modify_flags_uffd splits the VMA (nothing left to split)."""
    ops = [*thp(), UFFD_REGISTER, {"op": "uffd_wp", "id": "a"},
           {"op": "uffd_unregister", "id": "a", "off": "1M", "len": "1M"}]
    once = run(*ops, policy=ONE)
    assert once.steps[5].result == 0 and once.failed_sites == {"change_pmd_range": 1}
    assert once.split_sites == {"change_pmd_range": 1} and not once.violations
    assert [v.perms for v in proc(once, 5).vmas] == ["rw-p", "rw-p"]       # the VMA was split at 1M
    stuck = run(*ops, policy=ALWAYS, max_retries=4)
    assert stuck.steps[5].result == "LIVELOCK" and stuck.failed_sites == {"change_pmd_range": 4}
    assert pm(stuck, 5) == PMD_HUGE and len(proc(stuck, 5).vmas) == 1     # nothing changed: no VMA split yet
    up = run(*ops, design="upstream", policy=ALWAYS)
    assert up.steps[5].result == 0 and up.split_sites == {"change_pmd_range": 1}


def test_uffd_registration_is_not_inherited_or_moved() -> None:
    """dup_userfaultfd / mremap_userfaultfd_prep without EVENT_FORK / EVENT_REMAP: ENOENT for the child and for a
    moved VMA, and a write to the moved (formerly uffd-wp) THP reuses it whole instead of splitting."""
    ops = [*thp(), UFFD_REGISTER, {"op": "uffd_wp", "id": "a"}, {"op": "fork", "child": "c"},
           {"op": "uffd_wp", "proc": "c", "id": "a"}, {"op": "exit", "proc": "c"},
           {"op": "mremap", "id": "a", "new_len": "2M", "flags": ["maymove", "fixed"], "to": "8M"},
           {"op": "uffd_wp", "at": "8M", "len": "2M"}, {"op": "write", "at": "8M", "len": "4K", "byte": 3}]
    for design in ("upstream", "lazy"):
        r = run(*ops, design=design, policy=ALWAYS)
        assert [r.steps[i].result for i in (6, 9, 10)] == ["ENOENT", "ENOENT", 0]
        assert not r.split_sites and not r.violations


def test_uffd_wp_needs_a_registration() -> None:
    r = run(*thp(), {"op": "uffd_wp", "id": "a"}, {"op": "uffd_register", "at": "8M", "len": "2M"},
            {"op": "uffd_unregister", "id": "a", "off": "1K", "len": "4K"})
    assert [s.result for s in r.steps[3:]] == ["ENOENT", "EINVAL", "EINVAL"]


def test_row13_gup_split_pmd_enomem_or_partial_count() -> None:
    ops = [*thp(size="4M"), {"op": "gup", "id": "a", "flags": ["split_pmd", "pin"]}]
    assert run(*ops, policy=ONE).steps[3].result == "ENOMEM"
    r = run(*ops, policy=SECOND)
    assert r.steps[3].result == 512                        # the pages pinned before the failure
    assert run(*ops).steps[3].result == 1024


def test_row15_mremap_partial_move_reverted_enomem_data_intact() -> None:
    ops = [*thp(size="4M", at="0"), {"op": "write", "id": "a", "off": "1M", "len": "4K", "byte": 0x11},
           {"op": "mremap", "at": "1M", "len": "2M", "new_len": "2M", "flags": ["maymove", "fixed"], "to": "64M"},
           {"op": "read", "id": "a"}]
    r = run(*ops, policy=SECOND)
    assert r.steps[4].result == "ENOMEM" and not r.violations
    assert vmas(r, 4) == vmas(r, 3) and r.failed_sites == {"move_page_tables": 1}
    assert r.steps[5].result == 0
    assert r.steps[5].data == run(*thp(size="4M", at="0"), ops[3], ops[5]).steps[4].data
    assert run(*ops).steps[4].result == 64 << 20


def test_row16_uffdio_move_eagain_or_enomem() -> None:
    src = [{"op": "mmap", "id": "a", "len": "4M"}, {"op": "madvise", "id": "a", "off": "2M", "len": "2M",
                                                     "advice": "hugepage"},
           {"op": "write", "id": "a", "fill": True}, {"op": "mmap", "id": "b", "at": "64M", "len": "2M"}]
    r = run(*src, {"op": "uffd_move", "id": "a", "off": "2M", "len": "4K", "to": "64M"}, policy=ONE)
    assert r.steps[4].result == "ENOMEM" and r.failed_sites == {"move_pages": 1}
    r = run(*src, {"op": "uffd_move", "id": "a", "off": "2M-8K", "len": "16K", "to": "64M"}, policy=ONE)
    assert r.steps[4].result == "EAGAIN"                   # 8K moved before the failed split
    assert not r.violations


def test_row17_device_migration_skips_the_page() -> None:
    ops = [*thp(), {"op": "migrate", "id": "a"}]
    r = run(*ops, policy=ONE)
    assert r.steps[3].result == 0 and pm(r, 3) == PMD_HUGE
    assert r.failed_sites == {"migrate_vma_split_unmapped_folio": 1}
    assert run(*ops).steps[3].result == 512


def test_row17_migrate_vma_insert_page_aborts_on_a_huge_zero_pmd() -> None:
    """Issue 9 item 9: a huge zero PMD is collected as a hole; migrate_vma_insert_page splits it before inserting
    each device page. v3 12/24: a failed split is goto abort — that page is not migrated and the next page of the
    same PMD tries the split again.

        [0 ---------------- 2M)   huge zero PMD (a read fault), then migrate [0, 2M)
    """
    zero = [{"op": "mmap", "id": "a", "len": "2M"}, {"op": "madvise", "id": "a", "advice": "hugepage"},
            {"op": "read", "id": "a", "len": "4K"}, {"op": "migrate", "id": "a"}, {"op": "read", "id": "a"}]
    once = run(*zero, policy=ONE)
    assert once.steps[3].result == 511 and once.failed_sites == {"migrate_vma_insert_page": 1}
    assert once.split_sites == {"migrate_vma_insert_page": 1} and not once.violations
    assert pm(once, 3) == [(0, 4096, "zero"), (4096, M2, "pte")]     # the zero page at 0, 511 device pages
    assert proc(once, 3).rss_anon_kb == 511 * 4
    stuck = run(*zero, policy=ALWAYS)
    assert stuck.steps[3].result == 0 and pm(stuck, 3) == [(0, M2, "pmd_zero")]
    assert stuck.failed_sites == {"migrate_vma_insert_page": 512}
    up = run(*zero, design="upstream", policy=ALWAYS)
    assert up.steps[3].result == 512 and up.split_sites == {"migrate_vma_insert_page": 1}
    # an unpopulated range: every page is a hole, the tables come from __pte_alloc (goto abort when it fails)
    holes = run({"op": "mmap", "id": "a", "len": "2M"}, {"op": "migrate", "id": "a"})
    assert holes.steps[1].result == 512 and proc(holes, 1).rss_anon_kb == 2048
    no_table = run({"op": "mmap", "id": "a", "len": "2M"}, {"op": "migrate", "id": "a"},
                   policy=FailPolicy(persistent_site="__pte_alloc"))
    assert no_table.steps[1].result == 0 and proc(no_table, 1).vm_pte_kb == proc(holes, 1).vm_pte_kb - 4


def test_row18_pagemap_scan_stops_earlier_pmds_stay_split() -> None:
    """pagemap_scan_thp_entry (v3 13/24): the second PMD's split fails, the first stays split. (Row 14, the
    generic walk_pmd_range split of v3 09/24, is tested on its own path in tests/model/test_pagewalk.py.)"""
    r = run(*thp(size="4M"), {"op": "pagemap_scan_wp", "id": "a", "off": "4K", "len": "2M"}, policy=SECOND)
    assert r.steps[3].result == "ENOMEM"
    assert pm(r, 3) == [(0, M2, "pte_thp"), (M2, 2 * M2, "pmd")]


def test_row18_pagemap_scan_enomem() -> None:
    r = run(*thp(), {"op": "pagemap_scan_wp", "id": "a", "off": "4K", "len": "4K"}, policy=ONE)
    assert r.steps[3].result == "ENOMEM" and pm(r, 3) == PMD_HUGE
    assert r.failed_sites == {"pagemap_scan_thp_entry": 1}


def test_row19_rmap_splits_with_a_preallocated_table() -> None:
    r = run(*thp(), {"op": "reclaim", "id": "a"}, kernel={"swap": True})
    assert r.steps[3].result == 1
    assert sites(r, "pte_alloc_one@rmap_prealloc") == [True] and sites(r, "pte_alloc_one@split") == []


# ---- rmap pre-allocation ---------------------------------------------------------------------------------------
SHARED = [*thp(), {"op": "fork", "child": "c"}, {"op": "munmap", "proc": "c", "id": "a", "off": "4K", "len": "4K"}]


def test_row20_one_prealloc_per_rmap_one_call_even_pte_mapped() -> None:
    r = run(*SHARED, {"op": "reclaim", "id": "a"}, kernel={"swap": True})
    # main maps the folio by PMD, the child by PTEs in two VMAs: three rmap_one calls, three pre-allocations
    assert sites(r, "pte_alloc_one@rmap_prealloc") == [True, True, True]
    assert r.steps[5].result == 1
    # the two unused tables were freed: PageTables grew by the one installed in main only
    assert meminfo(r, 5, "PageTables") == meminfo(r, 4, "PageTables") + 4
    # a failed pre-allocation for a PTE-mapped VMA is not acted on
    r = run(*SHARED, {"op": "reclaim", "id": "a"}, kernel={"swap": True}, policy=nth(2, "pte_alloc_one@rmap"))
    assert r.steps[5].result == 1 and ev(r, 5, "thp_split_pmd_failed") == 0


def test_row21_pmd_met_without_table_bails_out() -> None:
    r = run(*thp(), {"op": "reclaim", "id": "a"}, kernel={"swap": True}, policy=nth(1, "pte_alloc_one@rmap"))
    assert r.steps[3].result == 0 and pm(r, 3) == PMD_HUGE
    assert ev(r, 3, "thp_split_pmd_failed") == 1 and ev(r, 3, "thp_swpout") == 0


def test_row22_folio_split_fails_other_vmas_stay_split() -> None:
    r = run(*thp(), {"op": "fork", "child": "c"}, {"op": "reclaim", "id": "a"},
            policy=nth(2, "pte_alloc_one@rmap"))
    assert r.steps[4].result == 0                          # no swap: the folio split failed, nothing reclaimed
    assert ev(r, 4, "thp_split_page_failed") == 1 and ev(r, 4, "thp_split_pmd_failed") == 1
    assert pm(r, 4) == [(0, M2, "pte_thp")] and pm(r, 4, "c") == PMD_HUGE   # main's table stays
    assert proc(r, 4).vm_pte_kb == proc(r, 3).vm_pte_kb + 4


# ---- accounting ------------------------------------------------------------------------------------------------
def test_row23_thp_creation_allocates_no_table() -> None:
    ops = [*thp(), {"op": "mmap", "id": "z", "len": "2M"}, {"op": "madvise", "id": "z", "advice": "hugepage"},
           {"op": "read", "id": "z", "len": "4K"}, {"op": "fork", "child": "c"}]
    lazy, up = run(*ops), run(*ops, design="upstream")
    assert sites(lazy, "pte_alloc_one") == [] and len(sites(up, "pte_alloc_one")) == 4
    assert proc(up, 6).vm_pte_kb - proc(lazy, 6).vm_pte_kb == 8
    assert proc(up, 6, "c").vm_pte_kb - proc(lazy, 6, "c").vm_pte_kb == 8
    # an anon THP fault can no longer fail for lack of a page table
    p = FailPolicy(persistent_site="pte_alloc_one")
    assert run(*thp(), policy=p).steps[2].result == 0
    assert run(*thp(), policy=p, design="upstream", max_retries=2).steps[2].result == "LIVELOCK"


def test_row24_split_adds_one_table_and_counts() -> None:
    ops = [*thp(), {"op": "madvise", "id": "a", "off": "4K", "len": "4K", "advice": "dontneed"}]
    for design, delta in (("lazy", 4), ("upstream", 0)):
        r = run(*ops, design=design)
        assert proc(r, 3).vm_pte_kb - proc(r, 2).vm_pte_kb == delta and ev(r, 3, "thp_split_pmd") == 1
    zero = [{"op": "mmap", "id": "z", "len": "2M"}, {"op": "madvise", "id": "z", "advice": "hugepage"},
            {"op": "read", "id": "z", "len": "4K"}, {"op": "mprotect", "id": "z", "len": "4K", "prot": "r"}]
    r = run(*zero)
    assert pm(r, 2) == [(0, M2, "pmd_zero")] and proc(r, 3).vm_pte_kb - proc(r, 2).vm_pte_kb == 4


def test_row25_zap_and_moves_free_or_move_no_table() -> None:
    base = [*thp(), {"op": "mmap", "id": "n", "len": "2M"}, {"op": "write", "id": "n", "len": "4K"}]
    for design, delta in (("lazy", 0), ("upstream", -4)):
        r = run(*base, {"op": "munmap", "id": "a"}, design=design)
        assert proc(r, 5).vm_pte_kb - proc(r, 4).vm_pte_kb == delta
        r = run(*base, {"op": "madvise", "id": "a", "advice": "dontneed"}, design=design)
        assert proc(r, 5).vm_pte_kb - proc(r, 4).vm_pte_kb == delta
    r = run(*thp(), {"op": "mremap", "id": "a", "len": "2M", "new_len": "2M", "flags": ["maymove", "fixed"],
                     "to": "2G"})
    assert pm(r, 3) == [(2 << 30, (2 << 30) + M2, "pmd")] and sites(r, "pte_alloc_one") == []
    r = run(*thp(), {"op": "mmap", "id": "b", "at": "8M", "len": "2M"}, {"op": "uffd_move", "id": "a", "to": "8M"})
    assert r.steps[4].result == M2 and sites(r, "pte_alloc_one") == []
    assert proc(r, 4).vm_pte_kb == proc(r, 3).vm_pte_kb
    # lazy-free reclaim: the model follows the 6.18 measurement (the PMD is split before the discard), so
    # under the lazy design the discard needs a table from the rmap pre-allocation (docs/series.md, findings)
    r = run(*thp(), {"op": "madvise", "id": "a", "advice": "free"}, {"op": "reclaim", "id": "a"})
    assert r.steps[4].result == 1 and sites(r, "pte_alloc_one@rmap_prealloc") == [True]


def _huge_pmds(p) -> int:  # noqa: ANN001
    return sum((x.end - x.start) // M2 for x in p.pagemap if x.kind in ("pmd", "pmd_zero"))


def test_row26_pgtables_bytes_counts_installed_tables_only() -> None:
    from pathlib import Path

    from thpsim.trace.format import load

    checked = 0
    for path in sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.jsonl")):
        t = load(str(path))
        up = run_model(t, design="upstream", check=True)
        lz = run_model(t, design="lazy", check=True)      # invariants incl. check_mm at exit, nr_ptes = tables
        for su, sl in zip(up.steps, lz.steps, strict=True):
            for pu, pl in zip(su.procs, sl.procs, strict=True):
                assert pu.vm_pte_kb - pl.vm_pte_kb == 4 * _huge_pmds(pl), (path, su.step, pu.proc)
                checked += 1
    assert checked > 500


def test_row27_collapse_frees_the_old_table() -> None:
    ops = [*thp(), {"op": "mprotect", "id": "a", "len": "4K", "prot": "r"},
           {"op": "mprotect", "id": "a", "len": "4K", "prot": "rw"}, {"op": "madvise", "id": "a",
                                                                       "advice": "collapse"}]
    lz, up = run(*ops), run(*ops, design="upstream")
    assert lz.steps[5].result == up.steps[5].result == 0 and pm(lz, 5) == PMD_HUGE
    assert proc(lz, 5).vm_pte_kb - proc(lz, 4).vm_pte_kb == -4
    assert proc(up, 5).vm_pte_kb == proc(up, 4).vm_pte_kb


def test_row28_split_failed_counted_only_for_failed_splits() -> None:
    # __split_huge_pmd allocation failure: counted
    assert ev(run(*thp(), UFFD_REGISTER, {"op": "uffd_wp", "id": "a", "off": "4K", "len": "4K"}, policy=ONE), 4,
              "thp_split_pmd_failed") == 1
    # rmap bail-out: counted; a failed but unneeded pre-allocation: not counted
    assert ev(run(*thp(), {"op": "reclaim", "id": "a"}, kernel={"swap": True}, policy=nth(1, "pte_alloc_one@rmap")),
              3, "thp_split_pmd_failed") == 1
    r = run(*SHARED, {"op": "reclaim", "id": "a"}, kernel={"swap": True}, policy=nth(3, "pte_alloc_one@rmap"))
    assert r.kernel is not None and r.kernel.alloc.injected == 1 and ev(r, 5, "thp_split_pmd_failed") == 0
    # other allocation failures are not split failures
    r = run(*thp(), {"op": "madvise", "id": "a", "off": "4K", "len": "4K", "advice": "dontneed"},
            policy=FailPolicy(fail_nth=1, fail_site="folio@thp_fault"))
    assert ev(r, 3, "thp_split_pmd_failed") == 0


def test_row29_thp_split_pmd_counts_real_splits_only() -> None:
    r = run(*thp(), {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"}, policy=ONE)
    assert ev(r, 3, "thp_split_pmd") == 0
    r = run(*thp(), {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"},
            {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "rw"},
            {"op": "munmap", "id": "a", "off": "8K", "len": "4K"})
    assert ev(r, 5, "thp_split_pmd") == 1 and len(sites(r, "pte_alloc_one@split")) == 2


# ---- architecture rule -----------------------------------------------------------------------------------------
def test_row30_ppc64_hash_deposits_and_never_fails_a_split() -> None:
    ops = [{"op": "mmap", "id": "a", "len": "32M"}, {"op": "madvise", "id": "a", "advice": "hugepage"},
           {"op": "write", "id": "a", "fill": True},
           {"op": "madvise", "id": "a", "off": "64K", "len": "64K", "advice": "dontneed"},
           {"op": "fork", "child": "c"}, {"op": "madvise", "id": "a", "advice": "collapse"}]
    lz = run(*ops, arch="ppc64-hash", policy=FailPolicy(persistent_site="pte_alloc_one@split"))
    up = run(*ops, arch="ppc64-hash", design="upstream")
    assert [s.procs for s in lz.steps] == [s.procs for s in up.steps]
    assert sites(lz, "pte_alloc_one@split") == [] and ev(lz, 3, "thp_split_pmd") == 1
    assert len(sites(lz, "pte_alloc_one@fault")) == 2 and not lz.violations
    assert all(r.status == "pass" for r in run_selftests("lazy", inject=True, arch="ppc64-hash"))


def test_row31_every_other_arch_is_fully_lazy() -> None:
    for name, a in ARCHES.items():
        k = make_kernel(design="lazy", arch=name)
        assert k.design.deposit == a.needs_pgtable_deposit, name
        if a.needs_pgtable_deposit:
            continue
        size = 2 * a.pmd_size
        r = run({"op": "mmap", "id": "a", "len": size}, {"op": "madvise", "id": "a", "advice": "hugepage"},
                {"op": "write", "id": "a", "stride": a.pmd_size}, arch=name)
        assert ev(r, 2, "thp_fault_alloc") == 2 and sites(r, "pte_alloc_one") == [], name
    assert get_design("lazy").for_arch(ARCHES["ppc64-hash"]).deposit


# ---- selftest-equivalent scenarios -----------------------------------------------------------------------------
def test_row32_to_34_selftests_split_where_the_series_says() -> None:
    res = {r.name: r for r in run_selftests("lazy")}
    for n in ("partial_munmap", "partial_mprotect", "partial_mlock"):
        assert [p.split(" (")[0] for p in res[n].split_paths] == ["__split_vma -> vma_adjust_trans_huge"], n
    mr = res["partial_mremap"]
    assert ("mremap(A+P, P, P, MREMAP_MAYMOVE)", 4096) in mr.op_results
    assert mr.split_paths == ("__split_vma -> vma_adjust_trans_huge (munmap(new, P))",)
    assert res["partial_madv_dontneed"].split_paths == (
        "zap_pmd_range -> __split_huge_pmd (madvise(A+P, P, MADV_DONTNEED))",)
    assert [(r.split_before, r.split_after, r.failed_before, r.failed_after) for r in res.values()] == [
        (0, 1, 0, 0), (1, 2, 0, 0), (2, 3, 0, 0), (3, 4, 0, 0), (4, 5, 0, 0)]
    assert all(r.status == "pass" and not r.violations for r in res.values())


# ---- open problems of the v3 review ----------------------------------------------------------------------------
def test_row35_zap_skip_leaves_data() -> None:
    row = review.zap_skip("lazy")
    assert row.result == 0 and row.numbers["pages_not_zeroed"] == 1
    md = {r.name: r for r in run_selftests("lazy", inject=True)}["partial_madv_dontneed"]
    failed = {c.name for c in md.checks if not c.ok}
    assert md.status == "fail" and "ASSERT_EQ(A[P], 0x00) (zero check)" in failed
    assert any("counter check" in c for c in failed)
    assert review.zap_skip("lazy-zap-zero").numbers["pages_not_zeroed"] == 0
    assert review.zap_skip("lazy-zap-enomem").result == "ENOMEM"
    up = review.zap_skip("lazy-dontneed-upfront")
    assert up.result == "ENOMEM" and up.numbers["pages_not_zeroed"] == 0 and up.numbers["violations"] == 0


def test_dontneed_upfront_variant_fails_before_zapping_anything() -> None:
    """lazy-dontneed-upfront (issue 9 item 7): MADV_DONTNEED of [4K, 4M-4K) over two THPs.

        [0 ---- THP 0 ---- 2M ---- THP 1 ---- 4M)
           |<-------- DONTNEED ---------->|        both ends cut a huge PMD: split both first
    The second split fails: ENOMEM, THP 0 is split but nothing is zapped (the data stays, and says so: no
    contract violation). One failure less and the call zaps everything. Other zap callers (munmap's
    unmap_region) keep v3's skip."""
    ops = [*thp(size="4M"), {"op": "madvise", "id": "a", "off": "4K", "len": "4M-8K", "advice": "dontneed"},
           {"op": "read", "id": "a"}]
    r = run(*ops, design="lazy-dontneed-upfront", policy=SECOND)
    assert r.steps[3].result == "ENOMEM" and not r.violations
    assert pm(r, 3) == [(0, M2, "pte_thp"), (M2, 2 * M2, "pmd")]
    assert r.failed_sites == {"madvise_dontneed_single_vma": 1} and proc(r, 3).rss_anon_kb == 4096
    ok = run(*ops, design="lazy-dontneed-upfront")
    assert ok.steps[3].result == 0 and proc(ok, 3).rss_anon_kb == 8 and not ok.violations
    assert ok.split_sites == {"madvise_dontneed_single_vma": 2}
    v3 = run(*ops, design="lazy", policy=SECOND)
    assert v3.steps[3].result == 0 and any("still holds data" in v for v in v3.violations)


def test_row36_mprotect_retry_unbounded() -> None:
    row = review.mprotect_retry("lazy", max_retries=50)
    assert row.result == "LIVELOCK" and row.numbers["split_attempts"] == 50
    assert row.numbers["errno_returned"] is None
    up = review.mprotect_retry("lazy-mprotect-upfront", max_retries=50)
    assert up.result == "ENOMEM" and up.numbers["split_attempts"] == 1


def test_row37_hugh_reclaim_reserves() -> None:
    row = review.hugh_reclaim("lazy", n=20, reserve_pages=10)
    n = row.numbers
    assert n["failed_at_alloc"] == 11 and n["reserve_used_after"] == 10 and n["pages_freed"] == -10
    assert row.result == 0 and n["thp_split_pmd_failed"] == 1 and n["invariant_violations"] == 0
    ok = review.hugh_reclaim("lazy", n=20, reserve_pages=20)
    assert ok.result == 1 and ok.numbers["table_allocs"] == 20 and ok.numbers["reserve_peak"] == 20
    up = review.hugh_reclaim("upstream", n=20, reserve_pages=0)
    assert up.result == 1 and up.numbers["table_allocs"] == 0 and up.numbers["pages_freed"] == 512


def test_row38_every_split_call_checks_its_result() -> None:
    calls = review.split_call_sites()
    assert len(calls) >= 20
    unchecked = [f"{c.file}:{c.line} {c.func}" for c in calls if not c.checked]
    assert unchecked == [], unchecked


# a huge_mm.h in the shape the series leaves it (v3 01/24 + 16/24): __must_check on the THP=y declarations only
_HUGE_MM_H = """\
#ifdef CONFIG_TRANSPARENT_HUGEPAGE
#if defined(CONFIG_SYSFS)
int __must_check __split_huge_pmd(struct vm_area_struct *vma, pmd_t *pmd,
#endif
static inline int __must_check split_huge_pmd(struct vm_area_struct *vma,
int __must_check split_huge_pmd_address(struct vm_area_struct *vma, unsigned long address,
#else /* CONFIG_TRANSPARENT_HUGEPAGE */
static inline int split_huge_pmd(struct vm_area_struct *vma, pmd_t *pmd,
static inline int __split_huge_pmd(struct vm_area_struct *vma, pmd_t *pmd,
#define split_huge_pmd_address(vma, address, freeze) 0
#endif /* CONFIG_TRANSPARENT_HUGEPAGE */
"""


def test_row38_the_series_thp_n_stubs_lack_must_check(tmp_path: Path) -> None:
    """Kiryl on v3 16/24: the CONFIG_TRANSPARENT_HUGEPAGE=n stubs need __must_check too. The row reads the series'
    header: nested #if blocks keep their THP branch, a #define has no __must_check."""
    (tmp_path / "include" / "linux").mkdir(parents=True)
    (tmp_path / "include" / "linux" / "huge_mm.h").write_text(_HUGE_MM_H)
    row = review.must_check("lazy", tmp_path)
    assert row.numbers["thp_y"] == dict.fromkeys(review.SPLIT_DECLS, True)
    assert row.numbers["thp_n"] == dict.fromkeys(review.SPLIT_DECLS, False)
    assert row.result == 3 and "builds without a warning when THP=n" in row.verdict
    fixed = _HUGE_MM_H.replace("static inline int split", "static inline int __must_check split").replace(
        "static inline int __split", "static inline int __must_check __split").replace(
        "#define split_huge_pmd_address(vma, address, freeze) 0",
        "static inline int __must_check split_huge_pmd_address(struct vm_area_struct *vma,")
    (tmp_path / "include" / "linux" / "huge_mm.h").write_text(fixed)
    assert review.must_check("lazy", tmp_path).result == 0
    none = review.must_check("lazy", tmp_path / "missing")
    assert none.numbers["header"] is None and "does not exist" in none.verdict


def test_row38_on_the_lab_series_tree() -> None:
    tree = review.series_tree()
    if tree is None:
        pytest.skip(f"the lab's {review.SERIES_TREE_KERNEL} is not built (thpsim lab build {review.SERIES_TREE_KERNEL})")
    row = review.must_check("lazy", tree)
    assert row.numbers["without_must_check"] == [f"{f} (THP=n)" for f in review.SPLIT_DECLS]


def test_guard_install_rezaps_then_restarts_like_7_3():
    """madvise_guard_install(): walk, zap, walk again (MAX_MADVISE_GUARD_RETRIES), then restart_syscall().

    [0, 2M) THP; GUARD_INSTALL of [1M, +4K) needs a split, whose table (lazy) fails once: the re-zap succeeds
    and the call returns 0 (measured on lazy-v3-7.3 with fail_page_alloc). Failing every time: LIVELOCK."""
    from dataclasses import replace as _replace

    from thpsim.trace.format import Inject, parse

    t = parse('{"thpsim": 1}\n{"op": "mmap", "id": "a", "len": "2M"}\n'
              '{"op": "madvise", "id": "a", "advice": "hugepage"}\n{"op": "write", "id": "a", "fill": true}\n'
              '{"op": "madvise", "id": "a", "off": "1M", "len": "4K", "advice": "guard_install"}\n'
              '{"op": "read", "id": "a", "off": "1M", "len": "4K"}\n')
    ops = list(t.ops)
    once = _replace(t, ops=(*ops[:3], _replace(ops[3], inject=Inject("pte_alloc_one", 1)), ops[4]))
    s = run_model(once, design="lazy", check=True).steps
    assert s[3].result == 0 and s[3].injected == ("__split_huge_pmd",) and s[4].result == "SIGSEGV"
    always = _replace(t, ops=(*ops[:3], _replace(ops[3], inject=Inject("pte_alloc_one", 1 << 20)), ops[4]))
    s = run_model(always, design="lazy", max_retries=10).steps
    assert s[3].result == "LIVELOCK" and len(s[3].injected) == 30     # 10 restarts x 3 zaps


def test_issue9_item4_gup_does_not_retry_a_fault_oom() -> None:
    """faultin_page() turns VM_FAULT_OOM into -ENOMEM at once (mm/gup.c): MADV_POPULATE_WRITE is ENOMEM, mlock's
    populate EAGAIN (__mlock_posix_error_return), each after one failed allocation — no retry loop."""
    from thpsim.model.engine import run_model
    from thpsim.model.page_alloc import FailPolicy
    from thpsim.trace.format import parse

    for op, want in (('{"op": "madvise", "id": "a", "advice": "populate_write"}', "ENOMEM"),
                     ('{"op": "mlock", "id": "a"}', "EAGAIN")):
        t = parse('{"op": "mmap", "id": "a", "len": "64K"}\n' + op)
        r = run_model(t, design="lazy", policy=FailPolicy(persistent_site="folio@fault"), check=True)
        assert r.steps[-1].result == want, op
        assert r.kernel is not None
        failed = [a for a in r.kernel.alloc.log if a.site == "folio@fault" and not a.ok]
        assert len(failed) == 1, (op, len(failed))
