"""lazy-pmd-swap: PMD-level swap entries (the follow-up series, docs/pmd-swap.md) on top of the lazy series.

    main ─fork─> c1, c2        one THP [0, 2M) mapped by three processes, reclaimed to swap:
                               each PMD becomes one PMD swap entry (512 slots), no PTE table is allocated
"""

from __future__ import annotations

from vmtest import THP, A, consistent, ev, kernel, mapped, set_fail, tables, thp

from thpsim.model import fork, memory, mremap, uaccess, vmscan
from thpsim.model.kernel import VM_FAULT_OOM
from thpsim.model.page_alloc import FailPolicy
from thpsim.model.pgtable import PTE_SWAP, HugePmd, PteTable, SwapPmd


def _shared_thp(n: int, **knobs: object):  # noqa: ANN202
    k = kernel("lazy-pmd-swap", swap=True, **knobs)
    mm = mapped(k, 0, THP)
    hp = thp(k, mm)
    assert uaccess.access(k, mm, A, A + THP, write=True, stride=4096, fill=True, byte=9)[0] == 0
    for i in range(1, n):
        assert fork.do_fork(k, mm, f"c{i}") == 0
    return k, mm, hp.folio


def test_reclaim_installs_a_pmd_swap_entry_per_mapping_without_tables() -> None:
    k, mm, f = _shared_thp(3)
    before = [tables(m) for m in k.procs.values()]
    allocs = len(k.alloc.log)
    set_fail(k, "pte_alloc_one@rmap_prealloc")            # nothing may ask for a table
    assert vmscan.shrink_folio(k, f) is vmscan.Reclaimed.SWAPPED
    assert all(isinstance(m.pt.slot(A), SwapPmd) for m in k.procs.values())
    assert [tables(m) for m in k.procs.values()] == before and len(k.alloc.log) == allocs
    assert ev(k, "thp_swpout") == 1 and ev(k, "thp_split_pmd") == 0
    assert all(m.swap_ents == 512 and m.anon_pages == 0 for m in k.procs.values())
    assert k.swap is not None and k.swap.references() == 3 * 512
    consistent(k)


def test_no_free_cluster_falls_back_to_the_split_and_needs_tables() -> None:
    """Fragmented swap (Matthew Wilcox's concern): no whole cluster → split_folio_to_list, and under lazy the
    folio split's rmap walk needs one table per mapping again."""
    k, mm, f = _shared_thp(3, swap_clusters=4, swap_fragmented=4)
    assert vmscan.shrink_folio(k, f) is vmscan.Reclaimed.SPLIT_SWAPPED
    assert ev(k, "thp_swpout_fallback") == 1 and ev(k, "thp_split_pmd") == 3
    assert sum(1 for r in k.alloc.log if r.site.startswith("pte_alloc_one@rmap_prealloc")) == 3
    assert not any(isinstance(m.pt.slot(A), SwapPmd) for m in k.procs.values())
    consistent(k)


def test_swap_in_maps_the_thp_whole_and_keeps_the_data() -> None:
    k, mm, f = _shared_thp(1)
    vmscan.shrink_folio(k, f)
    rc, data, _ = uaccess.access(k, mm, A + 4096, A + 8192, write=False, stride=4096, fill=False, byte=0)
    assert rc == 0 and data == bytes([9])
    hp = mm.pt.slot(A)
    assert isinstance(hp, HugePmd) and hp.write                # exclusive entry, writable VMA
    assert mm.swap_ents == 0 and k.swap is not None and k.swap.references() == 0
    consistent(k)


