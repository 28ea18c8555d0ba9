"""Live commands: ``live`` (traces on the running kernel or in a lab guest), ``diff`` (model vs kernel, also
with injected allocation failures) and ``probe`` (does this kernel deposit?). These use the live kernel's THP;
the comparison and its retry policy are :func:`thpsim.analysis.diff.diff_live`'s, this module only prints."""

from __future__ import annotations

import argparse
import dataclasses
import sys
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
)
from thpsim.errors import ThpsimError

__all__ = ["COMMANDS", "cmd_live", "cmd_diff", "cmd_probe"]


# ---- live ---------------------------------------------------------------------------------------------------------
def cmd_live(args: argparse.Namespace) -> int:
    from thpsim.lab.remote import observe
    from thpsim.observation import to_dict
    from thpsim.trace.geometry import map_trace

    if args.jsonl:          # the batch stream the lab's diff reads (one JSON object per line)
        return _live_jsonl(args)
    batch = observe(args.traces, kernel=args.kernel, guest=O.guest_config(args) if args.kernel else None,
                    stderr=sys.stderr.buffer)
    worst = EXIT_OK
    docs = []
    for path in args.traces:
        trace = map_trace(load_trace(path), batch.env.geometry)     # as the runner ran it (thpsim.trace.geometry)
        tl = batch.get(path)
        if tl.error and not tl.steps:
            raise ThpsimError(tl.error)
        if args.json:
            docs.append({"trace": trace.header.name or path, "kernel": batch.env.kernel_release,
                         "steps": [to_dict(s) for s in tl.steps], "error": tl.error})
        else:
            out(format_steps(trace, tl.steps, title=f"{trace.header.name or path}: live kernel "
                                                    f"{batch.env.kernel_release} ({batch.kernel})"))
            if tl.error:
                out(f"live run stopped: {tl.error}")
        worst = max(worst, report_expectations(trace, tl.steps, "upstream"), EXIT_DIFF if tl.error else EXIT_OK)
    if args.json:
        emit_json(docs[0] if len(docs) == 1 else docs)
    return worst


def _live_jsonl(args: argparse.Namespace) -> int:
    from thpsim.lab.remote import jsonl_lines

    if args.kernel not in (None, "host"):
        raise ThpsimError("--jsonl prints this kernel's stream; drop --kernel (thpsim diff --kernel reads it)")
    n = len(args.traces)
    for i, line in enumerate(jsonl_lines(args.traces)):
        out(line)
        sys.stdout.flush()
        if i:   # progress for whoever watches stderr (the host relays a guest's)
            sys.stderr.write(f"thpsim live: {i}/{n} {args.traces[i - 1]}\n")
            sys.stderr.flush()
    return EXIT_OK


