"""Host snapshots for the savings estimator: capture what the estimate needs from /proc and sysfs, load it back.

A snapshot is a directory (or a ``.tar.gz`` of one) laid out as::

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
(permissions) under ``unreadable``. The capture time is the only nondeterministic field.

:func:`load_snapshot` validates every file. A bad host-level file (manifest, meminfo, vmstat, thp/*) raises
:class:`~thpsim.errors.ProcError` with one line naming the file; a bad per-process file is recorded in
``Snapshot.errors`` and that process is left out while the rest still loads.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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
STATUS_REQUIRED = ("Pid", "VmRSS", "RssAnon", "VmPTE")
MEMINFO_REQUIRED = ("MemTotal", "PageTables", "AnonHugePages")
ROLLUP_REQUIRED = ("Rss", "Anonymous", "AnonHugePages")

_KB_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_()]*):\s+(\d+)(?: kB)?$")
_VMA_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S{4} [0-9a-f]+ \S+ \d+")


# --------------------------------------------------------------------------------------------------- data


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


@dataclass(frozen=True)
class ProcEntry:
    """One process of a snapshot (sizes in kB, as /proc reports them)."""

    pid: int
    comm: str
    vm_pte_kb: int
    vm_rss_kb: int
    rss_anon_kb: int
    anon_huge_kb: int
    source: str                         # "smaps_rollup" or "smaps" (per-VMA fallback)
    rollup: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EntryError:
    """A per-process file that could not be used; the process is not in ``Snapshot.procs``."""

    pid: int
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class Snapshot:
    source: str                         # path of the directory/tarball, or "live"
    version: int
    captured_at: str
    hostname: str
    release: str
    machine: str
    page_size: int
    mmu: str | None                     # /proc/cpuinfo "MMU" line (powerpc: "Hash" or "Radix"), if any
    thp: dict[str, str]                 # raw sysfs contents of enabled, defrag, use_zero_page
    hpage_pmd_size: int                 # bytes; 0 if the kernel has no THP
    meminfo: dict[str, int]             # kB (HugePages_* are counts)
    vmstat: dict[str, int]
    procs: list[ProcEntry]
    no_mm: int = 0
    vanished: tuple[int, ...] = ()
    unreadable: tuple[SkippedProcess, ...] = ()
    errors: list[EntryError] = field(default_factory=list)

    @property
    def thp_enabled(self) -> str:
        return selected_mode(self.thp.get("enabled", ""))


def selected_mode(raw: str) -> str:
    """``"always [madvise] never"`` -> ``"madvise"`` (the raw text if nothing is bracketed)."""
    m = re.search(r"\[([^\]]+)\]", raw)
    return m.group(1) if m else raw.strip()


# --------------------------------------------------------------------------------------------------- capture


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _filter_status(text: str) -> str:
    keep = [ln for ln in text.splitlines() if ln.split(":", 1)[0] in STATUS_KEEP]
    return "".join(ln + "\n" for ln in keep)


def _smaps_thp(text: str) -> str:
    """Reduce /proc/PID/smaps to VMA header lines and their AnonHugePages lines."""
    out: list[str] = []
    for ln in text.splitlines():
        if _VMA_HEADER.match(ln) or ln.startswith("AnonHugePages:"):
            out.append(ln + "\n")
    return "".join(out)


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
    fields = dict(ln.split(":", 1) for ln in status.splitlines() if ":" in ln)
    if "VmPTE" not in fields or fields.get("Kthread", "0").strip() == "1":
        return "no_mm", None, ""
    if fields.get("Pid", "").strip() != str(pid):
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
            files["smaps_thp"] = _smaps_thp(_read(f"{base}/smaps"))
        except (FileNotFoundError, ProcessLookupError):
            return "vanished", None, "exited"
        except OSError as e:
            return "unreadable", None, f"smaps: {e.strerror or e}"
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


# --------------------------------------------------------------------------------------------------- load


class _Source:
    """Read-only access to the files of a snapshot (directory, tarball or in-memory capture)."""

    def __init__(self, label: str, files: dict[str, bytes] | None, root: str | None) -> None:
        self.label = label
        self._files = files
        self._root = root

    def where(self, rel: str) -> str:
        if self._root is not None:
            return os.path.join(self._root, rel)
        if self.label == "live":
            return f"live:{rel}"
        return f"{self.label}:{rel}"

    def exists(self, rel: str) -> bool:
        if self._files is not None:
            return rel in self._files
        assert self._root is not None
        return os.path.isfile(os.path.join(self._root, rel))

    def read(self, rel: str) -> str:
        """The text of ``rel``; raises ProcError (one line) if missing, unreadable or not UTF-8."""
        if self._files is not None:
            if rel not in self._files:
                raise ProcError(f"{self.where(rel)}: missing from the snapshot")
            data = self._files[rel]
        else:
            assert self._root is not None
            try:
                with open(os.path.join(self._root, rel), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise ProcError(f"{self.where(rel)}: missing from the snapshot") from None
            except OSError as e:
                raise ProcError(f"{self.where(rel)}: cannot read ({e.strerror or e})") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProcError(f"{self.where(rel)}: corrupt (not UTF-8 text at byte {e.start})") from None

    def size(self, rel: str) -> int:
        if self._files is not None:
            return len(self._files[rel])
        assert self._root is not None
        return os.path.getsize(os.path.join(self._root, rel))


def _open_tar(path: str) -> _Source:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                f = tf.extractfile(m)
                if f is None:
                    continue
                files[m.name.removeprefix("./")] = f.read()
    except FileNotFoundError:
        raise ProcError(f"{path}: no such snapshot file or directory") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ProcError(f"{path}: not a readable snapshot tarball (truncated or corrupt: {reason})") from None
    manifests = [k for k in files if k == "manifest.json" or k.endswith("/manifest.json")]
    if not manifests:
        raise ProcError(f"{path}: not a thpsim snapshot (no manifest.json in the tarball)")
    top = min(manifests, key=len)[: -len("manifest.json")]
    return _Source(path, {k[len(top):]: v for k, v in files.items() if k.startswith(top)}, None)


def _check_lines(src: _Source, rel: str, text: str) -> None:
    if not text:
        raise ProcError(f"{src.where(rel)}: empty file")
    if not text.endswith("\n"):
        last = text.splitlines()[-1]
        raise ProcError(f"{src.where(rel)}: truncated (last line {last[:40]!r} has no newline)")


def _check_size(src: _Source, rel: str, sizes: dict[str, int]) -> None:
    if rel in sizes:
        got = src.size(rel)
        if got != sizes[rel]:
            what = "truncated" if got < sizes[rel] else "corrupt"
            raise ProcError(f"{src.where(rel)}: {what} (manifest says {sizes[rel]} bytes, found {got})")


def _parse_kb(src: _Source, rel: str, text: str, required: tuple[str, ...], *,
              skip_first: bool = False) -> dict[str, int]:
    """``Key:   123 kB`` lines (meminfo, smaps_rollup after its VMA header) via the live side's /proc parser."""
    _check_lines(src, rel, text)
    if skip_first:
        first, _nl, text = text.partition("\n")
        if not _VMA_HEADER.match(first):
            raise ProcError(f"{src.where(rel)}: corrupt (first line is not a VMA header)")
    return procfs.parse_flat(text, src.where(rel), kb=True, required=required)


