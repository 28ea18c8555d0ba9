"""Build (or fetch) a guest kernel for the lab and cache it.

``build_kernel`` runs the steps a kernel developer would, each logged under the build directory:

1. **fetch** the Debian source package with apt through a private configuration (:mod:`thpsim.lab.apt`);
2. **unpack** its tarball;
3. **patch**: apply the series (a folder of ``*.patch``/``*.diff`` in name order, one mbox as ``b4 am`` writes
   it, or one diff) with ``patch -p1``; each patch is dry-run first, so a patch that does not apply is named
   and the tree is left as it was;
4. **configure**: ``make tinyconfig``, merge the lab's fragment (``data/guest-<arch>.config``) with
   ``scripts/kconfig/merge_config.sh -m``, ``make olddefconfig``, and check that every option the lab needs
   survived (an option the version does not have is a clear error, not a silently weaker guest);
5. **compile** ``bzImage`` with ``make -jN``, reporting progress through a callback.

The result is cached by (package version, series hash, config hash, builder version) under
``$THPSIM_CACHE`` (default ``$XDG_CACHE_HOME/thpsim``, i.e. ``~/.cache/thpsim``) in ``lab/builds/``; an
index ``lab/kernels/NAME.json`` names the build ``thpsim lab run NAME`` boots.
Nothing here prints: progress goes to the ``progress`` callback, failures raise :class:`LabStepError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

from thpsim.errors import ThpsimError
from thpsim.lab.apt import AptWorkspace, LabStepError
from thpsim.lab.kernels import KernelSpec, default_series
from thpsim.live.env import parse_config

__all__ = ["BuiltKernel", "build_kernel", "cache_root", "find_built", "series_files", "required_options", "source_tree",
           "Progress", "BUILDER_VERSION"]

BUILDER_VERSION = 1
Progress = Callable[[str, str], None]    # (step, detail)

# Options the lab's guests must have, whatever the fragment says; checked in the final .config.
REQUIRED = ("CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_VM_EVENT_COUNTERS", "CONFIG_PROC_PAGE_MONITOR",
            "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_CONSOLE", "CONFIG_SWAP",
            "CONFIG_ZRAM", "CONFIG_FAULT_INJECTION", "CONFIG_FAIL_PAGE_ALLOC", "CONFIG_FAULT_INJECTION_DEBUG_FS",
            "CONFIG_DEBUG_FS", "CONFIG_KALLSYMS", "CONFIG_IKCONFIG_PROC", "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_DEVTMPFS", "CONFIG_TMPFS", "CONFIG_USERFAULTFD")
OPTIONAL = ("CONFIG_PT_RECLAIM", "CONFIG_THP_SWAP")   # present where the version has them


def cache_root() -> Path:
    env = os.environ.get("THPSIM_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "thpsim"


@dataclass(frozen=True)
class BuiltKernel:
    name: str
    version: str
    package_version: str
    series: str | None          # path of the series as given
    series_sha256: str | None
    config_sha256: str
    key: str
    directory: str
    image: str                  # bzImage / vmlinuz path
    initrd: str | None
    arch: str
    build_seconds: float
    options: tuple[tuple[str, str], ...]   # the REQUIRED + OPTIONAL values in the final .config
    kind: str = "source"
    initramfs_sha256: str = ""             # the lab initramfs the initrd was written from

    @property
    def patched(self) -> bool:
        return self.series_sha256 is not None


def source_tree(bk: BuiltKernel) -> Path:
    """The unpacked (and patched) kernel tree of a source build."""
    d = Path(bk.directory)
    trees = [p for p in d.iterdir() if (p / "Makefile").exists()] if d.is_dir() else []
    if not trees:
        raise ThpsimError(f"lab kernel {bk.name} has no source tree in {bk.directory}")
    return trees[0]


def fragment_text(arch: str) -> str:
    try:
        return resources.files("thpsim.lab").joinpath(f"data/guest-{arch}.config").read_text()
    except FileNotFoundError as e:
        raise ThpsimError(f"the lab has no guest config for arch {arch}") from e


def required_options() -> tuple[str, ...]:
    return REQUIRED


def series_files(series: Path) -> list[Path]:
    """The patches of a series in the order they apply: a folder's *.patch/*.diff by name, or one file."""
    if series.is_dir():
        files = sorted(p for p in series.iterdir() if p.suffix in (".patch", ".diff", ".mbox", ".mbx"))
        if not files:
            raise ThpsimError(f"{series}: no *.patch, *.diff or *.mbox files in this folder")
        return files
    if series.is_file():
        return [series]
    raise ThpsimError(f"{series}: no such series file or folder")


