"""Boot a lab kernel under QEMU and run one command inside it, streaming its output and exit status back.

The guest's root is the host's ``/`` shared **read-only** over 9p, so the host's Python runs thpsim from
the checkout with no install; all writable scratch (/tmp, /run, /root, swap in zram) lives in guest RAM.
A second read-only 9p share carries the job (``job.json``: argv, cwd, environment, sysfs values, swap).
Three virtio-serial ports carry the command's stdout, stderr and a status line (``rc N``); the kernel's
console goes to ``console.log`` in the run's folder (under the lab cache; runs beyond the last 20 are
removed once a day old).

Every boot has a watchdog (``GuestConfig.timeout``); QEMU runs in its own process group and is killed and
reaped on every exit path (normal end, timeout, error, KeyboardInterrupt). Acceleration: ``kvm`` when
asked, ``tcg`` otherwise; ``auto`` uses KVM only if a short probe boot with it once succeeded on this host
(the verdict is remembered per host kernel and QEMU version) — KVM on this workplace is a paravirtual
flavour that cannot run an ordinary guest kernel, so auto ends up on TCG here.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from thpsim.errors import ThpsimError
from thpsim.lab.apt import LabStepError
from thpsim.lab.build import BuiltKernel, cache_root, find_built, fresh_initramfs
from thpsim.lab.kernels import HOST, KERNELS, KernelSpec, get_kernel
from thpsim.live.khugepaged import GUEST_SCAN_SLEEP_MS

__all__ = ["GuestConfig", "GuestResult", "run_in_guest", "guest_unavailable", "guest_argv", "qemu_command", "THP_DIR"]

THP_DIR = "kernel/mm/transparent_hugepage"
PORTS = ("thpsim.out", "thpsim.err", "thpsim.status")
KEEP_RUNS = 20
KEEP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class GuestConfig:
    cpus: int = 2
    memory_mb: int = 2048
    swap_mb: int = 0
    thp: str | None = "madvise"           # THP enabled mode inside the guest (None: the kernel's default)
    sysfs: tuple[tuple[str, str], ...] = ()
    accel: str = "auto"
    timeout: float = 3600.0
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.cpus <= 64:
            raise ThpsimError(f"--cpus must be 1..64 (got {self.cpus})")
        if self.memory_mb < 256:
            raise ThpsimError(f"--memory must be at least 256M (got {self.memory_mb}M)")
        if self.swap_mb < 0 or self.swap_mb > 64 * 1024:
            raise ThpsimError(f"--swap must be 0..64G (got {self.swap_mb}M)")
        if self.timeout <= 0:
            raise ThpsimError("--timeout must be positive")
        if self.accel not in ("auto", "kvm", "tcg"):
            raise ThpsimError(f"--accel must be auto, kvm or tcg (got {self.accel!r})")

    def sysfs_values(self) -> list[tuple[str, str]]:
        """THP mode, khugepaged asleep (it collapses only at a trace's khugepaged op: thpsim.live.khugepaged),
        then the user's values (which win)."""
        vals = [(f"{THP_DIR}/enabled", self.thp)] if self.thp else []
        vals.append((f"{THP_DIR}/khugepaged/scan_sleep_millisecs", str(GUEST_SCAN_SLEEP_MS)))
        return vals + list(self.sysfs)


@dataclass(frozen=True)
class GuestResult:
    kernel: str
    returncode: int
    accel: str
    boot_seconds: float        # guest CLOCK_BOOTTIME when the command started (0 on the host)
    run_seconds: float         # wall time of the whole run, boot included
    console_log: str | None


def guest_argv(argv: list[str], python: str | None = None) -> list[str]:
    """``thpsim ...`` runs as ``python -m thpsim ...`` with this checkout's interpreter (or ``python``, the
    guest's own where its root is not the host's, as in arm64 guests)."""
    if argv and argv[0] == "thpsim":
        return [python or os.path.realpath(sys.executable), "-m", "thpsim", *argv[1:]]
    return argv


def _guest_python(arch: str) -> str | None:
    if arch == "arm64":
        from thpsim.lab.arm64 import GUEST_PYTHON

        return GUEST_PYTHON
    return None


def _src_dir() -> str:
    return str(Path(__file__).resolve().parents[2])


def _run_dir(kernel: str) -> Path:
    base = cache_root() / "lab" / "runs"
    base.mkdir(parents=True, exist_ok=True)
    runs = sorted(base.iterdir())
    now = time.time()
    for old in runs[:-KEEP_RUNS]:     # never a folder a running guest may still use (its watchdog: hours)
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    # unique even for two boots of one process in one second (the accel probe, then the job)
    return Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-", suffix=f"-{kernel}",
                                 dir=base))