def _parse_status(src: _Source, rel: str, text: str) -> dict[str, str]:
    _check_lines(src, rel, text)
    out: dict[str, str] = {}
    for n, ln in enumerate(text.splitlines(), start=1):
        k, sep, v = ln.partition(":")
        if not sep:
            raise ProcError(f"{src.where(rel)}: corrupt line {n}: {ln[:60]!r}")
        out[k] = v.strip()
    for k in STATUS_REQUIRED:
        if k not in out:
            raise ProcError(f"{src.where(rel)}: truncated or corrupt (no {k} line)")
    return out


def _kb_value(src: _Source, rel: str, key: str, raw: str) -> int:
    m = re.fullmatch(r"(\d+)(?: kB)?", raw)
    if not m:
        raise ProcError(f"{src.where(rel)}: corrupt {key} value {raw[:40]!r}")
    return int(m.group(1))


def _parse_smaps_thp(src: _Source, rel: str, text: str) -> int:
    if text and not text.endswith("\n"):
        raise ProcError(f"{src.where(rel)}: truncated (last line has no newline)")
    total = 0
    expect_value = False
    for n, ln in enumerate(text.splitlines(), start=1):
        if _VMA_HEADER.match(ln):
            if expect_value:
                raise ProcError(f"{src.where(rel)}: corrupt line {n}: VMA without an AnonHugePages line")
            expect_value = True
            continue
        m = _KB_LINE.match(ln)
        if not m or m.group(1) != "AnonHugePages" or not expect_value:
            raise ProcError(f"{src.where(rel)}: corrupt line {n}: {ln[:60]!r}")
        total += int(m.group(2))
        expect_value = False
    if expect_value:
        raise ProcError(f"{src.where(rel)}: truncated (last VMA has no AnonHugePages line)")
    return total


