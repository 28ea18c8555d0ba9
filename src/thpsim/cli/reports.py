"""Report commands: ``report`` (an HTML report over all designs), ``estimate`` (what the series would free on
this host or on snapshots), ``snapshot`` (capture what ``estimate`` needs) and ``vmpte-check`` (a recorded
program's sampled VmPTE against the model's)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import thpsim.cli.options as O
from thpsim.cli.common import EXIT_DIFF, EXIT_OK, Command, emit, emit_json, out

__all__ = ["COMMANDS", "cmd_report", "cmd_estimate", "cmd_snapshot", "cmd_vmpte_check"]


def cmd_report(args: argparse.Namespace) -> int:
    from thpsim.analysis.report import build_report, to_json, write_html, write_images

    def progress(i: int, n: int, label: str) -> None:
        if args.json or not sys.stderr.isatty():
            return
        width = 30
        done = int(width * i / max(n, 1))
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {i}/{n} {label[:40]:<40}")
        if i == n:
            sys.stderr.write("\n")
        sys.stderr.flush()

    kw: dict[str, Any] = {"progress": progress, "arch": args.arch, "knobs": O.knobs(args)}
    if args.designs:
        kw["designs"] = args.designs
    if args.pressure:
        from thpsim.model.page_alloc import FailPolicy

        kw["pressure"] = FailPolicy(probability=args.pressure, seed=args.seed)
    if args.hugh:
        kw["hugh"] = True
    data = build_report(args.traces, **kw)
    write_html(data, args.output)
    images: list[str] = []
    if args.images:
        images = write_images(data, args.images, fmt=args.image_format)
    if args.json:
        out(to_json(data))
    else:
        out(f"wrote {args.output}" + (f" and {len(images)} images in {args.images}" if images else ""))
    return EXIT_OK


def _setup_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+")
    p.add_argument("-o", "--output", default="report.html")
    p.add_argument("--images", metavar="DIR", help="also write the plots as files into DIR")
    p.add_argument("--image-format", default="png", choices=("png", "svg"))
    O.DESIGNS_OPT.with_(help="comma-separated designs (default: all)").add(p)
    p.add_argument("--pressure", type=float, help="also replay lazy designs with this allocation-failure "
                   "probability")
    p.add_argument("--hugh", action="store_true", help="add the sweep of Hugh's reclaim case (heat maps; "
                   "about 45 s)")
    O.SEED.add(p)
    O.add_model_opts(p, design=None)


def cmd_estimate(args: argparse.Namespace) -> int:
    from thpsim.analysis import estimate as est
    from thpsim.analysis.snapshot import load_snapshot

    if args.snapshot and (len(args.snapshot) > 1 or args.scheduler):
        f = est.estimate_fleet(args.snapshot, scheduler=args.scheduler, workers=args.workers)
        emit(args, f, lambda: est.format_fleet(f))
        return EXIT_DIFF if f.failures else EXIT_OK
    e = est.estimate_snapshot(load_snapshot(args.snapshot[0])) if args.snapshot else est.estimate_live()
    emit(args, e, lambda: est.format_estimate(e, top=args.top))
    return EXIT_OK


def _setup_estimate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", nargs="+", metavar="DIR", help="snapshot directories or tarballs (a fleet)")
    p.add_argument("--scheduler", help="Dask scheduler address for fleet runs")
    O.WORKERS.add(p)
    p.add_argument("--top", type=int, default=20)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from thpsim.live.snapshot import take_snapshot

    info = take_snapshot(args.output, tar=args.tar, per_vma=args.per_vma)
    if args.json:
        emit_json(info)
    else:
        out(f"wrote {info.path}: {info.processes} processes"
            + (f", {len(info.vanished)} vanished during capture" if info.vanished else "")
            + (f", {len(info.unreadable)} unreadable" if info.unreadable else ""))
    return EXIT_OK


def _setup_snapshot(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--tar", action="store_true")
    p.add_argument("--per-vma", action="store_true")


def cmd_vmpte_check(args: argparse.Namespace) -> int:
    from thpsim.analysis.realcheck import format_agreement, vmpte_agreement

    res = []
    for path in args.traces:
        a = vmpte_agreement(path, args.samples if len(args.traces) == 1 else None)
        res.append(a)
        if not args.json:
            out(format_agreement(a, args.tolerance))
    if args.json:
        emit_json([{"trace": a.trace, "points": len(a.points), "max_abs_error_kb": a.max_abs_error_kb,
                    "mean_abs_error_kb": a.mean_abs_error_kb, "live_range_kb": a.live_range_kb,
                    "within_tolerance": a.within(args.tolerance)} for a in res])
    return EXIT_OK if all(a.max_abs_error_kb <= args.tolerance for a in res) else EXIT_DIFF


def _setup_vmpte_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+", help="traces recorded with thpsim record (next to TRACE.vmpte.json)")
    p.add_argument("--samples", help="the sample file, if not TRACE.vmpte.json")
    p.add_argument("--tolerance", type=int, default=4, help="kB (default 4: one table)")


COMMANDS = (
    Command("report", cmd_report, "replay traces under all designs and write a self-contained HTML report",
            _setup_report),
    Command("estimate", cmd_estimate, "what would the series save on this host (or on captured snapshots)?",
            _setup_estimate),
    Command("snapshot", cmd_snapshot, "capture what the estimator needs from this host", _setup_snapshot),
    Command("vmpte-check", cmd_vmpte_check, "compare a recorded program's sampled VmPTE with the model's",
            _setup_vmpte_check),
)
