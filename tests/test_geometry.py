"""trace/geometry.py: 4K/2M traces mapped page-for-page, PMD-for-PMD onto other page sizes.

Address diagrams are arena offsets; one cell is one base page, ``|`` a PMD boundary::

    x86-64    |0 .. 1M .. 2M|2M+4K ..        (512 pages per PMD)
    arm64-16k |0 .. 256 pages .. 32M|32M+16K (2048 pages per PMD)
"""

from __future__ import annotations

import glob

import pytest

from thpsim.errors import ThpsimError
from thpsim.model.arch import ARCHES
from thpsim.model.engine import run_model
from thpsim.trace.format import load, parse
from thpsim.trace.geometry import TRACE_GEOMETRY, Geometry, check_geometry, map_offset, map_trace

K, M = 1024, 1024 * 1024
G16 = Geometry(16 * K, 32 * M)


def test_offsets_keep_their_page_and_pmd() -> None:
    # start, middle and end of a PMD keep their place; sub-page bytes keep theirs from the page's start or end
    assert [map_offset(v, G16) for v in (0, 4 * K, 1 * M, 1 * M + 4 * K, 2 * M, 2 * M + 4 * K, 4 * M - 4 * K,
                                         100, 2 * M - 1)] == \
        [0, 16 * K, 16 * M, 16 * M + 16 * K, 32 * M, 32 * M + 16 * K, 64 * M - 16 * K, 100, 32 * M - 1]


def test_the_mapping_is_monotonic_and_the_identity_on_x86() -> None:
    x86 = Geometry(4 * K, 2 * M)
    vals = list(range(0, 4 * M, 1024)) + [2 * M - 1, 2047, 2048, 4095]
    assert all(map_offset(v, x86) == v for v in vals)
    mapped = [map_offset(v, G16) for v in sorted(vals)]
    assert mapped == sorted(mapped)


def test_ranges_map_by_their_ends() -> None:
    # [1M, 2M) of a THP: the second half on x86-64, the second half of the 16K-page THP
    t = parse('{"op": "mmap", "id": "a", "len": "2M"}\n{"op": "madvise", "id": "a", "off": "1M", "len": "1M", '
              '"advice": "dontneed", "expect": {"result": 0}}\n{"op": "write", "id": "a", "stride": "4K"}')
    m = map_trace(t, G16)
    assert (m.ops[0].start, m.ops[0].length) == (0, 32 * M)
    assert (m.ops[1].start, m.ops[1].length) == (16 * M, 16 * M)
    assert m.ops[1].expect == ()                     # x86-64 numbers are dropped
    assert m.ops[2].stride == 16 * K
    assert m.regions == (("a", 0, 32 * M),)


def test_straddling_range_still_straddles() -> None:
    # [2M-4K, 2M+4K): the last page of one PMD and the first of the next
    t = parse('{"op": "mmap", "id": "a", "len": "4M"}\n{"op": "munmap", "id": "a", "off": "2M-4K", "len": "8K"}')
    op = map_trace(t, G16).ops[1]
    assert (op.start, op.start + op.length) == (32 * M - 16 * K, 32 * M + 16 * K)


def test_native_geometry_is_the_identity() -> None:
    t = load("scenarios/cold-partial.jsonl")
    assert map_trace(t, TRACE_GEOMETRY) is t


@pytest.mark.parametrize("arch", ["s390x", "ppc64-hash", "ppc64-radix"])
def test_fewer_than_512_pages_per_pmd_is_refused(arch: str) -> None:
    a = ARCHES[arch]
    with pytest.raises(ThpsimError, match="fewer than the 512 pages"):
        check_geometry(Geometry(a.page_size, a.pmd_size))


def test_every_scenario_maps_onto_arm64_16k_and_runs() -> None:
    paths = sorted(glob.glob("scenarios/*.jsonl") + glob.glob("scenarios/series/*.jsonl"))
    assert paths
    for p in paths:
        r = run_model(map_trace(load(p), G16), arch="arm64-16k", design="lazy", check=True)
        assert r.violations == [], p


def test_a_mapped_thp_is_one_16k_thp() -> None:
    """cold-partial on arm64-16k: one 32M THP, MADV_COLD of its first half splits it; VmPTE is the PMD
    table + the deposit (the PUD table is the program text's: 32 KiB measured in the arm64-16k guest)."""
    r = run_model(map_trace(load("scenarios/cold-partial.jsonl"), G16), arch="arm64-16k", check=True)
    write, cold = r.steps[2], r.steps[3]
    assert write.procs[0].vm_pte_kb == 32 and write.procs[0].rss_anon_kb == 32 * 1024
    assert write.counter("thp_fault_alloc") == 1 and cold.counter("thp_split_pmd") == 1


def test_the_arena_grows_with_the_pmd() -> None:
    from thpsim.trace.geometry import arena_size

    # layout-fresh-gib-tables maps a region at "511G": on 16K pages it sits at 8176 GiB, inside the mapped arena
    assert arena_size(TRACE_GEOMETRY) == 512 << 30
    assert arena_size(G16) == 8 << 40 and map_offset(511 << 30, G16) + 32 * M <= arena_size(G16)


def test_arm64_contpte_fold_boundary_queues_a_deferred_split() -> None:
    """arm64-16k, one 32M THP = 2048 PTEs = 16 contpte blocks of 128 after the split::

        mprotect page 0 r and back:  [blk0 unfolded][blk1 folded] ... [blk15 folded]
        MADV_DONTNEED of all 2048:   batch 1 = blk0 (folio partially mapped: deferred split +1), batch 2 = rest

    x86-64 has no contpte: one batch, no deferred split (both measured: docs/findings.md L12)."""
    t = parse('{"op": "mmap", "id": "a", "len": "2M"}\n{"op": "madvise", "id": "a", "advice": "hugepage"}\n'
              '{"op": "write", "id": "a", "fill": true}\n'
              '{"op": "mprotect", "id": "a", "len": "4K", "prot": "r"}\n'
              '{"op": "mprotect", "id": "a", "len": "4K", "prot": "rw"}\n'
              '{"op": "madvise", "id": "a", "advice": "dontneed"}')
    arm = run_model(map_trace(t, G16), arch="arm64-16k", check=True).steps[-1]
    x86 = run_model(t, check=True).steps[-1]
    assert (arm.counter("thp_deferred_split_page"), x86.counter("thp_deferred_split_page")) == (1, 0)
    # mprotect of the last page of a block and back refolds it (contpte_try_fold on the block's last entry)
    t2 = parse('{"op": "mmap", "id": "a", "len": "2M"}\n{"op": "madvise", "id": "a", '
               '"advice": "hugepage"}\n{"op": "write", "id": "a", "fill": true}\n'
               '{"op": "mprotect", "id": "a", "off": "2M-4K", "len": "4K", "prot": "r"}\n'
               '{"op": "mprotect", "id": "a", "off": "2M-4K", "len": "4K", "prot": "rw"}\n'
               '{"op": "madvise", "id": "a", "advice": "dontneed"}')
    assert run_model(map_trace(t2, G16), arch="arm64-16k", check=True).steps[-1].counter(
        "thp_deferred_split_page") == 0
