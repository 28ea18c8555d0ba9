"""The series' five selftests (tools/testing/selftests/mm/thp_pmd_split_test.c, series v3 20-24/24) run on the
LIVE kernel, expressed as thpsim traces so the live runner executes them in an isolated child.

Each test checks what the real test checks: the THP formed (smaps AnonHugePages = one PMD after allocate_thp),
the operation's return value, the data checks (read digests compared with the model's, which computes the
bytes the test expects), ``thp_split_pmd`` rising and ``thp_split_pmd_failed`` unchanged (on a kernel without
the series that counter does not exist: reported, and the check is skipped). TAP 13 output like kselftest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from thpsim.trace import format as tf

P, H = "4K", "2M"
# allocate_thp(): madvise(HUGEPAGE) + memset 0xAA over the aligned PMD; the fixture maps 4 PMDs
_SETUP = [
    {"thpsim": 1, "name": "{name}"},
    {"op": "mmap", "id": "mem", "len": "8M"},
    {"op": "madvise", "id": "mem", "len": H, "advice": "hugepage"},
    {"op": "write", "id": "mem", "len": H, "fill": True, "byte": 0xAA},
]
TESTS: dict[str, list[dict]] = {
    "partial_munmap": [{"op": "munmap", "id": "mem", "off": P, "len": P}],
    "partial_mprotect": [
        {"op": "mprotect", "id": "mem", "off": P, "len": P, "prot": "r"},
        {"op": "write", "id": "mem", "len": "1", "byte": 0xDD},
        {"op": "write", "id": "mem", "off": "2M-1", "len": "1", "byte": 0xEE},
        {"op": "read", "id": "mem", "len": "1"},
        {"op": "read", "id": "mem", "off": "2M-1", "len": "1"},
    ],
    "partial_mlock": [
        {"op": "mlock", "id": "mem", "off": P, "len": P},
        {"op": "munlock", "id": "mem", "off": P, "len": P},
    ],
    "partial_mremap": [
        {"op": "write", "id": "mem", "off": P, "len": "1", "byte": 0xCD},
        {"op": "mremap", "id": "mem", "off": P, "len": P, "new_len": P, "flags": ["maymove"], "new_id": "new"},
        {"op": "read", "id": "mem", "off": P, "len": "1"},
        {"op": "munmap", "id": "mem", "off": P, "len": P},
    ],
    "partial_madv_dontneed": [
        {"op": "write", "id": "mem", "len": H, "fill": True, "byte": 0xDD},
        {"op": "madvise", "id": "mem", "off": P, "len": P, "advice": "dontneed"},
        {"op": "read", "id": "mem", "len": "1"},
        {"op": "read", "id": "mem", "off": "8K", "len": "1"},
        {"op": "read", "id": "mem", "off": "2M-1", "len": "1"},
        {"op": "read", "id": "mem", "off": P, "len": "1"},
    ],
}


def selftest_trace(name: str) -> tf.Trace:
    import json

    lines = [json.dumps(_SETUP[0]).replace("{name}", f"selftest-{name}")]
    lines += [json.dumps(o) for o in _SETUP[1:]]
    lines += [json.dumps(o) for o in TESTS[name]]
    return tf.parse("\n".join(lines), source=f"selftest:{name}")


@dataclass
class LiveTest:
    name: str
    ok: bool
    skipped: bool = False
    lines: list[str] = field(default_factory=list)


@dataclass
class LiveSelftests:
    kernel: str
    series_applied: bool
    tests: list[LiveTest]


def run_selftests_live() -> LiveSelftests:
    from thpsim.errors import ThpsimError
    from thpsim.live.env import detect, skip_reason
    from thpsim.live.runner import run_live
    from thpsim.model.engine import run_model

    why = skip_reason()
    if why:
        raise ThpsimError(f"cannot run the selftests on the live kernel: {why}")
    env = detect()
    out: list[LiveTest] = []
    for name in TESTS:
        trace = selftest_trace(name)
        steps = run_live(trace)
        expect = run_model(trace, knobs=env.knobs())
        t = LiveTest(name, ok=True)
        thp = steps[2].procs[0]
        ahp = sum(v.anon_huge_kb for v in thp.vmas)
        if ahp != 2048:
            out.append(LiveTest(name, ok=True, skipped=True, lines=["Failed to allocate THP"]))
            continue
        for s, m in zip(steps[3:], expect.steps[3:], strict=False):
            if s.result != m.result:
                t.ok = False
                t.lines.append(f"line {s.line} {s.op}: returned {s.result!r}, expected {m.result!r}")
            if s.data != m.data:
                t.ok = False
                t.lines.append(f"line {s.line} {s.op}: read {s.data}, expected {m.data}")
        before = dict(steps[2].vmstat).get("thp_split_pmd", 0)
        after = dict(steps[-1].vmstat).get("thp_split_pmd", 0)
        t.lines.append(f"thp_split_pmd: +{after - before}")
        if after <= before:
            t.ok = False
        if env.has_split_pmd_failed:
            fb = dict(steps[2].vmstat).get("thp_split_pmd_failed", 0)
            fa = dict(steps[-1].vmstat).get("thp_split_pmd_failed", 0)
            t.lines.append(f"thp_split_pmd_failed: +{fa - fb}")
            t.ok = t.ok and fa == fb
        else:
            t.lines.append("thp_split_pmd_failed: not in /proc/vmstat (series not applied); check skipped")
        out.append(t)
    return LiveSelftests(kernel=env.kernel_release, series_applied=env.has_split_pmd_failed, tests=out)


def format_tap_live(r: LiveSelftests) -> str:
    lines = ["TAP version 13", f"# kernel {r.kernel}: lazy PTE series "
             f"{'applied' if r.series_applied else 'NOT applied (upstream deposit); running the tests anyway'}",
             f"1..{len(r.tests)}"]
    npass = nfail = nskip = 0
    for i, t in enumerate(r.tests, 1):
        for ln in t.lines:
            lines.append(f"# {ln}")
        if t.skipped:
            nskip += 1
            lines.append(f"ok {i} {t.name} # SKIP {t.lines[0] if t.lines else ''}")
        elif t.ok:
            npass += 1
            lines.append(f"ok {i} {t.name}")
        else:
            nfail += 1
            lines.append(f"not ok {i} {t.name}")
    lines.append(f"# Totals: pass:{npass} fail:{nfail} xfail:0 xpass:0 skip:{nskip} error:0")
    return "\n".join(lines)
