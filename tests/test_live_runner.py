"""Live-kernel tests of thpsim.live.runner (x86-64, THP enabled, root). Each runs a short trace (< 2 s)."""

from __future__ import annotations

import zlib

import pytest

from thpsim.live.env import skip_reason
from thpsim.observation import ProcObs, StepObs, to_dict
from thpsim.trace.format import parse

_REASON = skip_reason()
pytestmark = [pytest.mark.live, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

KB_PTE = 4          # one PTE table (deposit)
KB_UPPER = 4 + 4    # the arena's PMD table + PUD table (the arena is alone in its 512 GiB)


def run(text: str) -> list[StepObs]:
    from thpsim.live.runner import run_live
    return run_live(parse('{"thpsim": 1, "name": "t"}\n' + text, source="test"), timeout=60)


def main(s: StepObs) -> ProcObs:
    p = s.proc_obs("main")
    assert p is not None
    return p


THP = """
{"op": "mmap", "id": "a", "len": "2M"}
{"op": "madvise", "id": "a", "advice": "hugepage"}
{"op": "write", "id": "a", "len": "4K"}
"""


def test_thp_fault_then_partial_munmap_splits() -> None:
    steps = run(THP + '{"op": "munmap", "id": "a", "off": "8K", "len": "4K"}\n')
    before = steps[1]
    assert main(before).vm_pte_kb == 0 and main(before).rss_anon_kb == 0
    fault = main(steps[2])
    assert fault.vm_pte_kb == KB_PTE + KB_UPPER
    assert fault.rss_anon_kb == 2048 and fault.vm_rss_kb == 2048
    assert [(r.start, r.end, r.kind) for r in fault.pagemap] == [(0, 2 << 20, "pmd")]
    assert fault.rollup()["anon_huge_kb"] == 2048
    assert steps[2].counter("thp_fault_alloc") >= 1  # global counter: other processes may add to it
    split = main(steps[3])
    assert steps[3].result == 0
    assert steps[3].counter("thp_split_pmd") >= 1
    assert split.vm_pte_kb == KB_PTE + KB_UPPER     # the deposit became the PTE table
    assert split.rss_anon_kb == 2044
    assert {r.kind for r in split.pagemap} == {"pte_thp"}
    assert [(r.start, r.end) for r in split.pagemap] == [(0, 8192), (12288, 2 << 20)]
    assert split.rollup()["anon_huge_kb"] == 0


def test_fork_child_deltas() -> None:
    steps = run('{"op": "fork", "child": "empty"}\n{"op": "exit", "proc": "empty"}\n'
                + THP + '{"op": "fork", "child": "c"}\n')
    empty = steps[0].proc_obs("empty")
    assert empty is not None
    assert (empty.vm_pte_kb, empty.vm_rss_kb, empty.rss_anon_kb, empty.vm_lck_kb, empty.vm_swap_kb) == (0, 0, 0, 0, 0)
    assert steps[1].proc_obs("empty") is None
    child = steps[-1].proc_obs("c")
    assert child is not None
    assert child.vm_pte_kb == KB_PTE + KB_UPPER
    assert child.rss_anon_kb == 2048
    assert [r.kind for r in child.pagemap] == ["pmd"]
    assert main(steps[-1]).vm_pte_kb == KB_PTE + KB_UPPER


def test_faults_and_errnos() -> None:
    steps = run("""
{"op": "mmap", "id": "n", "len": "2M", "prot": "none"}
{"op": "write", "id": "n", "len": "4K"}
{"op": "read", "id": "n", "len": "4K"}
{"op": "munmap", "at": "4K+1", "len": "4K"}
{"op": "mprotect", "id": "n", "prot": "r"}
{"op": "read", "id": "n", "len": "8K"}
{"op": "write", "id": "n", "len": "4K"}
{"op": "khugepaged"}
""")
    assert [s.result for s in steps] == [0, "SIGSEGV", "SIGSEGV", "EINVAL", 0, 0, "SIGSEGV", None]
    assert steps[5].data is not None and len(steps[5].data) == 8
    assert steps[7].notes == ("model-only op: not run on the live kernel",)
    for s in steps:
        assert main(s).rss_anon_kb == 0


def test_huge_zero_page_on_read_fault() -> None:
    steps = run("""
{"op": "mmap", "id": "a", "len": "2M"}
{"op": "madvise", "id": "a", "advice": "hugepage"}
{"op": "read", "id": "a", "len": "4K"}
{"op": "write", "id": "a", "len": "4K"}
""")
    z = main(steps[2])
    assert steps[2].data == f"{zlib.crc32(bytes(1)):08x}"
    assert [(r.start, r.end, r.kind) for r in z.pagemap] == [(0, 2 << 20, "pmd_zero")]
    assert z.vm_pte_kb == KB_PTE + KB_UPPER
    assert z.rss_anon_kb == 0 and z.vm_rss_kb == 0
    assert z.rollup()["anon_huge_kb"] == 0 and z.rollup()["rss_kb"] == 0
    w = main(steps[3])  # write to the huge zero PMD: a THP that reuses the deposit
    assert [r.kind for r in w.pagemap] == ["pmd"]
    assert w.vm_pte_kb == KB_PTE + KB_UPPER and w.rss_anon_kb == 2048


def test_guard_mremap_and_determinism() -> None:
    text = """
{"op": "mmap", "id": "a", "len": "4M"}
{"op": "madvise", "id": "a", "advice": "hugepage"}
{"op": "write", "id": "a", "stride": "2M"}
{"op": "madvise", "id": "a", "off": "2M", "len": "4K", "advice": "guard_install"}
{"op": "write", "id": "a", "off": "2M", "len": "8K"}
{"op": "mmap", "id": "b", "len": "4K"}
{"op": "mmap", "id": "c", "len": "4K"}
{"op": "mremap", "id": "b", "new_len": "8M", "flags": ["maymove"]}
{"op": "fork", "child": "k"}
{"op": "exit"}
"""
    first = run(text)
    assert [s.result for s in first[:5]] == [0, 0, 0, 0, "SIGSEGV"]
    runs = [(r.start, r.end, r.kind) for r in main(first[4]).pagemap]
    assert runs[0] == (0, 2 << 20, "pmd")
    assert (2 << 20, (2 << 20) + 4096, "guard") in runs
    assert {k for _s, _e, k in runs[1:]} == {"guard", "pte_thp"}
    dest = parse('{"thpsim": 1}\n' + text).ops[7].dest
    assert first[7].result == dest and dest != first[5].result  # could not grow in place: moved to the slot
    assert [(v.start, v.end) for v in main(first[7]).vmas][-1] == (dest, dest + (8 << 20))
    assert first[-2].proc_obs("k") is not None
    assert first[-1].result == 0 and first[-1].procs == ()  # main's exit ends the trace (and its children)
    second = run(text)
    strip = [[to_dict(p) for p in s.procs] + [s.result, s.data] for s in first]
    assert strip == [[to_dict(p) for p in s.procs] + [s.result, s.data] for s in second]