def qemu_command(bk: BuiltKernel, cfg: GuestConfig, run: Path, accel: str) -> list[str]:
    init = str(Path(__file__).resolve().with_name("guest_init.py"))
    if bk.arch == "arm64":
        from thpsim.lab.arm64 import qemu_command_arm64

        return qemu_command_arm64(bk, cfg, run, accel, PORTS, init)
    python = os.path.realpath(sys.executable)
    if not bk.initrd:
        raise ThpsimError(f"lab kernel {bk.name} was built without the lab initramfs: rebuild it with "
                          f"`thpsim lab build {bk.name} --force`")
    # the initramfs mounts / read-only over 9p under a RAM overlay, then runs guest_init
    append = (f"console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init THPSIM_PYTHON={python} "
              f"THPSIM_INIT={init}")
    cpu = "max,la57=off" if accel == "tcg" else "host"
    cmd = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-accel", "tcg,thread=multi" if accel == "tcg" else "kvm", "-cpu", cpu,
           "-smp", str(cfg.cpus), "-m", f"{cfg.memory_mb}M", "-kernel", bk.image, "-append", append,
           "-serial", f"file:{run / 'console.log'}", "-monitor", "none",
           "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
           "-device", "virtio-9p-pci,fsdev=root,mount_tag=host0",
           "-fsdev", f"local,id=job,path={run / 'job'},security_model=none,readonly=on",
           "-device", "virtio-9p-pci,fsdev=job,mount_tag=thpsimjob",
           "-device", "virtio-serial-pci"]
    cmd += ["-initrd", bk.initrd]
    for i, name in enumerate(PORTS):
        cmd += ["-chardev", f"socket,id=p{i},path={run / f'p{i}.sock'},server=on,wait=on",
                "-device", f"virtserialport,chardev=p{i},name={name}"]
    return cmd


def _kill(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=10)


def _connect_ports(run: Path, p: subprocess.Popen[bytes], deadline: float) -> list[socket.socket]:
    socks = []
    for i in range(len(PORTS)):
        path = str(run / f"p{i}.sock")
        while True:
            if p.poll() is not None:
                raise LabStepError("boot", f"QEMU exited {p.returncode} before the guest started",
                                   run / "qemu.log")
            if time.monotonic() > deadline:
                raise LabStepError("boot", "QEMU did not open its serial sockets", run / "qemu.log")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                socks.append(s)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                time.sleep(0.05)
    return socks