def _load_proc(src: _Source, pid: int, sizes: dict[str, int]) -> ProcEntry:
    base = f"proc/{pid}"
    for rel in (f"{base}/comm", f"{base}/status", f"{base}/smaps_rollup", f"{base}/smaps_thp"):
        if src.exists(rel):
            _check_size(src, rel, sizes)
    comm = src.read(f"{base}/comm").rstrip("\n")
    status_rel = f"{base}/status"
    st = _parse_status(src, status_rel, src.read(status_rel))
    if st["Pid"] != str(pid):
        raise ProcError(f"{src.where(status_rel)}: corrupt (Pid line says {st['Pid'][:20]!r})")
    vm_pte = _kb_value(src, status_rel, "VmPTE", st["VmPTE"])
    vm_rss = _kb_value(src, status_rel, "VmRSS", st["VmRSS"])
    rss_anon = _kb_value(src, status_rel, "RssAnon", st["RssAnon"])
    rollup: dict[str, int] = {}
    if src.exists(f"{base}/smaps_rollup"):
        rel = f"{base}/smaps_rollup"
        rollup = _parse_kb(src, rel, src.read(rel), ROLLUP_REQUIRED, skip_first=True)
        anon_huge, source = rollup["AnonHugePages"], "smaps_rollup"
    elif src.exists(f"{base}/smaps_thp"):
        rel = f"{base}/smaps_thp"
        anon_huge, source = _parse_smaps_thp(src, rel, src.read(rel)), "smaps"
    else:
        raise ProcError(f"{src.where(base + '/smaps_rollup')}: missing from the snapshot")
    return ProcEntry(pid=pid, comm=comm or st.get("Name", ""), vm_pte_kb=vm_pte, vm_rss_kb=vm_rss,
                     rss_anon_kb=rss_anon, anon_huge_kb=anon_huge, source=source, rollup=rollup)


def _int_list(src: _Source, manifest: dict[str, object], key: str) -> list[int]:
    v = manifest.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, int) for x in v):
        raise ProcError(f"{src.where('manifest.json')}: corrupt ({key!r} is not a list of pids)")
    return list(v)