def test_swap_in_without_a_thp_splits_and_under_lazy_needs_a_table() -> None:
    k, mm, f = _shared_thp(1)
    vmscan.shrink_folio(k, f)
    set_fail(k, "folio@swapin")
    assert memory.handle_mm_fault(k, mm, A, False) == 0     # split into 512 PTE swap entries, one swapped in
    t = mm.pt.slot(A)
    assert isinstance(t, PteTable) and sum(1 for p in t.ptes.values() if p.kind == PTE_SWAP) == 511
    consistent(k)
    # no free page at all: no folio, and the split's table fails too (lazy): VM_FAULT_OOM, the entry stays
    k2, mm2, f2 = _shared_thp(1)
    vmscan.shrink_folio(k2, f2)
    k2.alloc.set_policy(FailPolicy(budget_pages=k2.alloc.pages_in_use), counted=0)
    assert memory.handle_mm_fault(k2, mm2, A, False) == VM_FAULT_OOM
    assert isinstance(mm2.pt.slot(A), SwapPmd) and ev(k2, "thp_split_pmd_failed") == 1
    consistent(k2)


def test_fork_zap_and_partial_munmap_of_a_swap_pmd() -> None:
    k, mm, f = _shared_thp(1)
    vmscan.shrink_folio(k, f)
    assert fork.do_fork(k, mm, "child") == 0
    child = k.procs["child"]
    assert isinstance(child.pt.slot(A), SwapPmd) and child.swap_ents == 512
    assert k.swap is not None and k.swap.references() == 1024
    v = child.vmas.find(A)
    assert v is not None
    memory.zap_pmd_range(k, child, v, A, A + THP)            # whole: the slots lose the child's references
    assert child.swap_ents == 0 and k.swap.references() == 512
    memory.zap_pmd_range(k, mm, mm.vmas.find(A), A, A + 4096)   # partial: split (a table), one slot freed
    t = mm.pt.slot(A)
    assert isinstance(t, PteTable) and mm.swap_ents == 511 and ev(k, "thp_split_pmd") == 1
    consistent(k)


def test_mremap_moves_a_whole_swap_pmd() -> None:
    k, mm, f = _shared_thp(1)
    vmscan.shrink_folio(k, f)
    new = A + 64 * THP
    assert mremap.do_mremap(k, mm, A, THP, THP, ("maymove", "fixed"), new) == new
    assert isinstance(mm.pt.slot(new), SwapPmd) and mm.pt.slot(A) is None
    consistent(k)


def test_without_swap_out_lazy_pmd_swap_is_lazy() -> None:
    """Every series scenario and the five selftests (with and without injection) behave exactly as under lazy:
    PMD swap entries only change what reclaim to swap does."""
    import glob
    import os

    from thpsim.analysis.selftest import run_selftests
    from thpsim.model.engine import run_model
    from thpsim.trace import format as tf

    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    for path in sorted(glob.glob(os.path.join(root, "scenarios", "series", "*.jsonl"))):
        t = tf.load(path)
        if any(op.kind == "reclaim" for op in t.ops) and dict(t.header.kernel).get("swap"):
            continue                                    # reclaim to swap: where the designs differ
        a = run_model(t, design="lazy", check=True, shadow=True)
        b = run_model(t, design="lazy-pmd-swap", check=True, shadow=True)
        assert a.steps == b.steps, path
    for inject in (False, True):
        lazy = [(r.name, r.status) for r in run_selftests("lazy", inject=inject)]
        assert [(r.name, r.status) for r in run_selftests("lazy-pmd-swap", inject=inject)] == lazy


