"""Model commands: ``run``, ``compare``, ``selftest``, ``campaign``, ``review`` — traces and the series' tests
replayed on the model only (nothing here touches the live kernel, except ``selftest --live`` and
``--host-knobs``, which read it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import thpsim.cli.options as O
from thpsim.cli.common import (
    EXIT_DIFF,
    EXIT_OK,
    Command,
    emit,
    emit_json,
    format_steps,
    load_trace,
    out,
    report_expectations,
    write_bytes,
)
from thpsim.errors import ThpsimError

__all__ = ["COMMANDS", "cmd_run", "cmd_compare", "cmd_selftest", "cmd_campaign", "cmd_races", "cmd_review"]


def cmd_run(args: argparse.Namespace) -> int:
    from thpsim.model.engine import run_model
    from thpsim.observation import to_dict

    trace = load_trace(args.trace)
    run = run_model(trace, design=args.design, arch=args.arch, knobs=O.knobs(args), policy=O.policy(args),
                    check=args.check, shadow=not args.no_shadow, observe="status" if args.brief else "full")
    if args.json:
        emit_json({"trace": trace.header.name or args.trace, "design": args.design, "arch": args.arch,
                   "steps": [to_dict(s) for s in run.steps], "peak_pgtables_bytes": run.peak_pgtables_bytes,
                   "final_pgtables_bytes": run.final_pgtables_bytes, "violations": run.violations})
    else:
        out(format_steps(trace, run.steps, title=f"{trace.header.name or args.trace}: model, design "
                                                 f"{run.design}, arch {args.arch}"))
        out(f"peak page tables {run.peak_pgtables_bytes // 1024} kB, final {run.final_pgtables_bytes // 1024} kB"
            + (f"; {len(run.violations)} data-contract violation(s)" if run.violations else ""))
    return report_expectations(trace, run.steps, args.design)


def _setup_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace")
    O.add_model_opts(p)
    O.add_inject_opts(p)
    p.add_argument("--check", action="store_true", help="verify the model invariants after every step")
    p.add_argument("--no-shadow", action="store_true", help="skip the shadow-memory data-contract check")
    p.add_argument("--brief", action="store_true", help="status values only (no smaps / page map): much faster "
                   "on long traces")


def cmd_compare(args: argparse.Namespace) -> int:
    from thpsim.analysis.compare import compare_trace, format_comparison

    trace = load_trace(args.trace)
    c = compare_trace(trace, designs=args.designs or ("upstream", "lazy"), arch=args.arch, knobs=O.knobs(args),
                      policy=O.policy(args))
    emit(args, c, lambda: format_comparison(c))
    return EXIT_OK


def _setup_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace")
    O.DESIGNS_OPT.with_(help="comma-separated designs (default upstream,lazy)").add(p)
    O.add_model_opts(p, design=None)
    O.add_inject_opts(p)


def cmd_selftest(args: argparse.Namespace) -> int:
    if args.live:
        from thpsim.analysis.selftest_live import format_tap_live, run_selftests_live

        results = run_selftests_live()
        emit(args, results, lambda: format_tap_live(results))
        return EXIT_OK if all(r.ok for r in results.tests) else EXIT_DIFF
    from thpsim.analysis.selftest import format_tap, run_selftests

    res = run_selftests(design=args.design, inject=args.inject, arch=args.arch)
    emit(args, res, lambda: format_tap(res))
    return EXIT_DIFF if any(r.status == "fail" for r in res) else EXIT_OK


def _setup_selftest(p: argparse.ArgumentParser) -> None:
    O.add_model_opts(p, design=O.SERIES_DESIGN, knobs=False)
    p.add_argument("--inject", action="store_true", help="fail the split's table allocation")
    p.add_argument("--live", action="store_true", help="run them on the running kernel")


def cmd_campaign(args: argparse.Namespace) -> int:
    from thpsim.analysis.campaign import exhaustive, format_campaign

    trace = load_trace(args.trace)
    sites = tuple(args.sites.split(",")) if args.sites else None
    r = exhaustive(trace, design=args.design, arch=args.arch, sites=sites, knobs=O.knobs(args),
                   workers=args.workers, mode="checkpoint" if args.checkpoint else "replay")
    emit(args, r, lambda: format_campaign(r))
    return EXIT_DIFF if r.invariant_violations else EXIT_OK


def _setup_campaign(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace")
    O.add_model_opts(p, design=O.SERIES_DESIGN)
    p.add_argument("--sites", help="comma-separated site prefixes to fail (default: all)")
    O.WORKERS.add(p)
    p.add_argument("--checkpoint", action="store_true", help="restore a snapshot instead of replaying the prefix")


def _ints(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in value.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {value!r}")
    return out


def _shares(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in value.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated shares 0..1, got {value!r}") from None
    if not out or any(not 0.0 <= x <= 1.0 for x in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated shares 0..1, got {value!r}")
    return out


def _review_hugh(args: argparse.Namespace) -> int:
    from thpsim.analysis import hugh

    if min(args.ns) < 1:
        raise ThpsimError("--ns: every N must be at least 1 (the parent alone)")
    cells = hugh.hugh_sweep(args.designs or hugh.DEFAULT_DESIGNS, args.ns, args.reserves_list, args.headroom,
                            args.fragmentation, workers=args.workers)
    if args.plot:
        from thpsim.analysis.plots import render

        fmt = "svg" if str(args.plot).endswith(".svg") else "png"
        write_bytes(str(args.plot), render(hugh.sweep_figure(cells), fmt))
    emit(args, cells, lambda: hugh.format_sweep(cells))
    return EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    from thpsim.analysis.review import format_review, review_table

    if args.what == "hugh":
        return _review_hugh(args)

    kw: dict[str, Any] = {"n": args.n}
    if args.reserves is not None:
        kw["reserve_pages"] = args.reserves
    if args.tree is not None:
        if not (args.tree / "include" / "linux" / "huge_mm.h").is_file():
            raise ThpsimError(f"--tree {args.tree}: no include/linux/huge_mm.h there (give the top of a kernel tree "
                              "with the series applied)")
        kw["tree"] = args.tree
    rows = review_table(**kw)
    emit(args, rows, lambda: format_review(rows))
    return EXIT_OK


def _setup_review(p: argparse.ArgumentParser) -> None:
    from thpsim.analysis import hugh

    p.add_argument("what", nargs="?", choices=("table", "hugh"), default="table",
                   help="table: the review's open problems (default); hugh: the sweep of Hugh's reclaim case")
    p.add_argument("--n", type=int, default=1000, help="processes sharing the THP in Hugh's reclaim case")
    p.add_argument("--ns", type=_ints, default=hugh.DEFAULT_NS, metavar="N1,N2,...",
                   help="hugh: processes mapping the THP (default %(default)s)")
    p.add_argument("--reserves-list", type=_ints, default=hugh.DEFAULT_RESERVES, metavar="R1,R2,...",
                   help="hugh: PF_MEMALLOC reserve pages (default %(default)s)")
    p.add_argument("--headroom", type=_ints, default=hugh.DEFAULT_HEADROOM, metavar="F1,F2,...",
                   help="hugh: free pages when reclaim starts (default %(default)s)")
    p.add_argument("--fragmentation", type=_shares, default=hugh.DEFAULT_FRAGMENTATION, metavar="F1,F2,...",
                   help="hugh: share of swap clusters with a slot in use, 0..1 (default %(default)s)")
    O.DESIGNS_OPT.with_(help="hugh: designs (default upstream,lazy,lazy-reclaim-pool,lazy-pmd-swap)").add(p)
    p.add_argument("--plot", type=Path, metavar="FILE", help="hugh: write the heat maps (.png or .svg)")
    O.WORKERS.add(p)
    # not fault injection's --reserves (a size beyond the budget): a page count for review's reclaim case
    p.add_argument("--reserves", type=int, help="PF_MEMALLOC reserve pages (default: n/2)")
    p.add_argument("--tree", type=Path, help="a kernel tree with the series applied, for the must-check row "
                   "(default: the lab's lazy-v3-7.3 build, if built)")


def cmd_races(args: argparse.Namespace) -> int:
    from thpsim.analysis.races import SCENARIOS, explore, format_races, replay

    names = args.scenario or list(SCENARIOS)
    designs = args.designs or ("upstream", "lazy")
    if args.replay is not None:
        if len(names) != 1 or len(designs) != 1:
            raise ThpsimError("--replay runs one schedule: give exactly one --scenario and one design (--designs D)")
        steps, broken = replay(names[0], designs[0], tuple(x for x in args.replay.split(",") if x))
        emit(args, {"steps": steps, "broken": broken},
             lambda: "\n".join([*steps, *(f"BROKEN: {b}" for b in broken)] or ["(no steps)"]))
        return EXIT_DIFF if broken else EXIT_OK
    results = [explore(n, d) for n in names for d in designs]
    emit(args, results, lambda: format_races(results))
    return EXIT_OK


def _setup_races(p: argparse.ArgumentParser) -> None:
    from thpsim.analysis.races import SCENARIOS

    p.add_argument("--scenario", action="append", choices=tuple(SCENARIOS), metavar="NAME",
                   help="a race scenario (repeatable; default all): %(choices)s")
    O.DESIGNS_OPT.with_(help="designs to explore (default upstream,lazy)").add(p)
    p.add_argument("--replay", metavar="T1,T2,...", help="run one schedule (thread names in order) and print "
                   "its steps and the invariants it breaks")


COMMANDS = (
    Command("run", cmd_run, "replay a trace on the model and print the per-step observations", _setup_run),
    Command("compare", cmd_compare, "replay a trace under several designs and compare page-table memory",
            _setup_compare),
    Command("selftest", cmd_selftest, "the series' five kselftests (TAP 13) on the model or the live kernel",
            _setup_selftest),
    Command("campaign", cmd_campaign, "fail every allocation point of a trace in turn and report outcomes",
            _setup_campaign),
    Command("review", cmd_review, "the v3 review's open problems, measured for lazy and the variants", _setup_review),
    Command("races", cmd_races, "every interleaving of small two-thread scenarios at the split's lock boundaries",
            _setup_races),
)