def _load(src: _Source) -> Snapshot:
    mtext = src.read("manifest.json")
    try:
        manifest = json.loads(mtext)
    except json.JSONDecodeError as e:
        raise ProcError(f"{src.where('manifest.json')}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ProcError(f"{src.where('manifest.json')}: not a thpsim snapshot manifest (format != {FORMAT_NAME!r})")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise ProcError(f"{src.where('manifest.json')}: unsupported snapshot version {version!r} "
                        f"(this thpsim reads version {FORMAT_VERSION})")
    for key in ("hostname", "release", "machine"):
        if not isinstance(manifest.get(key), str):
            raise ProcError(f"{src.where('manifest.json')}: corrupt (no {key!r} string)")
    sizes = manifest.get("files", {})
    absent = manifest.get("absent", [])
    if not isinstance(sizes, dict) or not isinstance(absent, list):
        raise ProcError(f"{src.where('manifest.json')}: corrupt ('files'/'absent' have the wrong type)")

    host: dict[str, str] = {}
    for rel in HOST_FILES:
        if rel in absent and not src.exists(rel):
            continue
        _check_size_or_missing(src, rel, sizes)
        host[rel] = src.read(rel)
    meminfo = _parse_kb(src, "meminfo", host["meminfo"], MEMINFO_REQUIRED)
    vmstat = _parse_vmstat(src, host["vmstat"])
    thp: dict[str, str] = {}
    for name in ("enabled", "defrag", "use_zero_page"):
        if f"thp/{name}" in host:
            _check_lines(src, f"thp/{name}", host[f"thp/{name}"])
            thp[name] = host[f"thp/{name}"].strip()
    pmd = 0
    if "thp/hpage_pmd_size" in host:
        raw = host["thp/hpage_pmd_size"]
        _check_lines(src, "thp/hpage_pmd_size", raw)
        if not re.fullmatch(r"\d+\n", raw) or int(raw) <= 0 or int(raw) & (int(raw) - 1):
            raise ProcError(f"{src.where('thp/hpage_pmd_size')}: corrupt (expected a power-of-two byte count, "
                            f"got {raw.strip()[:40]!r})")
        pmd = int(raw)

    pids = _int_list(src, manifest, "pids")
    procs: list[ProcEntry] = []
    errors: list[EntryError] = []
    for pid in sorted(pids):
        try:
            procs.append(_load_proc(src, pid, sizes))
        except ProcError as e:
            msg = str(e)
            file, _, why = msg.partition(": ")
            errors.append(EntryError(pid=pid, file=file, message=why or msg))
    unreadable_raw = manifest.get("unreadable", [])
    try:
        unreadable = tuple(SkippedProcess(int(u["pid"]), str(u["reason"])) for u in unreadable_raw)
    except (TypeError, KeyError, ValueError):
        raise ProcError(f"{src.where('manifest.json')}: corrupt ('unreadable' entries need pid and reason)") from None
    page_size = manifest.get("page_size", 4096)
    mmu = manifest.get("mmu")
    return Snapshot(
        source=src.label,
        version=FORMAT_VERSION,
        captured_at=str(manifest.get("captured_at", "")),
        hostname=manifest["hostname"],
        release=manifest["release"],
        machine=manifest["machine"],
        page_size=int(page_size) if isinstance(page_size, int) else 4096,
        mmu=mmu if isinstance(mmu, str) else None,
        thp=thp,
        hpage_pmd_size=pmd,
        meminfo=meminfo,
        vmstat=vmstat,
        procs=procs,
        no_mm=len(_int_list(src, manifest, "no_mm")),
        vanished=tuple(_int_list(src, manifest, "vanished")),
        unreadable=unreadable,
        errors=errors,
    )


def _check_size_or_missing(src: _Source, rel: str, sizes: dict[str, int]) -> None:
    if not src.exists(rel):
        raise ProcError(f"{src.where(rel)}: missing from the snapshot")
    _check_size(src, rel, sizes)


def _parse_vmstat(src: _Source, text: str) -> dict[str, int]:
    _check_lines(src, "vmstat", text)
    return procfs.parse_flat(text, src.where("vmstat"))


def load_snapshot(path: str) -> Snapshot:
    """Load a snapshot directory or tarball written by :func:`take_snapshot`.

    Raises ProcError (one line naming the file) for a missing or corrupt host-level file; per-process problems
    go to ``Snapshot.errors``.
    """
    if os.path.isdir(path):
        return _load(_Source(path, None, path))
    if not os.path.exists(path):
        raise ProcError(f"{path}: no such snapshot file or directory")
    return _load(_open_tar(path))


def read_live(*, per_vma: bool = False) -> Snapshot:
    """Capture the live host into memory and return it as a Snapshot (source ``"live"``)."""
    files = capture(per_vma=per_vma)
    return _load(_Source("live", {k: v.encode() for k, v in files.items()}, None))
