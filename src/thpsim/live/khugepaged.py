"""The ``khugepaged`` op on a live kernel: wake khugepaged for whole scans of every mm (lab guests only).

mm/khugepaged.c: writing ``khugepaged/scan_sleep_millisecs`` (even its current value) resets
``khugepaged_sleep_expire`` and wakes the thread (``scan_sleep_millisecs_store``), which runs one
``khugepaged_do_scan``: mm after mm until ``pages_to_scan`` pages are scanned or the list head has been passed
twice (``pass_through_head < 2``), counting ``khugepaged/full_scans`` at each wrap, then sleeps again. With
``pages_to_scan`` raised for the op, one wake-up ends at the list head, so a second wake-up scans every
registered mm from its first one: the model's ``khugepaged`` op
(:func:`thpsim.model.khugepaged.khugepaged_pass`, every eligible PMD range of every mm). A collapse never makes
another range collapsible, so the extra pass of the first wake-up changes nothing the model would not do. The
op's result is the number of collapses (``thp_collapse_alloc`` delta: inside a lab guest nothing else collapses).

Lab guests boot with the sleep at :data:`GUEST_SCAN_SLEEP_MS` (an hour), so khugepaged collapses nothing between
a trace's ops; it only scans once when the first mm registers (``khugepaged_enter_vma`` wakes it), at the trace's
MADV_HUGEPAGE, before anything is written. This writes sysfs, so it runs only inside a lab guest (PID 1 is
thpsim's guest init): on any other machine the op stays model-only. Left out: khugepaged's ``alloc_sleep``
after a failed collapse allocation (a wait then times out with a note).
"""

from __future__ import annotations

import os
import time

from thpsim.errors import ThpsimError
from thpsim.live import procfs

KH_DIR = "/sys/kernel/mm/transparent_hugepage/khugepaged"
GUEST_SCAN_SLEEP_MS = 3_600_000
WAIT_SECONDS = 60.0
SCAN_PAGES = 1 << 20       # pages_to_scan during the op: every registered mm in one wake-up


def in_lab_guest() -> bool:
    """PID 1 is thpsim's lab guest init (thpsim.lab.guest_init), and the lab said so in the environment."""
    if not os.environ.get("THPSIM_LAB_KERNEL"):
        return False
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return b"guest_init.py" in f.read()
    except OSError:
        return False


def _read_int(name: str) -> int:
    with open(f"{KH_DIR}/{name}", encoding="ascii") as f:
        return int(f.read().strip())


def _write(name: str, value: int) -> None:
    with open(f"{KH_DIR}/{name}", "w", encoding="ascii") as f:
        f.write(f"{value}\n")


def _collapses() -> int:
    return procfs.read_vmstat(refresh=False).get("thp_collapse_alloc", 0)


class KhugepagedTrigger:
    """Runs the khugepaged op for real (see the module header)."""

    @staticmethod
    def unavailable() -> str | None:
        """Why the op stays model-only here, or None."""
        if not in_lab_guest():
            return "khugepaged runs for real only inside a lab guest (it writes khugepaged sysfs knobs)"
        if not os.access(f"{KH_DIR}/scan_sleep_millisecs", os.W_OK):
            return f"{KH_DIR} is not writable"
        return None

    def full_scan(self) -> tuple[int, tuple[str, ...]]:
        """Two wake-ups, each waited for until ``full_scans`` has moved and settled; (collapses, notes)."""
        sleep, pages = _read_int("scan_sleep_millisecs"), _read_int("pages_to_scan")
        c0 = _collapses()
        notes: list[str] = []
        try:
            _write("pages_to_scan", SCAN_PAGES)
            for _ in range(2):
                before = _read_int("full_scans")
                _write("scan_sleep_millisecs", sleep)          # wakes khugepaged
                if not _settled_after(before):
                    notes.append(f"khugepaged did not finish its scan within {WAIT_SECONDS:g} s")
                    break
        except OSError as e:
            raise ThpsimError(f"khugepaged op: {KH_DIR}: {e.strerror}") from None
        finally:
            _write("pages_to_scan", pages)
        return _collapses() - c0, tuple(notes)


def _settled_after(before: int, quiet: float = 0.3) -> bool:
    """Wait until ``full_scans`` exceeds ``before`` and then stays put for ``quiet`` seconds."""
    deadline = time.monotonic() + WAIT_SECONDS
    last, since = before, time.monotonic()
    while time.monotonic() < deadline:
        now = _read_int("full_scans")
        if now != last:
            last, since = now, time.monotonic()
        elif now > before and time.monotonic() - since >= quiet:
            return True
        time.sleep(0.01)
    return False


__all__ = ["KhugepagedTrigger", "in_lab_guest", "GUEST_SCAN_SLEEP_MS"]
