"""The series' kselftest ``tools/testing/selftests/mm/thp_pmd_split_test.c`` (spec series.md §7) run on the model.

Five tests, exactly as posted: ``partial_munmap``, ``partial_mprotect``, ``partial_mlock``, ``partial_mremap``,
``partial_madv_dontneed``. Each runs the fixture (``mmap(NULL, 4*pmdsize)``, THP-aligned), ``allocate_thp``
(MADV_HUGEPAGE, memset 0xAA, ``check_huge_anon`` → SKIP "Failed to allocate THP"), the test body with the
test's own checks, and ``log_and_check_pmd_split`` (``thp_split_pmd`` must grow, ``thp_split_pmd_failed`` must
not). Counters are system-wide in the real test, so they accumulate over the run (0 → 1, 1 → 2, ...), as in the
TAP log of the cover letters.

Each result also says which kernel path really split the PMD (from the model's split sites): munmap, mprotect and
mlock split in ``__split_vma`` → ``vma_adjust_trans_huge``, not in the paths the test comments name; mremap with
old_len == new_len is a no-op and the split comes from the cleanup munmap; only ``partial_madv_dontneed`` goes
through ``zap_pmd_range``.

``inject=True`` fails the first split allocation of each test (``pte_alloc_one@split``, fail_nth 1) and reports
what the real test would do: ASSERT failures (FAIL) or its ENOMEM skips.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from thpsim.model import uaccess
from thpsim.model.arch import get_arch
from thpsim.model.engine import Simulator, make_kernel
from thpsim.model.knobs import Knobs
from thpsim.model.page_alloc import FailPolicy
from thpsim.trace.format import Trace, parse

NAMES = ("partial_munmap", "partial_mprotect", "partial_mlock", "partial_mremap", "partial_madv_dontneed")
INJECT_POLICY = FailPolicy(fail_nth=1, fail_site="pte_alloc_one@split")

# what the split caller names mean as kernel paths
SPLIT_PATHS = {
    "__split_vma": "__split_vma -> vma_adjust_trans_huge",
    "zap_pmd_range": "zap_pmd_range -> __split_huge_pmd",
    "change_pmd_range": "change_pmd_range -> __split_huge_pmd",
    "move_page_tables": "move_page_tables -> split_huge_pmd",
    "unmap_vmas": "unmap_vmas -> zap_pmd_range -> __split_huge_pmd",
}
# what each test's comment says it exercises (series.md §7)
CLAIMED = {
    "partial_munmap": "zap_pmd_range",
    "partial_mprotect": "change_pmd_range",
    "partial_mlock": "walk_page_range",
    "partial_mremap": "move_page_tables",
    "partial_madv_dontneed": "zap_pmd_range",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class SelftestResult:
    number: int
    name: str
    status: str                      # pass | fail | skip
    reason: str = ""
    checks: tuple[Check, ...] = ()
    split_before: int = 0
    split_after: int = 0
    failed_before: int = 0
    failed_after: int = 0
    split_paths: tuple[str, ...] = ()  # "__split_vma -> vma_adjust_trans_huge (munmap)"
    failed_paths: tuple[str, ...] = ()
    op_results: tuple[tuple[str, Any], ...] = ()
    violations: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status != "fail"


@dataclass
class _Ctx:
    sim: Simulator
    H: int
    P: int
    base: int
    ops: list[dict[str, Any]] = field(default_factory=list)
    results: list[tuple[str, Any]] = field(default_factory=list)
    split_paths: list[str] = field(default_factory=list)
    failed_paths: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n: int = 0

    def op(self, label: str, **obj: Any) -> Any:
        """Run one syscall / access as a trace op; returns its result."""
        text = json.dumps({"op": "mmap", "id": "mem", "at": 0, "len": 4 * self.H}) + "\n" + json.dumps(obj)
        parsed = parse(text).ops[1]
        obs = self.sim.step(self.n, parsed)
        self.n += 1
        self.ops.append(obj)
        log = self.sim.k.log
        self.split_paths += [f"{SPLIT_PATHS.get(s, s)} ({label})" for s in log.split_sites]
        self.failed_paths += [f"{SPLIT_PATHS.get(s, s)} ({label})" for s in log.failed_sites]
        self.violations += [f"{label}: {v}" for v in obs.violations]
        self.notes += list(obs.notes)
        self.results.append((label, obs.result))
        return obs.result

    def byte(self, off: int) -> int:
        """A load of one byte (faults in like the test's own read)."""
        k = self.sim.k
        mm = k.procs["main"]
        a = self.base + off
        self.ops.append({"op": "read", "at": off, "len": 1})
        res, raw, _ = uaccess.access(k, mm, a, a + 1, write=False, stride=1, fill=False, byte=0)
        if res != 0:
            raise AssertionError(f"load at A+{off:#x}: {res}")
        return raw[0]

    def word(self, off: int) -> int:
        return int.from_bytes(bytes(self.byte(off + i) for i in range(8)), "little")

    def anon_huge_kb(self) -> int:
        obs = self.sim.observe(self.n, parse(json.dumps({"op": "expect"})).ops[0], None, None, [])
        for p in obs.procs:
            if p.proc == "main":
                return sum(v.anon_huge_kb for v in p.vmas if v.start <= 0 < v.end)
        return 0


def _wbytes(ctx: _Ctx, off: int, value: int, label: str) -> None:
    for i, b in enumerate(value.to_bytes(8, "little")):
        ctx.op(label, op="write", at=off + i, len=1, byte=b)


class _Skip(Exception):
    pass


def _allocate_thp(ctx: _Ctx) -> None:
    H = ctx.H
    if ctx.op("madvise(A, H, MADV_HUGEPAGE)", op="madvise", at=0, len=H, advice="hugepage") != 0:
        raise _Skip("Failed to allocate THP")
    ctx.op("memset(A, 0xAA, H)", op="write", at=0, len=H, fill=True, byte=0xAA)
    if ctx.anon_huge_kb() != H >> 10:
        raise _Skip("Failed to allocate THP")


def _body(name: str, ctx: _Ctx) -> list[Check]:
    H, P = ctx.H, ctx.P
    checks: list[Check] = []

    def assert_eq(what: str, got: Any, want: Any) -> None:
        checks.append(Check(what, got == want, f"got {got!r}, expected {want!r}"))

    if name == "partial_munmap":
        rc = ctx.op("munmap(A+P, P)", op="munmap", at=P, len=P)
        assert_eq("ASSERT_EQ(munmap(A + P, P), 0)", rc, 0)
    elif name == "partial_mprotect":
        rc = ctx.op("mprotect(A+P, P, PROT_READ)", op="mprotect", at=P, len=P, prot="r")
        assert_eq("ASSERT_EQ(mprotect(A + P, P, PROT_READ), 0)", rc, 0)
        ctx.op("A[0] = 0xDD", op="write", at=0, len=1, byte=0xDD)
        ctx.op("A[H-1] = 0xEE", op="write", at=H - 1, len=1, byte=0xEE)
        assert_eq("ASSERT_EQ(A[0], 0xDD)", ctx.byte(0), 0xDD)
        assert_eq("ASSERT_EQ(A[H-1], 0xEE)", ctx.byte(H - 1), 0xEE)
    elif name == "partial_mlock":
        rc = ctx.op("mlock(A+P, P)", op="mlock", at=P, len=P)
        if rc == "ENOMEM":
            raise _Skip("mlock failed with ENOMEM (the test assumes a resource limit)")
        assert_eq("ASSERT_EQ(mlock(A + P, P), 0)", rc, 0)
        ctx.op("munlock(A+P, P)", op="munlock", at=P, len=P)
    elif name == "partial_mremap":
        _wbytes(ctx, P, 0xABCD, "ptr[P/8] = 0xABCD")
        _wbytes(ctx, 0, 0x1234, "ptr[0] = 0x1234")
        _wbytes(ctx, H - P, 0x4567, "ptr[(H-P)/8] = 0x4567")
        new = ctx.op("mremap(A+P, P, P, MREMAP_MAYMOVE)", op="mremap", at=P, len=P, new_len=P, flags=["maymove"])
        if new == "ENOMEM":
            raise _Skip("mremap failed with ENOMEM")
        assert_eq("mremap() != MAP_FAILED", isinstance(new, int), True)
        if not isinstance(new, int):
            return checks
        if new == P:
            ctx.notes.append("mremap(old_len == new_len) without MREMAP_FIXED is a no-op returning A+P: "
                             "move_page_tables never runs")
        assert_eq("ASSERT_EQ(new[0], 0xABCD)", ctx.word(new), 0xABCD)
        assert_eq("ASSERT_EQ(ptr[0], 0x1234)", ctx.word(0), 0x1234)
        assert_eq("ASSERT_EQ(ptr[(H-P)/8], 0x4567)", ctx.word(H - P), 0x4567)
        rc = ctx.op("munmap(new, P)", op="munmap", at=new, len=P)
        if rc != 0:
            ctx.notes.append(f"munmap(new, P) returned {rc} (the test does not check it)")
    elif name == "partial_madv_dontneed":
        ctx.op("memset(A, 0xDD, H)", op="write", at=0, len=H, fill=True, byte=0xDD)
        rc = ctx.op("madvise(A+P, P, MADV_DONTNEED)", op="madvise", at=P, len=P, advice="dontneed")
        assert_eq("ASSERT_EQ(madvise(A + P, P, MADV_DONTNEED), 0)", rc, 0)
        assert_eq("ASSERT_EQ(A[0], 0xDD)", ctx.byte(0), 0xDD)
        assert_eq("ASSERT_EQ(A[2P], 0xDD)", ctx.byte(2 * P), 0xDD)
        assert_eq("ASSERT_EQ(A[H-1], 0xDD)", ctx.byte(H - 1), 0xDD)
        assert_eq("ASSERT_EQ(A[P], 0x00) (zero check)", ctx.byte(P), 0x00)
    else:  # pragma: no cover - guarded by NAMES
        raise ValueError(name)
    return checks


def run_selftest(number: int, name: str, *, design: str = "lazy", inject: bool = False, arch: str = "x86_64",
                 knobs: Knobs | None = None, split_offset: int = 0, failed_offset: int = 0,
                 record: list[dict[str, Any]] | None = None) -> SelftestResult:
    """One test in a fresh simulated system; the counter offsets make the logged values system-wide."""
    if name not in NAMES:
        raise ValueError(f"unknown selftest {name!r}; tests: {', '.join(NAMES)}")
    a = get_arch(arch)
    k = make_kernel(design=design, arch=arch, knobs=knobs or Knobs(thp_enabled="madvise"),
                    policy=INJECT_POLICY if inject else None)
    sim = Simulator(k, check=True, shadow=True)
    ctx = _Ctx(sim, a.pmd_size, a.page_size, sim.base)
    ev = k.vmstat.events
    # fixture setup: counters read, then mmap(NULL, 4 * pmdsize) (THP-aligned, so aligned == mem)
    sb, fb = ev["thp_split_pmd"], ev["thp_split_pmd_failed"]
    ctx.op("mmap(NULL, 4*H)", op="mmap", id="mem", at=0, len=4 * ctx.H)
    status, reason = "pass", ""
    checks: list[Check] = []
    try:
        _allocate_thp(ctx)
        checks = _body(name, ctx)
        sa, fa = ev["thp_split_pmd"], ev["thp_split_pmd_failed"]
        checks.append(Check("ASSERT_GT(thp_split_pmd after, before) (counter check)", sa > sb,
                            f"{sb + split_offset} -> {sa + split_offset}"))
        checks.append(Check("ASSERT_EQ(thp_split_pmd_failed after, before) (counter check)", fa == fb,
                            f"{fb + failed_offset} -> {fa + failed_offset}"))
        bad = [c for c in checks if not c.ok]
        if bad:
            status, reason = "fail", bad[0].name
    except _Skip as e:
        status, reason = "skip", str(e)
    sa, fa = ev["thp_split_pmd"], ev["thp_split_pmd_failed"]
    ctx.op("munmap(mem, 4*H) (teardown)", op="munmap", at=0, len=4 * ctx.H)
    if record is not None:
        record.extend(ctx.ops)
    # invariants were checked after every step (check=True); a violation raises InvariantViolation
    return SelftestResult(
        number=number, name=name, status=status, reason=reason, checks=tuple(checks),
        split_before=sb + split_offset, split_after=sa + split_offset,
        failed_before=fb + failed_offset, failed_after=fa + failed_offset,
        split_paths=tuple(p for p in ctx.split_paths if "(teardown)" not in p),
        failed_paths=tuple(ctx.failed_paths), op_results=tuple(ctx.results),
        violations=tuple(ctx.violations), notes=tuple(dict.fromkeys(ctx.notes)),
    )


def run_selftests(design: str = "lazy", inject: bool = False, arch: str = "x86_64",
                  knobs: Knobs | None = None) -> list[SelftestResult]:
    """All five tests in order, with system-wide (accumulating) counters."""
    out: list[SelftestResult] = []
    so = fo = 0
    for i, name in enumerate(NAMES, 1):
        r = run_selftest(i, name, design=design, inject=inject, arch=arch, knobs=knobs, split_offset=so,
                         failed_offset=fo)
        so, fo = r.split_after, r.failed_after
        out.append(r)
    return out


def selftest_trace(name: str, *, arch: str = "x86_64") -> Trace:
    """The test as a plain trace (every syscall, access and check load it makes on the success path), for
    campaigns and for the live runner."""
    ops: list[dict[str, Any]] = []
    run_selftest(NAMES.index(name) + 1, name, design="upstream", arch=arch, record=ops)
    hdr = {"thpsim": 1, "name": f"selftest-{name}",
           "description": f"series selftest thp_pmd_split_test.c {name} (series.md §7), generated by "
                          "thpsim.analysis.selftest"}
    return parse("\n".join(json.dumps(o) for o in [hdr, *ops]), source=f"selftest-{name}")


def split_path_summary(r: SelftestResult) -> str:
    paths = Counter(p.split(" (")[0] for p in r.split_paths)
    return ", ".join(paths) or "none"


def format_tap(results: list[SelftestResult]) -> str:
    """kselftest TAP 13, as the harness prints it (plus '# split in ...' diagnostics from the model)."""
    lines = ["TAP version 13", f"1..{len(results)}",
             f"# Starting {len(results)} tests from 1 test cases."]
    for r in results:
        lines.append(f"#  RUN           thp_pmd_split.{r.name} ...")
        for p in r.split_paths:
            lines.append(f"# split in {p}")
        for p in r.failed_paths:
            lines.append(f"# split FAILED (-ENOMEM) in {p}")
        claimed = CLAIMED[r.name]
        real = split_path_summary(r)
        if r.split_paths and not real.startswith(claimed):
            lines.append(f"# test comment names {claimed}; the PMD is really split in {real}")
        for n in r.notes:
            lines.append(f"# {n}")
        if r.status != "skip":
            lines.append(f"# thp_split_pmd: {r.split_before} -> {r.split_after}")
            lines.append(f"# thp_split_pmd_failed: {r.failed_before} -> {r.failed_after}")
        for c in r.checks:
            if not c.ok:
                lines.append(f"# {c.name} failed: {c.detail}")
        for v in r.violations:
            lines.append(f"# data-contract violation: {v}")
        if r.status == "pass":
            lines.append(f"#            OK  thp_pmd_split.{r.name}")
            lines.append(f"ok {r.number} {r.name}")
        elif r.status == "skip":
            lines.append(f"#      SKIP      {r.reason}")
            lines.append(f"#            OK  thp_pmd_split.{r.name}")
            lines.append(f"ok {r.number} {r.name} # SKIP {r.reason}")
        else:
            lines.append(f"#          FAIL  thp_pmd_split.{r.name}")
            lines.append(f"not ok {r.number} {r.name}")
    npass = sum(r.status == "pass" for r in results)
    nfail = sum(r.status == "fail" for r in results)
    nskip = sum(r.status == "skip" for r in results)
    lines.append(f"# {'FAILED' if nfail else 'PASSED'}: {npass + nskip} / {len(results)} tests passed.")
    lines.append(f"# Totals: pass:{npass} fail:{nfail} xfail:0 xpass:0 skip:{nskip} error:0")
    return "\n".join(lines)
