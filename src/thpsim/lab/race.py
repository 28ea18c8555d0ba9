"""``thpsim lab race KERNEL``: the v3 02/24 ``__split_vma`` race (found by ``thpsim races``) on a real kernel.

Compiles ``data/race_split_vma.c`` (cached beside the lab builds) and runs it on KERNEL — inside its QEMU guest
with two vCPUs, or here for ``host``. Each round the program faults a THP under the per-VMA lock while the main
thread splits the same VMA with ``madvise(MADV_NOHUGEPAGE)``; a hit is a 1 MiB VMA whose smaps shows
AnonHugePages (a huge PMD straddling the new boundary). The lab config has CONFIG_DEBUG_VM, so the munmap after a
hit usually oopses in ``split_huge_pmd_locked`` (``VM_BUG_ON_VMA``: the VMA does not cover the PMD): the result
then carries the oops's first lines from the console.

The program only touches its own mappings; on the host it changes no knob. Left out: other splitters than
madvise (munmap, mprotect and mlock reach the same ``__split_vma``), ``vma_shrink`` (mremap shrink in place).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from thpsim.errors import ThpsimError
from thpsim.lab.apt import LabStepError
from thpsim.lab.build import cache_root
from thpsim.lab.guest import GuestConfig, run_in_guest
from thpsim.lab.kernels import HOST

__all__ = ["RaceRun", "build_race_binary", "parse_race_output", "run_race"]

SOURCE = "data/race_split_vma.c"
_SUMMARY = re.compile(r"race_split_vma: (\d+) rounds: (\d+) hits, (\d+) THP faults before the split, (\d+) faults "
                      r"after it")
_HIT = re.compile(r"^hit: round (\d+), delay (\d+) us:")
_OOPS = re.compile(r"(Oops:|kernel BUG at|RIP: |Kernel panic)")


@dataclass(frozen=True)
class RaceRun:
    kernel: str
    rounds: int                    # asked for
    rounds_done: int | None        # from the summary line (None: the kernel died first)
    hits: int                      # rounds whose 1 MiB VMA showed AnonHugePages
    faults_before: int | None      # rounds where the THP fault came first (and was split)
    faults_after: int | None       # rounds where the fault came after the VMA split (a 4 KiB page)
    first_hit_round: int | None
    oops: tuple[str, ...]          # the kernel's oops lines, if it died
    returncode: int | None

    @property
    def raced(self) -> bool:
        return self.hits > 0 or bool(self.oops)


def build_race_binary() -> Path:
    """gcc the reproducer once per source text (cached under the lab cache)."""
    text = resources.files("thpsim.lab").joinpath(SOURCE).read_text()
    out = cache_root() / "lab" / "race"
    out.mkdir(parents=True, exist_ok=True)
    src, binary = out / "race_split_vma.c", out / "race_split_vma"
    if binary.exists() and src.exists() and src.read_text() == text:
        return binary
    src.write_text(text)
    log = out / "build.log"
    with open(log, "w") as f:
        try:
            r = subprocess.run(["gcc", "-O2", "-Wall", "-pthread", "-o", str(binary), str(src)], stdout=f,
                               stderr=subprocess.STDOUT)
        except FileNotFoundError as e:
            raise ThpsimError("gcc is not installed: apt-get install gcc") from e
    if r.returncode != 0:
        raise LabStepError("race build", f"gcc exited {r.returncode}", log)
    return binary


def parse_race_output(kernel: str, rounds: int, out: str, console: str, returncode: int | None) -> RaceRun:
    """The program's lines (hits, summary) and the console's oops lines, as one record."""
    hits = [int(m.group(1)) for line in out.splitlines() if (m := _HIT.match(line))]
    s = _SUMMARY.search(out)
    oops = tuple(line.strip() for line in console.splitlines() if _OOPS.search(line))[:6]
    return RaceRun(kernel, rounds, int(s.group(1)) if s else None, int(s.group(2)) if s else len(hits),
                   int(s.group(3)) if s else None, int(s.group(4)) if s else None, hits[0] if hits else None,
                   oops, returncode)


def run_race(kernel: str, cfg: GuestConfig | None = None, *, rounds: int = 300, max_delay_us: int = 40) -> RaceRun:
    """``cfg``: the guest (default: 2 vCPUs, the race needs two; the program refuses to run on one)."""
    if rounds < 1 or max_delay_us < 0:
        raise ThpsimError("--rounds must be >= 1 and --max-delay >= 0")
    binary = build_race_binary()
    argv = [str(binary), str(rounds), str(max_delay_us)]
    cfg = cfg or GuestConfig(cpus=2, timeout=600)
    with tempfile.TemporaryFile() as out:
        console, rc = "", None
        try:
            res = run_in_guest(kernel, argv, cfg, stdout=out, stderr=out)
            rc = res.returncode
            if res.console_log and kernel != HOST:
                console = Path(res.console_log).read_text(errors="replace")
        except LabStepError as e:          # the guest died (an oops with panic_on_oops): keep what it printed
            if e.log is None or not e.log.exists():
                raise
            console = e.log.read_text(errors="replace")
        out.seek(0)
        text = out.read().decode(errors="replace")
    if rc == 2:
        raise ThpsimError(f"race_split_vma could not run on {kernel}: {text.strip() or 'setup error'}")
    return parse_race_output(kernel, rounds, text, console, rc)
