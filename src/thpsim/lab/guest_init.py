"""PID 1 of a lab guest: set the guest up, run one job, report its exit status, reboot (QEMU then exits).

Runs from the host's / (shared read-only over 9p as the guest's root) and uses only the standard library.
The root is an overlay (written by the lab initramfs): the host's / read-only over 9p, under a tmpfs in guest
RAM. It mounts the pseudo file systems, reads the job from the read-only 9p share ``thpsimjob``
(job.json, written by thpsim.lab.guest), applies the
job's sysfs values and swap (zram) *inside the guest*, runs the command with stdout/stderr on the virtio
serial ports ``thpsim.out``/``thpsim.err`` and writes ``rc N`` to ``thpsim.status``. Nothing it does can
write to the host: the only host shares are mounted read-only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import subprocess
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
RB_AUTOBOOT = 0x01234567


def mount(src: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    r = libc.mount(src.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
    if r != 0:
        e = ctypes.get_errno()
        if e == errno.EBUSY and fstype in ("devtmpfs", "proc", "sysfs"):   # already mounted (DEVTMPFS_MOUNT)
            return
        raise OSError(e, f"mount {fstype} on {target}: {os.strerror(e)}")


PR_SET_THP_DISABLE = 41


def thp_disable() -> None:
    """prctl(PR_SET_THP_DISABLE, 1): no THP for this process and its descendants (inherited across fork)."""
    libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)


def ports() -> dict[str, str]:
    out = {}
    base = "/sys/class/virtio-ports"
    for d in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        try:
            with open(f"{base}/{d}/name") as f:
                out[f.read().strip()] = f"/dev/{d}"
        except OSError:
            pass
    return out


def write_value(path: str, value: str) -> None:
    full = path if path.startswith("/") else "/sys/" + path
    with open(full, "w") as f:
        f.write(value)


def setup_swap(mb: int, err: int) -> None:
    write_value("/sys/block/zram0/disksize", f"{mb}M")
    subprocess.run(["mkswap", "/dev/zram0"], stdout=subprocess.DEVNULL, stderr=err, check=True)
    if libc.swapon(b"/dev/zram0", 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"swapon /dev/zram0: {os.strerror(e)}")


def main() -> int:
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV)
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV)
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID)
    os.makedirs("/dev/shm", exist_ok=True)
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for fs, target in (("debugfs", "/sys/kernel/debug"), ("cgroup2", "/sys/fs/cgroup")):
        with contextlib.suppress(OSError):
            mount(fs, target, fs, MS_NOSUID | MS_NODEV)
    os.makedirs("/run/thpsim-job", exist_ok=True)
    mount("thpsimjob", "/run/thpsim-job", "9p", MS_RDONLY, "trans=virtio,version=9p2000.L")
    with open("/run/thpsim-job/job.json") as f:
        job = json.load(f)
    p = {}
    for _ in range(50):
        p = ports()
        if {"thpsim.out", "thpsim.err", "thpsim.status"} <= p.keys():
            break
        time.sleep(0.1)
    out = os.open(p["thpsim.out"], os.O_WRONLY)
    err = os.open(p["thpsim.err"], os.O_WRONLY)
    status = os.open(p["thpsim.status"], os.O_WRONLY)
    os.write(status, b"booted %.3f\n" % time.clock_gettime(time.CLOCK_BOOTTIME))
    rc = 125
    try:
        for path, value in job.get("sysfs", []):
            try:
                write_value(path, value)
            except OSError as e:
                os.write(err, f"thpsim lab: guest: cannot set {path}={value}: {e.strerror}\n".encode())
                raise SystemExit(125) from None
        if job.get("swap_mb"):
            setup_swap(int(job["swap_mb"]), err)
        env = dict(job.get("env", {}))
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.setdefault("HOME", "/root")
        os.write(status, b"start %.3f\n" % time.clock_gettime(time.CLOCK_BOOTTIME))
        # a live run: no THP (and so no khugepaged collapse) in thpsim's own processes, which would move the
        # guest's thp_* counters; the trace child clears it again (thpsim.live._child.main)
        quiet = env.get("THPSIM_THP_DISABLE") == "1"
        proc = subprocess.Popen(job["argv"], cwd=job.get("cwd") or "/", env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, preexec_fn=thp_disable if quiet else None)
        rc = proc.wait()
        if rc < 0:
            rc = 128 - rc
    except SystemExit as e:
        rc = int(e.code or 125)
    except Exception as e:  # report anything to the host, never hang the boot
        os.write(err, f"thpsim lab: guest init: {type(e).__name__}: {e}\n".encode())
        rc = 125
    os.write(status, b"rc %d %.3f\n" % (rc, time.clock_gettime(time.CLOCK_BOOTTIME)))
    for fd in (out, err, status):
        os.close(fd)
    os.sync()
    return rc


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the serial console (ttyS0) shows it in the boot log
        sys.stderr.write(f"thpsim lab: guest init failed: {type(e).__name__}: {e}\n")
    time.sleep(0.2)
    libc.reboot(RB_AUTOBOOT)