def _setup_live(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+")
    p.add_argument("--jsonl", action="store_true", help="one JSON object per line: the kernel environment, then "
                   "one per trace (what thpsim diff --kernel reads from a guest)")
    O.KERNEL.add(p)
    O.add_guest_opts(p)


# ---- diff ---------------------------------------------------------------------------------------------------------
def cmd_diff(args: argparse.Namespace) -> int:
    guest = O.guest_config(args) if args.kernel else None
    traces = {path: load_trace(path) for path in args.traces}
    if args.inject:
        return _diff_inject(args, traces, guest)
    results: list[dict[str, Any]] = []
    worst = EXIT_OK
    env = None
    for rnd in range(args.runs):
        env, diffs = _diff_round(args, traces, guest, first=rnd == 0)
        for td in diffs:
            results.append(_diff_row(td, rnd))
            worst = max(worst, _diff_status(td, args.strict))
            if not args.json:
                _print_diff(td, rnd, args)
    assert env is not None      # --runs is at least 1
    _diff_summary(args, env, results)
    return worst


def _diff_round(args: argparse.Namespace, traces: dict[str, Any], guest: Any, *,
                first: bool) -> tuple[Any, list[Any]]:
    """One live run of every trace against the model; the kernel's notes are printed after the first."""
    from thpsim.analysis.diff import diff_live

    env, diffs = diff_live(traces, design=args.design, kernel=args.kernel, guest=guest,
                           compare_globals=not args.ignore_globals, stderr=sys.stderr.buffer)
    if first and not args.json:
        for u in env.unsupported:
            sys.stderr.write(f"thpsim: note: the model does not support this kernel setting: {u}\n")
        for n in env.notes:
            sys.stderr.write(f"thpsim: note: {n}\n")
    return env, diffs


def _diff_row(td: Any, rnd: int) -> dict[str, Any]:
    d = td.diff
    return {"trace": td.path, "run": rnd + 1, "identical": td.identical,
            "identical_but_host_noise": td.identical_but_host_noise,
            "host_noise": dict(td.host_noise),
            "compared_steps": d.compared_steps, "note": td.note,
            "mismatches": [dataclasses.asdict(m) for m in d.exact],
            "noisy": [dataclasses.asdict(m) for m in d.noisy],
            # what each engine measured, the same way from its observations (thpsim.engines.RunSummary)
            "summary": {"model": _summary(td.model_steps), "live": _summary(td.live_steps)}}


def _summary(steps: Any) -> dict[str, Any]:
    from thpsim.engines import RunSummary

    s = RunSummary.of(tuple(steps))
    return {"steps": s.steps, "peak_vm_pte_kb": s.peak_vm_pte_kb, "final_vm_pte_kb": s.final_vm_pte_kb,
            "counters": dict(s.counters), "failed_allocations": s.failed_allocations, "errors": s.errors}


def _diff_status(td: Any, strict: bool) -> int:
    """A difference fails the diff; one only in host-wide counters other processes moved fails with --strict."""
    return EXIT_DIFF if not td.identical and (strict or not td.identical_but_host_noise) else EXIT_OK


def _print_diff(td: Any, rnd: int, args: argparse.Namespace) -> None:
    d = td.diff
    state = ("identical" if td.identical else
             f"identical but for host-wide counters ({len(d.exact)} differences, flagged)"
             if td.identical_but_host_noise else f"DIFFERENT ({len(d.exact)} mismatches)")
    extra = f" [{td.note}]" if td.note else ""
    out(f"{td.path} (run {rnd + 1}): {state}, {d.compared_steps} steps compared, "
        f"{len(d.noisy)} noisy global differences{extra}")
    for m in d.exact[:args.max_show]:
        out("  " + m.describe())
    if args.verbose:
        for m in d.noisy[:args.max_show]:
            out("  " + m.describe())


def _diff_summary(args: argparse.Namespace, env: Any, results: list[dict[str, Any]]) -> None:
    n_same = sum(bool(r["identical"]) for r in results)
    n_noise = sum(bool(r["identical_but_host_noise"]) for r in results)
    where = f"lab guest {args.kernel}" if args.kernel else "this host"
    if args.json:
        emit_json({"kernel": env.kernel_release, "lab_kernel": args.kernel or "host", "design": args.design,
                   "identical_but_host_noise": n_noise, "arch": env.arch_profile, "page_size": env.page_size,
                   "pmd_size": env.pmd_size,
                   "unsupported": list(env.unsupported), "identical": n_same, "runs": len(results),
                   "results": results})
        return
    geo = "" if env.geometry.is_trace_native else f", traces mapped onto {env.geometry.describe()}"
    flagged = (f", {n_noise} identical but for host-wide counters other processes moved (--strict fails "
               "them)") if n_noise else ""
    out(f"{n_same}/{len(results)} runs identical{flagged} (model design {args.design}, arch "
        f"{env.arch_profile}{geo}; kernel {env.kernel_release} on {where})")


# ---- diff --inject ------------------------------------------------------------------------------------------------
def _diff_inject(args: argparse.Namespace, traces: dict[str, Any], guest: Any) -> int:
    """diff --inject POINT: one variant per op that allocates at POINT, each diffed model vs kernel."""
    variants = _inject_variants(args, traces)
    env, files, diffs = _diff_variants(args, variants, guest)
    rows = [_inject_row(v, td) for v, td in zip(files.values(), diffs, strict=True)]
    n_same = sum(r["status"] == "identical" for r in rows)
    n_cmp = sum(r["status"] != "not comparable" for r in rows)
    if args.json:
        emit_json({"kernel": env.kernel_release, "lab_kernel": args.kernel or "host", "design": args.design,
                   "arch": env.arch_profile, "page_size": env.page_size, "pmd_size": env.pmd_size,
                   "inject": args.inject, "identical": n_same, "comparable": n_cmp, "variants": len(rows),
                   "results": rows})
    else:
        _print_inject(args, env, rows, n_same, n_cmp)
    return EXIT_OK if n_same == n_cmp else EXIT_DIFF


def _inject_variants(args: argparse.Namespace, traces: dict[str, Any]) -> list[Any]:
    """Every trace's variants for the injection point (argparse has checked that it is one)."""
    from thpsim.analysis.inject import injection_variants

    variants = [v for p, t in traces.items()
                for v in injection_variants(p, t, args.inject, design=args.design, times=args.inject_times)]
    if not variants:
        raise ThpsimError(f"no op of these traces allocates at {args.inject} under design {args.design}: "
                          "nothing to inject")
    return variants


def _diff_variants(args: argparse.Namespace, variants: list[Any],
                   guest: Any) -> tuple[Any, dict[str, Any], list[Any]]:
    """Write the variants as trace files in a scratch folder and diff them all in one live batch."""
    import shutil
    import tempfile
    from pathlib import Path

    from thpsim.analysis.diff import diff_live
    from thpsim.analysis.inject import write_variants

    folder = Path(tempfile.mkdtemp(prefix="thpsim-inject-"))
    try:
        files = write_variants(variants, folder)
        env, diffs = diff_live({f: load_trace(f) for f in files}, design=args.design, kernel=args.kernel,
                               guest=guest, compare_globals=not args.ignore_globals, stderr=sys.stderr.buffer)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return env, files, diffs


def _inject_row(v: Any, td: Any) -> dict[str, Any]:
    """One variant's result; the injected op must itself have been compared (a model-only op, or one after
    it, is not comparable)."""
    step = v.step
    m = next((s for s in (td.model_steps or ()) if s.step == step), None)
    k = next((s for s in (td.live_steps or ()) if s.step == step), None)
    stop = td.diff.stopped_at
    comparable = (stop is None or stop > step) and len(td.live_steps) > step
    status = ("identical" if td.identical else "different") if comparable else "not comparable"
    return {"trace": v.source, "step": step, "line": v.line, "op": v.op, "sites": list(v.sites),
            "status": status, "identical": td.identical and comparable, "note": td.note,
            "model": _injected_side(m), "kernel": _injected_side(k),
            "mismatches": [dataclasses.asdict(x) for x in td.diff.exact]}


def _injected_side(s: Any) -> dict[str, Any]:
    return {"result": s.result if s else None, "injected": list(s.injected) if s else []}


def _print_inject(args: argparse.Namespace, env: Any, rows: list[dict[str, Any]], n_same: int, n_cmp: int) -> None:
    out(f"{'trace':<44} {'step':>4}  {'op':<36} {'model':>8} {'kernel':>8}  failed allocation (model | kernel)")
    for r in rows:
        mi, ki = ",".join(r["model"]["injected"]) or "-", ",".join(r["kernel"]["injected"]) or "-"
        state = {"identical": "", "different": f"  DIFFERENT: {len(r['mismatches'])} mismatches",
                 "not comparable": f"  not comparable: {r['note']}"}[r["status"]]
        out(f"{r['trace']:<44.44} {r['step']:>4}  {r['op']:<36.36} {r['model']['result']!s:>8} "
            f"{r['kernel']['result']!s:>8}  {mi} | {ki}{state}")
        for x in _fmt_mismatches(r["mismatches"], args.max_show):
            out("    " + x)
    out(f"{n_same}/{n_cmp} comparable injected variants identical ({len(rows) - n_cmp} not comparable: "
        f"the injected op is model-only or follows one; point {args.inject}, model design {args.design}, "
        f"kernel {env.kernel_release}{' in lab guest ' + args.kernel if args.kernel else ''})")


def _fmt_mismatches(mismatches: list[dict[str, Any]], n: int) -> list[str]:
    return [f"step {m['step']} {m['proc']} {m['field']}: model={m['left']!r} kernel={m['right']!r}"
            for m in mismatches[:n]]


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n})")
    return n


