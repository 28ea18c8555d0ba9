"""Record a real program as a thpsim trace: run it under strace (and optionally perf), import the log.

``record(["redis-server", ...], "redis.jsonl")`` runs
``strace -f -ttt -e trace=memory,process -o LOG -- CMD...`` (``-ttt``, epoch timestamps, rather than ``-tt`` so
that the log, the VmPTE samples and the perf faults share one clock), imports the log with
:func:`thpsim.trace.strace.import_strace` and writes the trace. With ``touch="perf"`` the strace run is itself
run under ``perf record -k monotonic -e exceptions:page_fault_user -e exceptions:page_fault_kernel`` and the
faults become the trace's writes and reads.

With *sample_vmpte* the real program's ``/proc/PID/status`` (VmPTE, RssAnon) and ``/proc/PID/smaps_rollup``
(AnonHugePages) are sampled every *interval* seconds for every process of the program while it runs, and
stored as ``<trace>.vmpte.json``::

    {"thpsim_vmpte": 1, "trace": "x.jsonl", "cmd": [...], "interval_s": 0.02, "clock": "epoch",
     "procs": {"main": 1234, "p1240": 1240},
     "samples": [{"t": 1795732591.62, "pid": 1234, "proc": "main", "op_index": 57,
                  "vm_pte_kb": 48, "rss_anon_kb": 9120, "anon_huge_kb": 0}, ...]}

``op_index`` is the number of trace ops whose log time is not after the sample, i.e. the sample describes the
state after ``trace.ops[:op_index]`` — the point at which to compare the model's VmPTE. ``proc`` is ``null``
for tasks the trace does not model (e.g. a vfork child after its exec).
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from thpsim.errors import ThpsimError
from thpsim.trace.strace import TOUCH_POLICIES, ImportResult, import_strace

VMPTE_VERSION = 1
_TRACER_COMMS = {"strace", "perf"}


@dataclass
class RecordResult:
    trace_path: str
    result: ImportResult
    returncode: int
    vmpte_path: str | None = None
    samples: int = 0
    strace_log: str | None = None          # kept copy of the raw log (keep_log=...)
    perf_faults: str | None = None         # kept copy of the perf script text (keep_faults=...)
    cmd: list[str] = field(default_factory=list)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _kb_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in names:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def sample_tree(root: int) -> list[dict[str, Any]]:
    """One sample of every process below *root* (tracer processes skipped): VmPTE, RssAnon, AnonHugePages."""
    now = time.time()
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(_children(pid))
        if pid == root or _comm(pid) in _TRACER_COMMS:
            continue
        st = _kb_fields(f"/proc/{pid}/status", ("VmPTE", "RssAnon"))
        if "VmPTE" not in st:
            continue      # gone, or a zombie
        sm = _kb_fields(f"/proc/{pid}/smaps_rollup", ("AnonHugePages",))
        out.append({"t": round(now, 6), "pid": pid, "vm_pte_kb": st["VmPTE"], "rss_anon_kb": st.get("RssAnon", 0),
                    "anon_huge_kb": sm.get("AnonHugePages", 0)})
    return out


def _clock_offset() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in seconds (to put perf's monotonic fault times on strace's clock)."""
    best = None
    for _ in range(5):
        a = time.clock_gettime(time.CLOCK_MONOTONIC)
        r = time.time()
        b = time.clock_gettime(time.CLOCK_MONOTONIC)
        if best is None or b - a < best[0]:
            best = (b - a, r - (a + b) / 2)
    assert best is not None
    return best[1]


