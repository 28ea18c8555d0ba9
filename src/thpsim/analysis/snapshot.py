"""Host snapshots for the savings estimator: load one back and validate it (pure: no /proc access).

A snapshot is a directory (or a ``.tar.gz`` of one) written by :func:`thpsim.live.snapshot.take_snapshot`, which
describes its layout: ``manifest.json``, copies of /proc/meminfo, /proc/vmstat and the THP sysfs files, and per
process ``comm``, the kept ``status`` lines and ``smaps_rollup`` (or ``smaps_thp``, per-VMA AnonHugePages).

:func:`load_snapshot` validates every file; the smaps files are read with the live side's parser
(:func:`thpsim.live.procfs.parse_smaps`). A bad host-level file (manifest, meminfo, vmstat, thp/*) raises
:class:`~thpsim.errors.ProcError` with one line naming the file; a bad per-process file is recorded in
``Snapshot.errors`` and that process is left out while the rest still loads. :func:`load_files` loads an
in-memory capture (:func:`thpsim.live.snapshot.capture`) the same way.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

from thpsim.errors import ProcError
from thpsim.live import procfs
from thpsim.live.snapshot import FORMAT_NAME, FORMAT_VERSION, HOST_FILES, SkippedProcess

STATUS_REQUIRED = ("Pid", "VmRSS", "RssAnon", "VmPTE")
MEMINFO_REQUIRED = ("MemTotal", "PageTables", "AnonHugePages")
ROLLUP_REQUIRED = ("Rss", "Anonymous", "AnonHugePages")


# --------------------------------------------------------------------------------------------------- data


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


def _parse_meminfo(src: _Source, text: str) -> dict[str, int]:
    """``Key:   123 kB`` lines via the live side's /proc parser."""
    _check_lines(src, "meminfo", text)
    return procfs.parse_flat(text, src.where("meminfo"), kb=True, required=MEMINFO_REQUIRED)


def _parse_rollup(src: _Source, rel: str, text: str) -> dict[str, int]:
    """smaps_rollup (one VMA header line, then its kB fields) via the live side's smaps parser."""
    _check_lines(src, rel, text)
    vmas = procfs.parse_smaps(text, src.where(rel), required=ROLLUP_REQUIRED)
    if len(vmas) != 1:
        raise ProcError(f"{src.where(rel)}: corrupt (expected one VMA header line, found {len(vmas)})")
    fields = dict(vmas[0].fields)
    return {k: fields[k] for k in (ln.partition(":")[0] for ln in text.splitlines()) if k in fields}  # file order


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
    """The AnonHugePages total of a smaps_thp file (VMA header lines, each followed by its AnonHugePages line)."""
    if text and not text.endswith("\n"):
        raise ProcError(f"{src.where(rel)}: truncated (last line has no newline)")
    vmas = procfs.parse_smaps(text, src.where(rel), required=("AnonHugePages",))
    return sum(v.get("AnonHugePages") for v in vmas)


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
        rollup = _parse_rollup(src, rel, src.read(rel))
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


def _manifest(src: _Source) -> dict[str, Any]:
    """The validated manifest.json."""
    where = src.where("manifest.json")
    try:
        manifest = json.loads(src.read("manifest.json"))
    except json.JSONDecodeError as e:
        raise ProcError(f"{where}: corrupt JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ProcError(f"{where}: not a thpsim snapshot manifest (format != {FORMAT_NAME!r})")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise ProcError(f"{where}: unsupported snapshot version {version!r} "
                        f"(this thpsim reads version {FORMAT_VERSION})")
    for key in ("hostname", "release", "machine"):
        if not isinstance(manifest.get(key), str):
            raise ProcError(f"{where}: corrupt (no {key!r} string)")
    if not isinstance(manifest.get("files", {}), dict) or not isinstance(manifest.get("absent", []), list):
        raise ProcError(f"{where}: corrupt ('files'/'absent' have the wrong type)")
    return manifest


def _host_files(src: _Source, manifest: dict[str, Any]) -> dict[str, str]:
    """The host-level files present (a THP file the manifest lists as absent may be missing)."""
    sizes, absent = manifest.get("files", {}), manifest.get("absent", [])
    host: dict[str, str] = {}
    for rel in HOST_FILES:
        if rel in absent and not src.exists(rel):
            continue
        _check_size_or_missing(src, rel, sizes)
        host[rel] = src.read(rel)
    return host


def _thp(src: _Source, host: dict[str, str]) -> tuple[dict[str, str], int]:
    """The THP sysfs settings (raw text) and hpage_pmd_size in bytes (0: no THP)."""
    thp: dict[str, str] = {}
    for name in ("enabled", "defrag", "use_zero_page"):
        if f"thp/{name}" in host:
            _check_lines(src, f"thp/{name}", host[f"thp/{name}"])
            thp[name] = host[f"thp/{name}"].strip()
    raw = host.get("thp/hpage_pmd_size")
    if raw is None:
        return thp, 0
    _check_lines(src, "thp/hpage_pmd_size", raw)
    if not re.fullmatch(r"\d+\n", raw) or int(raw) <= 0 or int(raw) & (int(raw) - 1):
        raise ProcError(f"{src.where('thp/hpage_pmd_size')}: corrupt (expected a power-of-two byte count, "
                        f"got {raw.strip()[:40]!r})")
    return thp, int(raw)


def _procs(src: _Source, manifest: dict[str, Any]) -> tuple[list[ProcEntry], list[EntryError]]:
    """Every stored process that loads, and an EntryError for each one that does not."""
    procs: list[ProcEntry] = []
    errors: list[EntryError] = []
    for pid in sorted(_int_list(src, manifest, "pids")):
        try:
            procs.append(_load_proc(src, pid, manifest.get("files", {})))
        except ProcError as e:
            msg = str(e)
            file, _, why = msg.partition(": ")
            errors.append(EntryError(pid=pid, file=file, message=why or msg))
    return procs, errors


def _unreadable(src: _Source, manifest: dict[str, Any]) -> tuple[SkippedProcess, ...]:
    try:
        return tuple(SkippedProcess(int(u["pid"]), str(u["reason"])) for u in manifest.get("unreadable", []))
    except (TypeError, KeyError, ValueError):
        raise ProcError(f"{src.where('manifest.json')}: corrupt ('unreadable' entries need pid and reason)") from None


def _load(src: _Source) -> Snapshot:
    manifest = _manifest(src)
    host = _host_files(src, manifest)
    meminfo = _parse_meminfo(src, host["meminfo"])
    vmstat = _parse_vmstat(src, host["vmstat"])
    thp, pmd = _thp(src, host)
    procs, errors = _procs(src, manifest)
    unreadable = _unreadable(src, manifest)
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


def load_files(files: dict[str, str], label: str = "live") -> Snapshot:
    """Load an in-memory capture (``{relative path: text}``, as :func:`thpsim.live.snapshot.capture` returns)."""
    return _load(_Source(label, {k: v.encode() for k, v in files.items()}, None))


__all__ = ["ProcEntry", "EntryError", "Snapshot", "SkippedProcess", "selected_mode", "load_snapshot", "load_files"]
