#!/usr/bin/env python3
"""A CPU-heavy, THP-using neighbour for the "passes under load" check (issue 12).

Loops until killed (or for --seconds): maps 64 MiB anonymous, MADV_HUGEPAGE, writes every 4 KiB page (THP
faults: thp_fault_alloc moves host-wide), MADV_DONTNEED half of each 2 MiB (PMD splits: thp_split_pmd), unmaps,
and spends the rest of its time on pure CPU work. It only touches its own mappings and changes no knob.

    python3 .ci/thp_load.py [--seconds N]
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import time

SIZE = 64 << 20
HPAGE = 2 << 20


def one_round() -> None:
    m = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
        for off in range(0, SIZE, 4096):
            m[off] = 1
        for off in range(0, SIZE - HPAGE, HPAGE):
            m.madvise(mmap.MADV_DONTNEED, off + HPAGE // 2, HPAGE // 4)
    finally:
        m.close()
    h = b"thp"
    for _ in range(20000):
        h = hashlib.sha256(h).digest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (default: run until killed)")
    a = ap.parse_args()
    end = time.monotonic() + a.seconds if a.seconds else None
    while end is None or time.monotonic() < end:
        one_round()


if __name__ == "__main__":
    main()