def record(cmd: Sequence[str], out_trace: str, *, touch: str = "write-all", sample_vmpte: bool = True,
           interval: float = 0.02, keep_log: str | None = None, keep_faults: str | None = None,
           name: str = "", notes: bool = True, strace: str = "strace", perf: str = "perf",
           stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
           stderr: int | IO[Any] | None = None, timeout: float | None = None) -> RecordResult:
    """Run *cmd* under strace (and perf for ``touch="perf"``), import it and write the trace to *out_trace*.

    Returns a :class:`RecordResult`; the import's warnings and statistics are in ``result.result``. Raises
    :class:`~thpsim.errors.ThpsimError` if strace/perf cannot run or the program exceeds *timeout* seconds.
    """
    if not cmd:
        raise ThpsimError("record needs a command to run, e.g. thpsim record -o t.jsonl -- python3 -c '...'")
    if touch not in TOUCH_POLICIES:
        raise ThpsimError(f"unknown touch policy {touch!r}; use one of {', '.join(TOUCH_POLICIES)}")
    strace_bin = shutil.which(strace)
    if strace_bin is None:
        raise ThpsimError(f"{strace} not found: install strace (apt-get install strace)")
    tmp = tempfile.mkdtemp(prefix="thpsim-record-")
    try:
        log = os.path.join(tmp, "strace.log")
        full = [strace_bin, "-f", "-ttt", "-e", "trace=memory,process", "-o", log, "--", *cmd]
        pdata = os.path.join(tmp, "perf.data")
        offset = 0.0
        if touch == "perf":
            perf_bin = shutil.which(perf)
            if perf_bin is None:
                raise ThpsimError(f"{perf} not found: install perf (apt-get install linux-perf) or use "
                                  "touch='write-all'")
            full = [perf_bin, "record", "-q", "-k", "monotonic", "-e", "exceptions:page_fault_user", "-e",
                    "exceptions:page_fault_kernel", "-o", pdata, "--", *full]
            offset = _clock_offset()
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        try:
            proc = subprocess.Popen(full, stdin=stdin, stdout=stdout, stderr=stderr)
        except OSError as e:
            raise ThpsimError(f"cannot run {full[0]}: {e.strerror}") from None
        while proc.poll() is None:
            if sample_vmpte:
                samples.extend(sample_tree(proc.pid))
            if timeout is not None and time.monotonic() - started > timeout:
                proc.kill()
                proc.wait()
                raise ThpsimError(f"the recorded program ran longer than {timeout:g} s and was killed")
            time.sleep(interval)
        rc = proc.returncode
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            raise ThpsimError(f"strace wrote no log (exit status {rc}); is ptrace allowed here?") from None
        faults: str | None = None
        if touch == "perf":
            res = subprocess.run([perf, "script", "-i", pdata, "-F", "tid,time,event,trace"], capture_output=True,
                                 text=True, errors="replace")
            if res.returncode != 0:
                raise ThpsimError(f"perf script failed: {res.stderr.strip()[:200]}")
            faults = res.stdout
        result = import_strace(text, source=" ".join(cmd)[:80] or "strace.log", touch=touch, faults=faults,
                               fault_clock_offset=offset, name=name or f"record: {' '.join(cmd)}"[:120],
                               notes=notes)
        with open(out_trace, "w", encoding="utf-8") as f:
            f.write(result.text)
        kept_log = None
        if keep_log:
            shutil.copyfile(log, keep_log)
            kept_log = keep_log
        kept_faults = None
        if keep_faults and faults is not None:
            with open(keep_faults, "w", encoding="utf-8") as f:
                f.write(faults)
            kept_faults = keep_faults
        vmpte_path = None
        if sample_vmpte:
            vmpte_path = out_trace + ".vmpte.json"
            write_vmpte(vmpte_path, samples, result, out_trace=out_trace, cmd=list(cmd), interval=interval)
        return RecordResult(trace_path=out_trace, result=result, returncode=rc, vmpte_path=vmpte_path,
                            samples=len(samples), strace_log=kept_log, perf_faults=kept_faults, cmd=list(cmd))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def annotate_samples(samples: list[dict[str, Any]], result: ImportResult) -> list[dict[str, Any]]:
    """Add ``proc`` and ``op_index`` (ops of the trace done before the sample) to raw samples."""
    by_pid = {pid: name for name, pid in result.procs.items()}
    times: list[float] = []
    hi = float("-inf")
    for t in result.op_times:
        hi = max(hi, t if t is not None else hi)
        times.append(hi)
    out = []
    for s in samples:
        d = dict(s)
        d["proc"] = by_pid.get(s["pid"])
        d["op_index"] = bisect.bisect_right(times, s["t"])
        out.append(d)
    return out


def write_vmpte(path: str, samples: list[dict[str, Any]], result: ImportResult, *, out_trace: str,
                cmd: list[str], interval: float) -> None:
    doc = {
        "thpsim_vmpte": VMPTE_VERSION, "trace": os.path.basename(out_trace), "cmd": cmd, "interval_s": interval,
        "clock": result.clock, "procs": result.procs,
        "samples": [{k: s[k] for k in ("t", "pid", "proc", "op_index", "vm_pte_kb", "rss_anon_kb", "anon_huge_kb")}
                    for s in annotate_samples(samples, result)],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def load_vmpte(path: str) -> dict[str, Any]:
    """Read a ``.vmpte.json`` file written by :func:`record`."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise ThpsimError(f"{path}: cannot read the VmPTE samples ({e})") from None
    if not isinstance(doc, dict) or doc.get("thpsim_vmpte") != VMPTE_VERSION:
        raise ThpsimError(f"{path}: not a thpsim VmPTE sample file (version {VMPTE_VERSION})")
    return doc