def _setup_diff(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="+")
    O.DESIGN.add(p)
    O.KERNEL.with_(help="observe inside this lab guest (%(choices)s) instead of this kernel").add(p)
    O.INJECT_POINT.add(p)
    p.add_argument("--inject-times", type=int, default=1, help="allocations to fail in the op (default 1)")
    O.add_guest_opts(p)
    p.add_argument("--runs", type=_positive, default=1, help="live runs per trace (default 1)")
    p.add_argument("--ignore-globals", action="store_true", help="compare per-process values only (busy hosts)")
    p.add_argument("--strict", action="store_true",
                   help="a host-wide counter that other processes moved (flagged, exit 0 by default) fails the diff")
    p.add_argument("--max-show", type=int, default=20)
    p.add_argument("-v", "--verbose", action="store_true", help="also list noisy global differences")


# ---- probe --------------------------------------------------------------------------------------------------------
def cmd_probe(args: argparse.Namespace) -> int:
    from thpsim.live.probe import format_probe, probe

    p = probe()
    emit(args, p, lambda: format_probe(p))
    return EXIT_OK


COMMANDS = (
    Command("live", cmd_live, "run traces on the running kernel (or in a lab guest) and print the observations",
            _setup_live),
    Command("diff", cmd_diff, "run traces on the model and the live kernel; exit 0 only when identical", _setup_diff),
    Command("probe", cmd_probe, "does the running kernel deposit a PTE table per THP? what would the series save?"),
)
