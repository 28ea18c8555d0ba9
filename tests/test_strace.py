"""The strace importer: hand-written log snippets, address mapping, bundled examples."""

from __future__ import annotations

import glob
import json
import os

import pytest

from thpsim.cli import main
from thpsim.errors import TraceError
from thpsim.trace import format as fmt
from thpsim.trace.strace import import_strace, parse_perf_faults

GiB, MiB = fmt.GiB, fmt.MiB
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")

ANON = "PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0"


def kinds(res) -> list[str]:
    return [o.kind for o in res.trace.ops]


def test_basic_mmap_write_all_and_file_ignored() -> None:
    log = f"""\
100   10:00:00.000001 execve("/bin/x", ["x"], 0x7ffd /* 1 var */) = 0
100   10:00:00.000002 mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, 3, 0) = 0x7f0000000000
100   10:00:00.000003 mmap(NULL, 4194304, {ANON}) = 0x7f0000200000
100   10:00:00.000004 madvise(0x7f0000200000, 4194304, MADV_HUGEPAGE) = 0
100   10:00:00.000005 munmap(0x7f0000000000, 8192) = 0
100   10:00:00.000006 exit_group(0)     = ?
100   10:00:00.000007 +++ exited with 0 +++
"""
    res = import_strace(log)
    assert kinds(res) == ["mmap", "write", "madvise", "exit"]
    assert res.stats["ignored"]["file mapping"] == 2
    assert res.trace.ops[0].length == 4 * MiB and res.trace.ops[0].start % (2 * MiB) == 0
    assert res.trace.ops[2].advice == "hugepage"
    assert res.warnings == []
    none = import_strace(log, touch="none")
    assert kinds(none) == ["mmap", "madvise", "exit"]


def test_unfinished_resumed_and_pid_prefix_forms() -> None:
    log = f"""\
[pid  200] mmap(NULL, 2097152, {ANON} <unfinished ...>
[pid  201] mmap(NULL, 4096, {ANON}) = 0x7f1000000000
[pid  200] <... mmap resumed>) = 0x7f1000200000
"""
    # unprefixed lines are the root process; [pid N] lines of unknown pids are reported
    res = import_strace(f"mmap(NULL, 4096, {ANON}) = 0x7f2000000000\n" + log, touch="none")
    assert kinds(res) == ["mmap"]
    assert {w.line for w in res.warnings} == {2, 3}
    # the same lines after the root clones both tasks
    root = ("clone(child_stack=NULL, flags=SIGCHLD) = 200\n"
            "clone(child_stack=0x7f, flags=CLONE_VM|CLONE_THREAD|CLONE_SIGHAND) = 201\n")
    res = import_strace(root + log.replace("[pid  201]", "[pid 201]"), touch="none")
    assert [(o.kind, o.proc, getattr(o, "length", 0)) for o in res.trace.ops] == [("fork", "main", 0), ("mmap", "main", 4096),
                                                                    ("mmap", "p200", 2 * MiB)]
    assert res.warnings == []
    # -o form without timestamps, pid column
    log2 = f"""\
300 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD <unfinished ...>
301 mmap(NULL, 2097152, {ANON} <unfinished ...>
300 <... clone resumed>, child_tidptr=0x7f) = 301
301 <... mmap resumed>) = 0x7f3000200000
301 exit_group(0) = ?
301 +++ exited with 0 +++
"""
    res2 = import_strace(log2, touch="none")
    assert [(o.kind, o.proc) for o in res2.trace.ops] == [("fork", "main"), ("mmap", "p301"), ("exit", "p301")]
    assert res2.procs == {"main": 300, "p301": 301}
    assert res2.clock == "none"


def test_clone_vm_threads_share_the_mm_and_fork_copies() -> None:
    log = f"""\
1 1.000000 mmap(NULL, 2097152, {ANON}) = 0x7f0000000000
1 1.000001 clone3({{flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD, exit_signal=0}}, 88) = 2
2 1.000002 madvise(0x7f0000000000, 4096, MADV_DONTNEED) = 0
1 1.000003 vfork( <unfinished ...>
3 1.000004 execve("/bin/true", ["true"], 0x7ffd /* 1 var */) = 0
3 1.000005 mmap(NULL, 4096, {ANON}) = 0x7f5000000000
1 1.000006 <... vfork resumed>) = 3
1 1.000007 fork() = 4
4 1.000008 munmap(0x7f0000000000, 4096) = 0
4 1.000009 +++ killed by SIGKILL +++
2 1.000010 exit(0) = ?
1 1.000011 exit_group(0) = ?
"""
    res = import_strace(log, touch="none")
    ops = [(o.kind, o.proc) for o in res.trace.ops]
    assert ops == [("mmap", "main"), ("madvise", "main"), ("fork", "main"), ("munmap", "p4"), ("exit", "p4"),
                   ("exit", "main")]
    assert res.stats["ignored"]["exec-of-shared-mm"] == 1
    assert res.clock == "relative"


