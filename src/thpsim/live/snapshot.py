"""Capture a host snapshot for the savings estimator: read /proc and sysfs of the running host, write it out.

What is stored, and the layout of a snapshot directory (or ``.tar.gz`` of one)::

    manifest.json                 format, version, capture time, host identity, pid lists, file sizes
    meminfo  vmstat               copies of /proc/meminfo and /proc/vmstat
    thp/enabled thp/defrag thp/use_zero_page thp/hpage_pmd_size
                                  copies of /sys/kernel/mm/transparent_hugepage/*
    proc/PID/comm                 /proc/PID/comm
    proc/PID/status               the Name/Pid/PPid/Kthread/Vm*/Rss* lines of /proc/PID/status
    proc/PID/smaps_rollup         /proc/PID/smaps_rollup
    proc/PID/smaps_thp            only when smaps_rollup is unavailable (or ``per_vma=True``): each VMA
                                  header line of /proc/PID/smaps followed by its AnonHugePages line

Only processes with an mm are stored. Kernel threads and zombies (no ``VmPTE`` line) are listed in the manifest
under ``no_mm``; processes that exit while being read under ``vanished``; processes whose files cannot be read
(permissions, or an smaps that :func:`thpsim.live.procfs.parse_smaps` cannot read) under ``unreadable``. The
capture time is the only nondeterministic field. Everything is read, nothing on the host is written (besides
the snapshot). Loading and validating a snapshot is :mod:`thpsim.analysis.snapshot`.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from thpsim.errors import ProcError, ThpsimError
from thpsim.live import procfs

FORMAT_NAME = "thpsim-snapshot"
FORMAT_VERSION = 1

PROC = "/proc"
THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
THP_FILES = ("enabled", "defrag", "use_zero_page", "hpage_pmd_size")
HOST_FILES = ("meminfo", "vmstat") + tuple(f"thp/{n}" for n in THP_FILES)
STATUS_KEEP = ("Name", "State", "Tgid", "Pid", "PPid", "Kthread", "VmRSS", "RssAnon", "RssFile", "RssShmem",
               "VmPTE", "VmSwap")


@dataclass(frozen=True)
class SkippedProcess:
    """A process left out at capture time (it exited mid-capture, or its files were unreadable)."""

    pid: int
    reason: str


@dataclass(frozen=True)
class SnapshotInfo:
    """What :func:`take_snapshot` wrote."""

    path: str
    captured_at: str
    processes: int                      # processes with an mm that were stored
    no_mm: int                          # kernel threads and zombies (nothing to estimate)
    vanished: tuple[int, ...]           # exited while being read
    unreadable: tuple[SkippedProcess, ...]
    files: int
    bytes: int


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _filter_status(text: str) -> str:
    keep = [ln for ln in text.splitlines() if ln.split(":", 1)[0] in STATUS_KEEP]
    return "".join(ln + "\n" for ln in keep)


def _smaps_thp(text: str, fname: str) -> str:
    """Reduce /proc/PID/smaps to each VMA's header line and its AnonHugePages line (as the kernel prints it:
    ``SEQ_PUT_DEC("AnonHugePages:  ", ...)``, width 8). ProcError (one line) if smaps cannot be read."""
    return "".join(f"{v.header}\nAnonHugePages:  {v.get('AnonHugePages'):>8} kB\n"
                   for v in procfs.parse_smaps(text, fname, required=("AnonHugePages",)))


def _capture_proc(proc: str, pid: int, per_vma: bool) -> tuple[str, dict[str, str] | None, str]:
    """Read one process. Returns (kind, files, reason); kind is "ok", "no_mm", "vanished" or "unreadable"."""
    base = f"{proc}/{pid}"
    try:
        status = _read(f"{base}/status")
        comm = _read(f"{base}/comm")
    except (FileNotFoundError, ProcessLookupError):
        return "vanished", None, "exited"
    except OSError as e:
        return "unreadable", None, f"status: {e.strerror or e}"
    fields = procfs.parse_keyed(status)
    if "VmPTE" not in fields or fields.get("Kthread", "0") == "1":
        return "no_mm", None, ""
    if fields.get("Pid", "") != str(pid):
        return "vanished", None, "pid reused during capture"
    files = {"comm": comm, "status": _filter_status(status)}
    need_smaps = per_vma
    try:
        rollup = _read(f"{base}/smaps_rollup")
        if not rollup:
            return "vanished", None, "mm gone during capture"
        files["smaps_rollup"] = rollup
    except (FileNotFoundError, ProcessLookupError):
        if not os.path.exists(base):
            return "vanished", None, "exited"
        need_smaps = True                 # no smaps_rollup (pre-4.14 kernel): fall back to per-VMA smaps
    except PermissionError as e:
        return "unreadable", None, f"smaps_rollup: {e.strerror or e}"
    except OSError as e:
        return "unreadable", None, f"smaps_rollup: {e.strerror or e}"
    if need_smaps:
        try:
            files["smaps_thp"] = _smaps_thp(_read(f"{base}/smaps"), f"{base}/smaps")
        except (FileNotFoundError, ProcessLookupError):
            return "vanished", None, "exited"
        except OSError as e:
            return "unreadable", None, f"smaps: {e.strerror or e}"
        except ProcError as e:
            return "unreadable", None, str(e)
    return "ok", files, ""


def _cpuinfo_mmu(proc: str) -> str | None:
    try:
        for ln in _read(f"{proc}/cpuinfo").splitlines():
            k, _, v = ln.partition(":")
            if k.strip() == "MMU":
                return v.strip()
    except OSError:
        pass
    return None


def capture(*, per_vma: bool = False, proc: str = PROC, thp_sysfs: str = THP_SYSFS,
            now: Callable[[], datetime] | None = None) -> dict[str, str]:
    """Read the live host into memory: ``{relative path: text}`` including ``manifest.json``."""
    files: dict[str, str] = {}
    absent: list[str] = []
    for name in ("meminfo", "vmstat"):
        try:
            files[name] = _read(f"{proc}/{name}")
        except OSError as e:
            raise ProcError(f"{proc}/{name}: cannot read ({e.strerror or e})") from None
    for name in THP_FILES:
        try:
            files[f"thp/{name}"] = _read(f"{thp_sysfs}/{name}")
        except FileNotFoundError:
            absent.append(f"thp/{name}")     # kernel without THP: recorded, not an error
        except OSError as e:
            raise ProcError(f"{thp_sysfs}/{name}: cannot read ({e.strerror or e})") from None
    pids = sorted(int(d) for d in os.listdir(proc) if d.isdigit())
    stored: list[int] = []
    no_mm: list[int] = []
    vanished: list[int] = []
    unreadable: list[dict[str, object]] = []
    for pid in pids:
        kind, pfiles, reason = _capture_proc(proc, pid, per_vma)
        if kind == "ok" and pfiles is not None:
            stored.append(pid)
            for name, text in pfiles.items():
                files[f"proc/{pid}/{name}"] = text
        elif kind == "no_mm":
            no_mm.append(pid)
        elif kind == "vanished":
            vanished.append(pid)
        else:
            unreadable.append({"pid": pid, "reason": reason})
    u = os.uname()
    stamp = (now or (lambda: datetime.now(UTC)))()
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "captured_at": stamp.isoformat(timespec="seconds"),
        "hostname": u.nodename,
        "release": u.release,
        "machine": u.machine,
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "mmu": _cpuinfo_mmu(proc),
        "pids": stored,
        "no_mm": no_mm,
        "vanished": vanished,
        "unreadable": unreadable,
        "absent": absent,
        "files": {k: len(v.encode()) for k, v in sorted(files.items())},
    }
    files["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    return files


def _tar_path(out: str) -> str:
    return out if out.endswith((".tar.gz", ".tgz")) else out + ".tar.gz"


def _write_tar(path: str, files: dict[str, str], captured_at: str) -> None:
    top = os.path.basename(path)
    for suffix in (".tar.gz", ".tgz"):
        top = top.removesuffix(suffix)
    top = top or "snapshot"
    mtime = int(datetime.fromisoformat(captured_at).timestamp())
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".tar.gz", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tf:
            for rel in sorted(files):
                data = files[rel].encode()
                ti = tarfile.TarInfo(f"{top}/{rel}")
                ti.size = len(data)
                ti.mtime = mtime
                ti.mode = 0o644
                tf.addfile(ti, io.BytesIO(data))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def take_snapshot(out_dir: str, *, tar: bool = False, per_vma: bool = False) -> SnapshotInfo:
    """Capture the live host into directory ``out_dir`` (created; must be empty), or into ``out_dir.tar.gz``.

    ``per_vma=True`` also stores the per-VMA AnonHugePages of every process (normally only used when
    smaps_rollup is unavailable).
    """
    path = _tar_path(out_dir) if tar else out_dir
    if tar and os.path.exists(path):
        raise ThpsimError(f"{path}: already exists; choose a new snapshot path")
    if not tar and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ThpsimError(f"{path}: already exists and is not an empty directory; choose a new snapshot path")
    files = capture(per_vma=per_vma)
    manifest = json.loads(files["manifest.json"])
    nbytes = sum(len(v.encode()) for v in files.values())
    try:
        if tar:
            _write_tar(path, files, manifest["captured_at"])
        else:
            os.makedirs(path, exist_ok=True)
            for rel in sorted(files):
                dest = os.path.join(path, rel)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "w", encoding="utf-8") as f:
                    f.write(files[rel])
    except OSError as e:
        where = e.filename or path
        raise ThpsimError(f"{where}: cannot write the snapshot ({e.strerror or e})") from None
    return SnapshotInfo(
        path=path,
        captured_at=manifest["captured_at"],
        processes=len(manifest["pids"]),
        no_mm=len(manifest["no_mm"]),
        vanished=tuple(manifest["vanished"]),
        unreadable=tuple(SkippedProcess(int(u["pid"]), str(u["reason"])) for u in manifest["unreadable"]),
        files=len(files),
        bytes=nbytes,
    )


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "PROC", "THP_SYSFS", "THP_FILES", "HOST_FILES", "STATUS_KEEP",
           "SkippedProcess", "SnapshotInfo", "capture", "take_snapshot"]