def _sha256_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _index_path(name: str) -> Path:
    return cache_root() / "lab" / "kernels" / f"{name}.json"


def find_built(name: str) -> BuiltKernel | None:
    """The cached build of a named kernel, or None (a missing image counts as not built)."""
    p = _index_path(name)
    try:
        d = json.loads(p.read_text())
        bk = BuiltKernel(**{**d, "options": tuple(tuple(x) for x in d["options"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return bk if Path(bk.image).exists() else None


class _Step:
    """Runs one logged build step's commands; a failure names the step and its log."""

    def __init__(self, name: str, log: Path, progress: Progress) -> None:
        self.name, self.log, self.progress = name, log, progress

    def run(self, argv: list[str], cwd: Path, *, stdin: Path | None = None, watch: bool = False,
            env: dict[str, str] | None = None) -> None:
        with open(self.log, "a") as log:
            log.write(f"$ (cd {cwd} && {' '.join(argv)})\n")
            log.flush()
            inp = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115
            try:
                p = subprocess.Popen(argv, cwd=cwd, stdin=inp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, text=True, errors="replace", start_new_session=True)
            except FileNotFoundError as e:
                raise LabStepError(self.name, f"{argv[0]} is not installed", self.log) from e
            try:
                assert p.stdout is not None
                n = 0
                for line in p.stdout:
                    log.write(line)
                    if watch:
                        m = re.match(r"\s+(CC|AS|LD|AR|OBJCOPY|GEN|HOSTCC|CHK|BUILD)\s+(\S+)", line)
                        if m:
                            n += 1
                            self.progress(self.name, f"{n} {m.group(1)} {m.group(2)}")
                rc = p.wait()
            except BaseException:
                _kill_group(p)
                raise
            finally:
                if stdin:
                    inp.close()  # type: ignore[union-attr]
        if rc != 0:
            tail = _last_error(self.log)
            raise LabStepError(self.name, f"{' '.join(argv[:3])} exited {rc}" + (f": {tail}" if tail else ""),
                               self.log)


def _kill_group(p: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=10)


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines[-200:]):
        if re.search(r"error|FAILED|Hunk|failed|can't find", line):
            return line.strip()[:200]
    return ""


def _source_tarball(tree: Path) -> Path:
    cands = sorted((tree / "usr" / "src").glob("linux-source-*.tar.*"))
    if not cands:
        raise LabStepError("fetch", f"no linux-source tarball in {tree}/usr/src")
    return cands[0]


def build_kernel(spec: KernelSpec, *, series: Path | None = None, name: str | None = None, jobs: int | None = None,
                 progress: Progress | None = None, force: bool = False) -> BuiltKernel:
    """Build ``spec`` (with ``series``, default: the spec's own) and cache it; return the cached build."""
    prog: Progress = progress or (lambda step, detail: None)
    name = name or spec.name
    if spec.kind != "source":
        return _fetch_prebuilt(spec, name, prog, force)
    job = _plan(spec, name, series if series is not None else default_series(spec), prog)
    reused = _reuse(job, force)
    if reused:
        return reused
    tree = _unpack(job)
    _apply_series(job, tree)
    env = _configure(job, tree)
    _compile(job, tree, jobs, env)
    return _install(spec, name, job.bdir, tree, job.apt, job.series, job.series_sha, job.config_sha, job.key,
                    job.pkg_ver, job.t0, prog)


@dataclass(frozen=True)
class _Job:
    """One source build: the spec, its series and fragment, the package version apt resolved, and the cache key
    (what the compiled image depends on: builder, package, version, series, config, arch) naming its folder."""

    spec: KernelSpec
    name: str
    series: Path | None
    patches: tuple[Path, ...]
    series_sha: str | None
    frag: str
    config_sha: str
    root: Path
    apt: AptWorkspace
    pkg_ver: str
    key: str
    t0: float
    prog: Progress

    @property
    def bdir(self) -> Path:
        return self.root / "builds" / f"{self.name}-{self.key}"

    @property
    def log(self) -> Path:
        return self.bdir / "build.log"


def _fetch_prebuilt(spec: KernelSpec, name: str, prog: Progress, force: bool) -> BuiltKernel:
    """An ``image`` kernel: Debian's prebuilt package (amd64 with a generated initramfs, or arm64)."""
    if spec.arch == "arm64":
        from thpsim.lab.arm64 import fetch_arm64_image

        return fetch_arm64_image(spec, name=name, progress=prog, force=force)
    from thpsim.lab.initramfs import fetch_image

    return fetch_image(spec, name=name, progress=prog, force=force)


def _plan(spec: KernelSpec, name: str, series: Path | None, prog: Progress) -> _Job:
    """Step 1, fetch: hash the series and the fragment, resolve the package version with apt, derive the key."""
    patches = tuple(series_files(series)) if series else ()
    series_sha = _sha256_files(list(patches)) if patches else None
    frag = fragment_text(spec.arch)
    config_sha = hashlib.sha256(frag.encode()).hexdigest()
    root = cache_root() / "lab"
    t0 = time.monotonic()

    prog("fetch", f"{spec.package} from Debian {spec.suite} (private apt configuration)")
    apt = AptWorkspace(root / "apt" / spec.suite, suites_for(spec.suite))
    apt.update()
    pkg_ver = apt.version(spec.package)
    # the kernel's key: what the compiled image depends on (the initramfs is refreshed on its own)
    key = hashlib.sha256(json.dumps([BUILDER_VERSION, spec.package, pkg_ver, series_sha, config_sha,
                                     spec.arch]).encode()).hexdigest()[:16]
    return _Job(spec, name, series, patches, series_sha, frag, config_sha, root, apt, pkg_ver, key, t0, prog)


def _reuse(job: _Job, force: bool) -> BuiltKernel | None:
    """A build with this key that is done (indexed, or only its index is missing), or one that was compiled by an
    earlier run whose later steps failed (installed now); None: build it (always with ``force``)."""
    cached = cached_build(job.name, job.key, force, job.prog)
    if cached or force:
        return cached
    bdir = job.bdir
    if (bdir / "bzImage").exists() and (bdir / "meta.json").exists():
        bk = _load_meta(bdir / "meta.json")
        write_index(job.name, bk)
        job.prog("cached", bk.image)
        return bk
    if (bdir / ".compiled").exists() and (bdir / "lab.config").read_text() == job.frag:
        job.prog("compile", "resuming: this tree was compiled by an earlier run whose later steps failed")
        tree = next(p for p in bdir.iterdir() if (p / "Makefile").exists())
        return _install(job.spec, job.name, bdir, tree, job.apt, job.series, job.series_sha, job.config_sha,
                        job.key, job.pkg_ver, job.t0, job.prog)
    return None


def _unpack(job: _Job) -> Path:
    """Step 2, unpack: the source package (once per version) and its kernel tarball into a fresh build folder."""
    spec, apt, prog = job.spec, job.apt, job.prog
    deb = apt.download(spec.package)
    src_root = job.root / "src" / deb.stem
    if not (src_root / ".extracted").exists():
        prog("fetch", f"unpacking {deb.name}")
        shutil.rmtree(src_root, ignore_errors=True)
        apt.extract(deb, src_root)
        (src_root / ".extracted").touch()
    tarball = _source_tarball(src_root)

    bdir = job.bdir
    shutil.rmtree(bdir, ignore_errors=True)
    bdir.mkdir(parents=True)
    prog("unpack", tarball.name)
    _Step("unpack", job.log, prog).run(["tar", "-xf", str(tarball)], bdir)
    trees = [p for p in bdir.iterdir() if p.is_dir() and (p / "Makefile").exists()]
    if len(trees) != 1:
        raise LabStepError("unpack", f"expected one kernel tree in {bdir}", job.log)
    return trees[0]


def _apply_series(job: _Job, tree: Path) -> None:
    """Step 3, patch: each patch dry-run first, so one that does not apply is named and the tree left as it was."""
    log = job.log
    for patch in job.patches:
        job.prog("patch", patch.name)
        step = _Step("patch", log, job.prog)
        try:
            step.run(["patch", "-p1", "--forward", "--batch", "--dry-run", "-s"], tree, stdin=patch)
        except LabStepError as e:
            raise LabStepError("patch", f"{patch} does not apply to {job.spec.package} {job.pkg_ver}"
                               + (f": {_last_error(log)}" if _last_error(log) else ""), log) from e
        step.run(["patch", "-p1", "--forward", "--batch", "-s"], tree, stdin=patch)


def _configure(job: _Job, tree: Path) -> dict[str, str]:
    """Step 4, configure: tinyconfig + the lab fragment + olddefconfig; every REQUIRED option must survive.
    Returns the reproducible-build environment the compile uses too."""
    job.prog("configure", "tinyconfig + lab fragment")
    (job.bdir / "lab.config").write_text(job.frag)
    env = dict(os.environ, KBUILD_BUILD_USER="thpsim", KBUILD_BUILD_HOST="lab",
               KBUILD_BUILD_TIMESTAMP="2026-01-01", LC_ALL="C")
    cfg = _Step("configure", job.log, job.prog)
    cfg.run(["make", "tinyconfig"], tree, env=env)
    cfg.run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(job.bdir / "lab.config")], tree, env=env)
    cfg.run(["make", "olddefconfig"], tree, env=env)
    final = parse_config((tree / ".config").read_text())
    missing = [o for o in REQUIRED if final.get(o, "n") == "n"]
    if missing:
        raise LabStepError("configure", f"{job.spec.package} {job.pkg_ver} has no {', '.join(missing)} after "
                           "olddefconfig (a dependency is off or the version lacks it)", job.log)
    return env


def _compile(job: _Job, tree: Path, jobs: int | None, env: dict[str, str]) -> None:
    """Step 5, compile: bzImage with make -jN; the build folder is then marked compiled (resumable)."""
    n = jobs or os.cpu_count() or 1
    job.prog("compile", f"bzImage with make -j{n}")
    _Step("compile", job.log, job.prog).run(["make", f"-j{n}", "bzImage"], tree, watch=True, env=env)
    if not (tree / "arch" / "x86" / "boot" / "bzImage").exists():
        raise LabStepError("compile", "make finished but arch/x86/boot/bzImage is missing", job.log)
    (job.bdir / ".compiled").touch()


def suites_for(suite: str) -> tuple[str, ...]:
    """A backports suite needs its base suite too (busybox-static, for the initramfs, lives there)."""
    base = suite.split("-")[0]
    return (suite, base) if base != suite else (suite,)


def _install(spec: KernelSpec, name: str, bdir: Path, tree: Path, apt: AptWorkspace, series: Path | None,
             series_sha: str | None, config_sha: str, key: str, pkg_ver: str, t0: float,
             prog: Progress) -> BuiltKernel:
    """Copy the image, write the initramfs and the cache records."""
    image = bdir / "bzImage"
    final = parse_config((tree / ".config").read_text())
    shutil.copy2(tree / "arch" / "x86" / "boot" / "bzImage", image)
    prog("initramfs", "busybox, overlay root over the read-only 9p share")
    from thpsim.lab.initramfs import write_initramfs

    initrd = bdir / "initrd.img"
    write_initramfs(apt, initrd, None)
    from thpsim.lab.initramfs import initramfs_sha256
    shutil.copy2(tree / ".config", bdir / "config")
    shutil.copy2(tree / "System.map", bdir / "System.map")
    opts = tuple((o, final.get(o, "n")) for o in (*REQUIRED, *OPTIONAL))
    bk = BuiltKernel(name=name, version=spec.version, package_version=pkg_ver,
                     series=str(series) if series else None, series_sha256=series_sha, config_sha256=config_sha,
                     key=key, directory=str(bdir), image=str(image), initrd=str(initrd), arch=spec.arch,
                     build_seconds=round(time.monotonic() - t0, 1), options=opts,
                     initramfs_sha256=initramfs_sha256())
    return record_build(bk, prog, f"{image} in {bk.build_seconds:.0f} s")


def fresh_initramfs(bk: BuiltKernel) -> BuiltKernel:
    """``bk`` with an initrd written by this thpsim's initramfs code (rewritten if it is older)."""
    from thpsim.lab.initramfs import initramfs_sha256, write_initramfs
    from thpsim.lab.kernels import get_kernel

    if bk.arch == "arm64":
        from thpsim.lab.arm64 import check_ready

        return check_ready(bk)
    if bk.initrd and bk.initramfs_sha256 == initramfs_sha256():
        return bk
    if bk.kind != "source":
        raise ThpsimError(f"lab kernel {bk.name} was fetched by an older thpsim: run `thpsim lab build {bk.name} "
                          "--force` (a download, no compile)")
    spec = get_kernel(bk.name) if bk.name in _known() else None
    suite = spec.suite if spec else "trixie"
    apt = AptWorkspace(cache_root() / "lab" / "apt" / suite, suites_for(suite))
    apt.update()
    initrd = Path(bk.directory) / "initrd.img"
    write_initramfs(apt, initrd, None)
    new = replace(bk, initrd=str(initrd), initramfs_sha256=initramfs_sha256())
    (Path(bk.directory) / "meta.json").write_text(json.dumps(asdict(new), indent=1))
    write_index(bk.name, new)
    return new


def _known() -> set[str]:
    from thpsim.lab.kernels import KERNELS

    return set(KERNELS)


def cached_build(name: str, key: str, force: bool, progress: Progress) -> BuiltKernel | None:
    """The cached build of ``name`` if it has ``key`` (and ``force`` is off)."""
    cached = find_built(name)
    if not force and cached and cached.key == key:
        progress("cached", cached.image)
        return cached
    return None


def fresh_build_dir(name: str, key: str) -> Path:
    """An empty build folder for (name, key) under the lab cache."""
    bdir = cache_root() / "lab" / "builds" / f"{name}-{key}"
    shutil.rmtree(bdir, ignore_errors=True)
    return bdir


def record_build(bk: BuiltKernel, progress: Progress, detail: str) -> BuiltKernel:
    """Write the build's meta.json and the name's index; report it done."""
    (Path(bk.directory) / "meta.json").write_text(json.dumps(asdict(bk), indent=1))
    write_index(bk.name, bk)
    progress("done", detail)
    return bk


def _load_meta(p: Path) -> BuiltKernel:
    d = json.loads(p.read_text())
    return BuiltKernel(**{**d, "options": tuple(tuple(x) for x in d["options"])})


def write_index(name: str, bk: BuiltKernel) -> None:
    p = _index_path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(asdict(bk), indent=1))