def test_exec_of_forked_child_unmaps_its_regions() -> None:
    log = f"""\
1 mmap(NULL, 8192, {ANON}) = 0x7f0000000000
1 clone(child_stack=NULL, flags=SIGCHLD) = 5
5 execve("/bin/true", ["true"], 0x7ffd /* 1 var */) = 0
5 brk(NULL) = 0x55000000a000
5 brk(0x55000002b000) = 0x55000002b000
5 brk(0x55000001b000) = 0x55000001b000
5 exit_group(0) = ?
"""
    res = import_strace(log, touch="write-all")
    ops = [(o.kind, o.proc, getattr(o, "length", 0)) for o in res.trace.ops]
    assert ops == [("mmap", "main", 8192), ("write", "main", 8192), ("fork", "main", 0), ("munmap", "p5", 8192),
                   ("mmap", "p5", 0x21000), ("write", "p5", 0x21000), ("munmap", "p5", 0x10000),
                   ("exit", "p5", 0)]


def test_errors_mprotect_mremap_and_mlock() -> None:
    log = f"""\
mmap(NULL, 1073741824, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0) = 0x7f0000000000
mmap(NULL, 1099511627776, {ANON}) = -1 ENOMEM (Cannot allocate memory)
mprotect(0x7f0000000000, 2101248, PROT_READ|PROT_WRITE) = 0
mprotect(0x7f0000400000, 4096, PROT_READ|PROT_WRITE) = -1 EACCES (Permission denied)
mlock2(0x7f0000000000, 4096, MLOCK_ONFAULT) = 0
munlock(0x7f0000000000, 4096) = 0
mmap(NULL, 4096, {ANON}) = 0x7f8000000000
mremap(0x7f8000000000, 4096, 2097152, MREMAP_MAYMOVE) = 0x7f9000000000
madvise(0x7f9000000000, 4096, MADV_MERGEABLE) = 0
madvise(0x7f9000000000, 4096, 0x19) = 0
"""
    res = import_strace(log)
    got = [(o.kind, o.length, getattr(o, "prot", "rw"), getattr(o, "flags", ())) for o in res.trace.ops]
    assert got[0] == ("mmap", GiB, "none", ("noreserve",))
    assert got[1] == ("mprotect", 2101248, "rw", ())
    assert got[2] == ("write", 2101248, "rw", ())          # first time writable: touched
    assert got[3] == ("mlock", 4096, "rw", ("onfault",))
    assert got[4][0] == "munlock"
    assert [k for k, *_ in got[5:]] == ["mmap", "write", "mremap", "write", "madvise"]
    mr = res.trace.ops[7]
    assert mr.flags == ("fixed", "maymove") and mr.new_length == 2 * MiB and mr.dest is not None
    assert res.trace.ops[-1].advice == "collapse"
    assert res.stats["ignored"]["failed call"] == 2
    assert res.stats["ignored"]["unsupported madvise mergeable"] == 1


def test_garbled_lines_warn_with_line_number_or_raise_when_strict() -> None:
    log = f"""\
mmap(NULL, 4096, {ANON}) = 0x7f0000000000
this is not strace output
mmap(NULL, 4096, {ANON}
munmap(0x7f0000000000, zzz) = 0
"""
    res = import_strace(log, touch="none")
    assert [w.line for w in res.warnings] == [2, 3, 4]
    assert "strace.log:2:" in str(res.warnings[0])
    assert kinds(res) == ["mmap"]
    with pytest.raises(TraceError) as e:
        import_strace(log, strict=True, source="x.log")
    assert e.value.line == 2 and "x.log:2" in str(e.value)


