"""The ``lab`` command: ``lab build`` (fetch, patch, configure and build a guest kernel), ``lab list``, ``lab run``
(a command inside a QEMU guest) and ``lab kselftest``. The work is :mod:`thpsim.lab`'s; this module parses,
shows progress and prints."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import thpsim.cli.options as O
from thpsim.cli.common import EXIT_DIFF, EXIT_OK, Command, emit, emit_json, out
from thpsim.errors import ThpsimError

__all__ = ["COMMANDS", "cmd_lab"]


def cmd_lab(args: argparse.Namespace) -> int:
    return {"build": _lab_build, "list": _lab_list, "run": _lab_run,
            "kselftest": _lab_kselftest, "race": _lab_race}[args.lab_command](args)


class _Progress:
    """One status line for long lab steps: rewritten in place on a terminal, every 30 s otherwise."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()
        self.step = ""

    def __call__(self, step: str, detail: str) -> None:
        now = time.monotonic()
        el = int(now - self.t0)
        line = f"thpsim lab: [{el // 60:d}:{el % 60:02d}] {step}: {detail}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[:150])
        elif step != self.step or now - self.last >= 30:
            sys.stderr.write(line + "\n")
            self.last = now
        self.step = step
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty and self.step:
            sys.stderr.write("\n")


def _lab_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thpsim.lab.build import build_kernel
    from thpsim.lab.kernels import get_kernel

    spec = get_kernel(args.kernel)
    prog = _Progress()
    try:
        bk = build_kernel(spec, series=Path(args.series) if args.series else None, name=args.name,
                          jobs=args.jobs, progress=prog, force=args.force)
    finally:
        prog.end()
    if args.json:
        emit_json(bk)
    else:
        out(f"{bk.name}: {bk.image} ({spec.description}; {bk.package_version}"
            + (f", series {bk.series} sha256 {bk.series_sha256[:12]}" if bk.series_sha256 else "")
            + f"; built in {bk.build_seconds:.0f} s)")
    return EXIT_OK


def _lab_list(args: argparse.Namespace) -> int:
    from thpsim.lab.build import find_built
    from thpsim.lab.kernels import KERNELS

    rows = []
    for spec in KERNELS.values():
        bk = find_built(spec.name)
        rows.append({"name": spec.name, "kind": spec.kind, "version": spec.version, "arch": spec.arch,
                     "description": spec.description, "built": bk.image if bk else None})
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            out(f"{r['name']:<14} {r['kind']:<6} {r['arch']:<8} {'built' if r['built'] else 'not built':<9} "
                f"{r['description']}")
        out(f"{'host':<14} (this machine: commands run here as they are)")
    return EXIT_OK


def _lab_run(args: argparse.Namespace) -> int:
    from thpsim.lab.guest import run_in_guest

    cmd = list(args.cmd)
    if not cmd:
        raise ThpsimError("lab run needs a command after --, e.g. thpsim lab run lazy-v3-7.3 -- thpsim probe")
    res = run_in_guest(args.kernel, cmd, O.guest_config(args), stdout=sys.stdout.buffer,
                       stderr=sys.stderr.buffer)
    if args.json:
        sys.stderr.write(json.dumps(dataclasses.asdict(res)) + "\n")
    return res.returncode


def _lab_kselftest(args: argparse.Namespace) -> int:
    from thpsim.lab.build import find_built
    from thpsim.lab.guest import run_in_guest
    from thpsim.lab.kselftest import build_kselftest

    bk = find_built(args.kernel)
    if bk is None:
        raise ThpsimError(f"lab kernel {args.kernel} is not built here: run `thpsim lab build {args.kernel}` first")
    binary = build_kselftest(bk)
    res = run_in_guest(args.kernel, [str(binary)], O.guest_config(args), stdout=sys.stdout.buffer,
                       stderr=sys.stderr.buffer)
    return res.returncode


def _lab_race(args: argparse.Namespace) -> int:
    from thpsim.lab.race import run_race

    r = run_race(args.kernel, O.guest_config(args), rounds=args.rounds, max_delay_us=args.max_delay)

    def text() -> str:
        lines = [f"{r.kernel}: {r.rounds_done if r.rounds_done is not None else '?'} of {r.rounds} rounds, "
                 f"{r.hits} hit(s)" + (f" (first in round {r.first_hit_round})" if r.first_hit_round else "")
                 + (f"; THP fault first {r.faults_before}, after the split {r.faults_after}"
                    if r.faults_before is not None else "")]
        if r.oops:
            lines += ["the kernel died:", *(f"  {x}" for x in r.oops)]
        lines.append("RACE: a huge PMD straddled the new VMA boundary" if r.raced else
                     "no round raced")
        return "\n".join(lines)
    emit(args, r, text)
    return EXIT_DIFF if r.raced else EXIT_OK


def _setup_lab(p: argparse.ArgumentParser) -> None:
    lab = p.add_subparsers(dest="lab_command", required=True)
    lb = lab.add_parser("build", help="fetch, patch, configure and build a guest kernel (cached)")
    O.LAB_KERNEL.add(lb)
    lb.add_argument("--series", metavar="DIR|MBOX", help="patch series to apply (a folder of *.patch, an mbox "
                    "as `b4 am` writes it, or one diff); default: the named kernel's own")
    lb.add_argument("--name", help="cache the result under this name (default: KERNEL)")
    lb.add_argument("-j", "--jobs", type=int, help="make -jN (default: CPUs)")
    lb.add_argument("--force", action="store_true", help="rebuild even when a cached build matches")
    O.JSON.add(lb)
    ll = lab.add_parser("list", help="the named kernels and which are built")
    O.JSON.add(ll)
    lk = lab.add_parser("kselftest", help="compile the series' thp_pmd_split_test from KERNEL's tree and run it "
                        "inside KERNEL's guest (TAP 13)")
    O.LAB_KERNEL.with_(help="a built lab kernel with the series (lazy-v3-7.3)").add(lk)
    O.add_guest_opts(lk)
    lc = lab.add_parser("race", help="the v3 02/24 __split_vma race on a real kernel: a per-VMA-lock THP fault "
                        "against madvise's VMA split, 2 vCPUs (exit 1 when a round raced)")
    O.LAB_KERNEL_OR_HOST.add(lc)
    lc.add_argument("--rounds", type=int, default=300, help="rounds (default %(default)s)")
    lc.add_argument("--max-delay", type=int, default=40, metavar="US",
                    help="the split starts 0..US microseconds after the fault (default %(default)s)")
    O.add_guest_opts(lc)
    O.JSON.add(lc)
    lr = lab.add_parser("run", help="boot a guest kernel and run a thpsim command inside it",
                        description="boot KERNEL under QEMU (host / read-only over 9p, scratch in guest RAM) and "
                        "run CMD there, e.g. thpsim lab run lazy-v3-7.3 -- thpsim probe")
    O.LAB_KERNEL_OR_HOST.add(lr)
    O.add_guest_opts(lr)
    O.JSON.with_(help="print the run's summary as JSON on stderr's last line").add(lr)
    lr.add_argument("cmd", nargs="*", help="after --: thpsim COMMAND ... (or any program on the host's /)")


COMMANDS = (
    Command("lab", cmd_lab, "the kernel lab: build guest kernels and run thpsim commands inside QEMU guests",
            _setup_lab),
)