def test_the_checklist_rows_hold_under_lazy_pmd_swap(monkeypatch) -> None:  # noqa: ANN001
    """Every row test of tests/test_series_failures.py that does not reclaim to swap passes unchanged with
    lazy-pmd-swap as the design (rows 19-22, 28 and 37 reclaim to swap: there the designs differ on purpose)."""
    import importlib.util
    import inspect
    import os

    from thpsim.model.engine import run_model

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test_series_failures.py")
    spec = importlib.util.spec_from_file_location("series_rows", path)
    assert spec is not None and spec.loader is not None
    rows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rows)

    def run(*ops, design="lazy", policy=None, arch="x86_64", max_retries=1000, kernel=None):  # noqa: ANN001, ANN002, ANN202
        d = "lazy-pmd-swap" if design == "lazy" else design
        return run_model(rows.trace(*ops, kernel=kernel), design=d, arch=arch, policy=policy, check=True,
                         shadow=True, max_retries=max_retries)

    monkeypatch.setattr(rows, "run", run)
    ran = 0
    for name, fn in sorted(vars(rows).items()):
        if not name.startswith("test_row") or inspect.signature(fn).parameters:
            continue
        if '"reclaim"' in inspect.getsource(fn) or "hugh" in name:
            continue
        fn()
        ran += 1
    assert ran >= 30


def test_arches_without_pmd_swap_helpers_keep_splitting() -> None:
    """The series adds pmd_swp_*exclusive for x86, arm64, s390, riscv and loongarch only: on powerpc reclaim
    splits as before (and ppc64 hash keeps the deposit under every design)."""
    from thpsim.model.arch import ARCHES
    from thpsim.model.design import get_design

    d = get_design("lazy-pmd-swap")
    assert d.for_arch(ARCHES["x86_64"]).pmd_swap and d.for_arch(ARCHES["arm64-4k"]).pmd_swap
    radix = d.for_arch(ARCHES["ppc64-radix"])
    assert not radix.pmd_swap and not radix.deposit
    hashed = d.for_arch(ARCHES["ppc64-hash"])
    assert not hashed.pmd_swap and hashed.deposit


def test_swapoff_swaps_pmd_entries_back_in_whole() -> None:
    """swapoff: unuse_pmd maps a PMD swap entry back whole; without a PMD-order folio it splits the entry (a
    table under lazy) and unuse_pte swaps the pages in one by one; no device: EINVAL."""
    from thpsim.model import swapfile_unuse
    from thpsim.model.errnos import EINVAL, ENOMEM

    k, mm, f = _shared_thp(2)
    vmscan.shrink_folio(k, f)
    assert swapfile_unuse.sys_swapoff(k) == 0
    assert all(isinstance(m.pt.slot(A), HugePmd) and m.swap_ents == 0 for m in k.procs.values())
    assert k.swap is None and swapfile_unuse.sys_swapoff(k) == EINVAL
    rc, data, _ = uaccess.access(k, mm, A, A + 4096, write=False, stride=4096, fill=False, byte=0)
    assert rc == 0 and data == bytes([9])
    consistent(k)
    # no THP to read into: split, then 512 order-0 folios
    k2, mm2, f2 = _shared_thp(1)
    vmscan.shrink_folio(k2, f2)
    set_fail(k2, "folio@swapin")
    assert swapfile_unuse.sys_swapoff(k2) == 0
    t = mm2.pt.slot(A)
    assert isinstance(t, PteTable) and mm2.swap_ents == 0 and mm2.anon_pages == 512
    consistent(k2)
    # and nothing at all to read into: ENOMEM, the device stays
    k3, mm3, f3 = _shared_thp(1)
    vmscan.shrink_folio(k3, f3)
    k3.alloc.set_policy(FailPolicy(budget_pages=k3.alloc.pages_in_use), counted=0)
    assert swapfile_unuse.sys_swapoff(k3) == ENOMEM and k3.swap is not None
    consistent(k3)


def test_zswap_ever_enabled_keeps_the_split() -> None:
    """v2 15/16 gates the PMD swap entry on zswap_never_enabled(): zswap cannot rebuild a 2 MiB folio."""
    k, mm, f = _shared_thp(2, zswap_ever_enabled=True)
    assert vmscan.shrink_folio(k, f) is vmscan.Reclaimed.SWAPPED
    assert not any(isinstance(m.pt.slot(A), SwapPmd) for m in k.procs.values())
    assert ev(k, "thp_split_pmd") == 2 and ev(k, "thp_swpout") == 1
    consistent(k)