def test_cli_reports_a_garbled_line_as_one_line_with_file_and_line(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: os.PathLike[str]) -> None:
    log = os.path.join(tmp_path, "bad.log")
    out = os.path.join(tmp_path, "t.jsonl")
    with open(log, "w") as f:
        f.write(f"mmap(NULL, 4096, {ANON}) = 0x7f0000000000\nthis is not strace output\n")
    assert main(["import-strace", log, "-o", out, "--strict"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{log}:2: garbled line" in err and "Traceback" not in err
    assert main(["import-strace", log, "-o", out]) == 0          # without --strict: the note, and the trace
    err = capsys.readouterr().err
    assert f"{log}:2: garbled line" in err
    assert [o.kind for o in fmt.load(out).ops] == ["mmap", "write"]


def test_truncated_and_unmatched_resumed() -> None:
    log = f"""\
<... mmap resumed>) = 0x7f0000000000
mmap(NULL, 4096, {ANON} <unfinished ...>
"""
    res = import_strace(log)
    assert sorted(w.line for w in res.warnings) == [1, 2]
    assert res.trace.ops == ()


def test_address_mapping_keeps_offsets_modulo_1g() -> None:
    addrs = [0x7F12_3456_7000, 0x5555_5555_4000, 0x7F12_4000_0000 - 0x1000, 0x7FFF_0020_0000 + 0x3000]
    lines = [f"mmap(NULL, 8192, {ANON}) = {hex(a)}" for a in addrs]
    res = import_strace("\n".join(lines), touch="none")
    starts = [o.start for o in res.trace.ops]
    for a, s in zip(addrs, starts, strict=True):
        assert s % GiB == a % GiB
        assert 0 <= s < fmt.ARENA_SIZE
    # the mapping that crosses a 1 GiB boundary stays contiguous, in consecutive slots
    assert res.trace.ops[2].length == 8192
    # distinct real windows never share an arena GiB; the same window does; runs are kept one GiB apart
    assert starts[0] // GiB == starts[2] // GiB
    assert sorted(s // GiB for s in starts) == [0, 0, 3, 5]
    # the same real address maps to the same arena offset (munmap after mmap)
    res2 = import_strace(f"mmap(NULL, 8192, {ANON}) = 0x7f0000201000\nmunmap(0x7f0000201000, 4096) = 0\n")
    assert res2.trace.ops[0].start == res2.trace.ops[-1].start


def test_perf_faults_become_writes_and_reads() -> None:
    log = f"""\
7 1000.000000 mmap(NULL, 8388608, {ANON}) = 0x7f0000000000
7 1000.100000 munmap(0x7f0000000000, 8388608) = 0
"""
    perf = "\n".join(
        [f" 7 {1000.01 + i * 1e-4:.6f}: exceptions:page_fault_user: address={0x7F0000000000 + i * 0x200000 + 5:#x} "
         "ip=0x1 error_code=0x6" for i in range(4)]
        + [" 7 1000.020000: exceptions:page_fault_user: address=0x7f0000001000 ip=0x1 error_code=0x4",
           " 9 1000.030000: exceptions:page_fault_user: address=0x7f0000002000 ip=0x1 error_code=0x6",
           " 7 1000.200000: exceptions:page_fault_user: address=0x7f0000002000 ip=0x1 error_code=0x6"])
    faults, bad = parse_perf_faults(perf)
    assert len(faults) == 7 and bad == 0
    res = import_strace(log, touch="perf", faults=perf)
    ops = res.trace.ops
    assert [o.kind for o in ops] == ["mmap", "write", "read", "munmap"]
    assert ops[1].stride == 2 * MiB and ops[1].length == 6 * MiB + 4096
    assert res.stats["faults"]["other task or process"] == 1
    assert res.stats["faults"]["not anonymous"] == 1
    with pytest.raises(TraceError):
        import_strace(log, touch="perf")


def test_cli_import_strace_reads_the_perf_faults_file(tmp_path) -> None:
    # `thpsim import-strace --touch perf --faults FILE` handed the parsed samples to import_strace, which wants
    # the text: a TypeError traceback before
    log = tmp_path / "s.log"
    log.write_text(f"7 1000.000000 mmap(NULL, 4194304, {ANON}) = 0x7f0000000000\n"
                   "7 1000.100000 munmap(0x7f0000000000, 4194304) = 0\n")
    perf = tmp_path / "faults.txt"
    perf.write_text(" 7 1000.010000: exceptions:page_fault_user: address=0x7f0000000005 ip=0x1 error_code=0x6\n")
    out = tmp_path / "t.jsonl"
    assert main(["import-strace", str(log), "--touch", "perf", "--faults", str(perf), "-o", str(out)]) == 0
    assert [o.kind for o in fmt.load(str(out)).ops] == ["mmap", "write", "munmap"]


def test_generated_text_is_a_valid_trace_and_deterministic() -> None:
    log = f"mmap(NULL, 4096, {ANON}) = 0x7f0000000000\n"
    a, b = import_strace(log), import_strace(log)
    assert a.text == b.text
    assert fmt.dumps(fmt.parse(a.text)) == fmt.dumps(a.trace)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(EXAMPLES, "*.jsonl"))))
def test_bundled_examples_parse(path: str) -> None:
    assert os.path.getsize(path) < 2 * 1024 * 1024
    trace = fmt.load(path)
    assert len(trace.ops) > 100
    with open(path + ".vmpte.json") as f:
        doc = json.load(f)
    assert doc["thpsim_vmpte"] == 1
    assert all(0 <= s["op_index"] <= len(trace.ops) for s in doc["samples"])
    assert set(doc["procs"]) <= set(trace.procs())


def test_bundled_examples_exist() -> None:
    names = {os.path.basename(p) for p in glob.glob(os.path.join(EXAMPLES, "*.jsonl"))}
    assert {"python-list.jsonl", "sqlite-fill.jsonl", "redis-bgsave.jsonl"} <= names