def _accel(cfg: GuestConfig, bk: BuiltKernel) -> str:
    if bk.arch == "arm64":          # another architecture: emulated, whatever the host's KVM
        if cfg.accel == "kvm":
            raise ThpsimError(f"lab kernel {bk.name} is arm64: this host runs it under TCG only (--accel tcg)")
        return "tcg"
    if cfg.accel != "auto":
        return cfg.accel
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    verdict_file = cache_root() / "lab" / "accel.json"
    key = f"{os.uname().release} {_qemu_version()}"
    try:
        verdicts = json.loads(verdict_file.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if key not in verdicts:
        probe = GuestConfig(cpus=1, memory_mb=512, thp=None, accel="kvm", timeout=60)
        try:
            r = _boot(bk, ["true"], probe, "kvm", None, None)
            verdicts[key] = "kvm" if r.returncode == 0 else "tcg"
        except ThpsimError:
            verdicts[key] = "tcg"
        verdict_file.parent.mkdir(parents=True, exist_ok=True)
        verdict_file.write_text(json.dumps(verdicts, indent=1))
    return str(verdicts[key])


def _qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    except FileNotFoundError as e:
        raise ThpsimError("qemu-system-x86_64 is not installed: apt-get install qemu-system-x86") from e
    return out.splitlines()[0] if out else "?"


def run_in_guest(kernel: str, argv: list[str], cfg: GuestConfig, *, stdout: BinaryIO | None = None,
                 stderr: BinaryIO | None = None) -> GuestResult:
    """Run ``argv`` inside the lab kernel ``kernel`` (or here, for ``host``); stream its output."""
    if kernel == HOST:
        argv = guest_argv(argv)
        t0 = time.monotonic()
        env = dict(os.environ, PYTHONPATH=_src_dir() + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            p = subprocess.run(argv, stdout=stdout, stderr=stderr, env=env, timeout=cfg.timeout)
        except FileNotFoundError as e:
            raise ThpsimError(f"{argv[0]}: command not found") from e
        except subprocess.TimeoutExpired as e:
            raise ThpsimError(f"the command timed out after {cfg.timeout:.0f} s") from e
        return GuestResult(HOST, p.returncode, "none", 0.0, round(time.monotonic() - t0, 3), None)
    spec = lab_spec(kernel)
    argv = guest_argv(argv, _guest_python(spec.arch))
    why = guest_unavailable(kernel)
    bk = find_built(kernel)
    if why or bk is None:
        raise ThpsimError(why or f"lab kernel {kernel} is not built here")
    bk = fresh_initramfs(bk)
    return _boot(bk, argv, cfg, _accel(cfg, bk), stdout, stderr)


def lab_spec(kernel: str) -> KernelSpec:
    """A named lab kernel, or a build cached under its own name (``thpsim lab build K --series S --name N``):
    its arch and kind come from the build."""
    if kernel in KERNELS:
        return KERNELS[kernel]
    bk = find_built(kernel)
    if bk is None:
        return get_kernel(kernel)            # the one-line "unknown lab kernel" error
    return KernelSpec(bk.name, bk.version, bk.kind, "", "", bk.arch, bk.series,
                      f"a lab build named {bk.name} (series {bk.series})")


def guest_unavailable(kernel: str) -> str | None:
    """Why ``kernel``'s guest cannot boot here (not built, or its QEMU missing), with the fix; None if it can."""
    spec = lab_spec(kernel)
    if find_built(kernel) is None:
        return (f"lab kernel {kernel} is not built here: run `thpsim lab build {kernel}` first "
                f"({'about 20 min on 2 cores' if spec.kind == 'source' else 'a download'})")
    qemu, qpkg = ("qemu-system-aarch64", "qemu-system-arm") if spec.arch == "arm64" else \
        ("qemu-system-x86_64", "qemu-system-x86")
    if shutil.which(qemu) is None:
        return f"{qemu} is not installed: apt-get install {qpkg}"
    return None


def _boot(bk: BuiltKernel, argv: list[str], cfg: GuestConfig, accel: str, stdout: BinaryIO | None,
          stderr: BinaryIO | None) -> GuestResult:
    run = _run_dir(bk.name)
    (run / "job").mkdir()
    env = {"PYTHONPATH": _src_dir(), "THPSIM_LAB_KERNEL": bk.name, "PYTHONDONTWRITEBYTECODE": "1",
           "MPLCONFIGDIR": "/tmp/mpl", "LC_ALL": "C.UTF-8", "TERM": "dumb", **dict(cfg.env)}
    cwd = os.getcwd()
    if bk.arch == "arm64":          # the guest sees the checkout, not the host's /
        from thpsim.lab.arm64 import guest_cwd

        cwd = guest_cwd(cwd)
    job = {"argv": argv, "cwd": cwd, "env": env, "sysfs": cfg.sysfs_values(), "swap_mb": cfg.swap_mb}
    (run / "job" / "job.json").write_text(json.dumps(job, indent=1))
    cmd = qemu_command(bk, cfg, run, accel)
    (run / "qemu.cmd").write_text(" ".join(cmd) + "\n")
    t0 = time.monotonic()
    deadline = t0 + cfg.timeout
    with open(run / "qemu.log", "wb") as qlog:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog, start_new_session=True)
    socks: list[socket.socket] = []
    try:
        socks = _connect_ports(run, p, min(deadline, t0 + 60))
        status = _pump(socks, p, stdout, stderr, deadline, run, cfg.timeout)
    finally:
        for s in socks:
            s.close()
        _kill(p)
    rc, boot = status
    if rc is None:
        tail = _console_tail(run / "console.log")
        raise LabStepError("guest run", f"the guest stopped without reporting an exit status{tail}",
                           run / "console.log")
    return GuestResult(bk.name, rc, accel, boot, round(time.monotonic() - t0, 3), str(run / "console.log"))


def _pump(socks: list[socket.socket], p: subprocess.Popen[bytes], stdout: BinaryIO | None,
          stderr: BinaryIO | None, deadline: float, run: Path, timeout: float) -> tuple[int | None, float]:
    """Copy the output ports to the sinks until the guest reports ``rc`` (then drain for 5 s at most),
    QEMU exits, or the watchdog fires."""
    sel = selectors.DefaultSelector()
    sinks: list[BinaryIO | None] = [stdout, stderr, None]
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    status = b""
    rc: int | None = None
    drain_end: float | None = None
    while sel.get_map():
        now = time.monotonic()
        if drain_end is not None and now >= drain_end:
            break
        if now >= deadline:
            raise LabStepError("guest run", f"watchdog: the guest ran past its {timeout:.0f} s timeout and "
                               "was killed (raise it with --timeout)", run / "console.log")
        events = sel.select(timeout=0.5)
        for key, _ in events:
            sock = socks[key.data]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(sock)
                continue
            sink = sinks[key.data]
            if sink is None:
                status += data
            else:
                sink.write(data)
                sink.flush()
        if rc is None:
            rc = _status_rc(status)
            if rc is not None:
                drain_end = time.monotonic() + 5
        if not events and p.poll() is not None:
            break
    return rc, _status_time(status, b"start")


def _status_rc(status: bytes) -> int | None:
    for line in status.split(b"\n")[:-1]:      # complete lines only
        if line.startswith(b"rc "):
            return int(line.split()[1])
    return None


def _status_time(status: bytes, word: bytes) -> float:
    for line in status.splitlines():
        if line.startswith(word + b" "):
            return float(line.split()[1])
    return 0.0


def _console_tail(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    for x in reversed(lines[-40:]):
        if any(w in x for w in ("Kernel panic", "BUG", "Oops", "not syncing", "failed", "error")):
            return f" (console: {x.strip()[:160]})"
    return f" (console: {lines[-1].strip()[:160]})" if lines else ""
