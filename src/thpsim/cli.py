"""The thpsim command line. The only module that prints.

Every command has --json. Errors the user can fix (a malformed trace, an unreadable /proc file, a bad option)
are one line on stderr and exit status 2; a run that finds a difference exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from thpsim import __version__
from thpsim.errors import ThpsimError

EXIT_OK, EXIT_DIFF, EXIT_USAGE = 0, 1, 2


# ---- helpers ------------------------------------------------------------------------------------------------------
def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _json(obj: Any) -> None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    _out(json.dumps(obj, indent=1, sort_keys=False, default=_default))


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    return str(o)


def _knobs(args: argparse.Namespace) -> Any:
    from thpsim.model.knobs import Knobs

    k = Knobs()
    if getattr(args, "host_knobs", False):
        from thpsim.live.env import detect

        k = detect().knobs()
    over: dict[str, Any] = {}
    for kv in getattr(args, "knob", None) or []:
        if "=" not in kv:
            raise ThpsimError(f"--knob takes NAME=VALUE (got {kv!r}), e.g. --knob thp_enabled=always")
        name, val = kv.split("=", 1)
        over[name] = _parse_value(val)
    return k.with_overrides(over) if over else k


def _parse_value(v: str) -> Any:
    if v.lower() in ("true", "yes", "on", "1"):
        return True
    if v.lower() in ("false", "no", "off", "0"):
        return False
    try:
        return int(v)
    except ValueError:
        return v


def _policy(args: argparse.Namespace) -> Any:
    from thpsim.model.arch import get_arch
    from thpsim.model.page_alloc import FailPolicy
    from thpsim.trace.format import parse_size

    # the allocator counts the arch's pages: "64M" is 1024 pages on arm64-64k, 16384 on x86-64
    page = get_arch(getattr(args, "arch", None) or "x86_64").page_size
    budget = None
    if getattr(args, "budget", None):
        budget = parse_size(args.budget) // page
    reserves = parse_size(args.reserves) // page if getattr(args, "reserves", None) else 0
    return FailPolicy(fail_nth=getattr(args, "fail_nth", None), fail_site=getattr(args, "fail_site", None),
                      probability=getattr(args, "fail_prob", 0.0) or 0.0,
                      interval=getattr(args, "fail_interval", 1) or 1, times=getattr(args, "fail_times", -1),
                      persistent_site=getattr(args, "fail_persistent", None), budget_pages=budget,
                      reserve_pages=reserves, seed=getattr(args, "seed", 0) or 0)


def _add_model_opts(p: argparse.ArgumentParser, *, inject: bool = True) -> None:
    p.add_argument("--design", default="upstream", help="upstream | lazy | lazy-zap-zero | lazy-zap-enomem | "
                   "lazy-mprotect-upfront | lazy-reclaim-pool (default upstream)")
    p.add_argument("--arch", default="x86_64", help="x86_64 | arm64-4k | arm64-16k | arm64-64k | ppc64-hash | "
                   "ppc64-radix | s390x | riscv64")
    p.add_argument("--knob", action="append", metavar="NAME=VALUE",
                   help="kernel knob override, e.g. thp_enabled=always, use_zero_page=false, swap=true")
    p.add_argument("--host-knobs", action="store_true", help="configure the model like the running kernel")
    if inject:
        g = p.add_argument_group("fault injection")
        g.add_argument("--fail-nth", type=int, help="fail the N-th counted allocation (1-based)")
        g.add_argument("--fail-site", help="count/fail only this allocation site (prefix), e.g. pte_alloc_one@split")
        g.add_argument("--fail-prob", type=float, default=0.0, help="failure probability 0..1 (seeded)")
        g.add_argument("--fail-interval", type=int, default=1)
        g.add_argument("--fail-times", type=int, default=-1)
        g.add_argument("--fail-persistent", metavar="SITE", help="every allocation at SITE fails")
        g.add_argument("--budget", help="page budget (memcg-like limit), e.g. 64M")
        g.add_argument("--reserves", help="PF_MEMALLOC reserves beyond the budget, e.g. 1M")
        g.add_argument("--seed", type=int, default=0)


def _load(path: str) -> Any:
    from thpsim.trace import format as tf

    return tf.load(path)


# ---- step table ---------------------------------------------------------------------------------------------------
def format_steps(trace: Any, steps: Sequence[Any], *, title: str = "") -> str:
    from thpsim.trace.format import format_size

    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'step':>4} {'line':>4}  {'operation':<44} {'result':>9}  per process (kB)  | thp_* (since start)")
    prev: dict[str, int] = {}
    for op, s in zip(trace.ops, steps, strict=False):
        res = "" if s.result is None else str(s.result if not isinstance(s.result, int) or s.op not in
                                               ("mmap", "mremap") else format_size(s.result))
        procs = "  ".join(f"{p.proc}: pte {p.vm_pte_kb} rss {p.rss_anon_kb}"
                          + (f" ahp {sum(v.anon_huge_kb for v in p.vmas)}" if p.vmas else "")
                          + (f" lck {p.vm_lck_kb}" if p.vm_lck_kb else "")
                          + (f" swp {p.vm_swap_kb}" if p.vm_swap_kb else "") for p in s.procs)
        cur = dict(s.vmstat)
        changed = {k: v for k, v in cur.items() if prev.get(k, 0) != v}
        prev = cur
        ev = " ".join(f"{k.removeprefix('thp_')}={v}" for k, v in sorted(changed.items()))
        lines.append(f"{s.step:>4} {s.line:>4}  {op.describe():<44.44} {res:>9}  {procs}" + (f"  | {ev}" if ev else ""))
        for n in s.notes:
            lines.append(f"{'':>11}note: {n}")
        if s.injected:
            lines.append(f"{'':>11}injected: {len(s.injected)} allocation(s) failed, called from "
                         f"{', '.join(s.injected)}")
        for v in s.violations:
            lines.append(f"{'':>11}VIOLATION: {v}")
    return "\n".join(lines)


# ---- commands -----------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from thpsim.model.engine import run_model
    from thpsim.observation import to_dict

    trace = _load(args.trace)
    run = run_model(trace, design=args.design, arch=args.arch, knobs=_knobs(args), policy=_policy(args),
                    check=args.check, shadow=not args.no_shadow, observe="status" if args.brief else "full")
    if args.json:
        _json({"trace": trace.header.name or args.trace, "design": args.design, "arch": args.arch,
               "steps": [to_dict(s) for s in run.steps], "peak_pgtables_bytes": run.peak_pgtables_bytes,
               "final_pgtables_bytes": run.final_pgtables_bytes, "violations": run.violations})
    else:
        _out(format_steps(trace, run.steps, title=f"{trace.header.name or args.trace}: model, design "
                                                   f"{run.design}, arch {args.arch}"))
        _out(f"peak page tables {run.peak_pgtables_bytes // 1024} kB, final {run.final_pgtables_bytes // 1024} kB"
             + (f"; {len(run.violations)} data-contract violation(s)" if run.violations else ""))
    return _report_expectations(trace, run.steps, args.design, args.json)


def _report_expectations(trace: Any, steps: Sequence[Any], design: str, as_json: bool) -> int:
    """The trace's ``expect`` fields that the run did not meet: one line each on stderr; exit 1 if any."""
    from thpsim.analysis.expect import check_expectations

    failed = check_expectations(trace, steps, design)
    for line in failed:
        sys.stderr.write(f"thpsim: expectation not met: {line}\n")
    return EXIT_DIFF if failed else EXIT_OK


def cmd_live(args: argparse.Namespace) -> int:
    from thpsim.lab.remote import jsonl_lines, observe
    from thpsim.observation import to_dict
    from thpsim.trace.geometry import map_trace

    if args.jsonl:          # the batch stream the lab's diff reads (one JSON object per line)
        if args.kernel not in (None, "host"):
            raise ThpsimError("--jsonl prints this kernel's stream; drop --kernel (thpsim diff --kernel reads it)")
        n = len(args.traces)
        for i, line in enumerate(jsonl_lines(args.traces)):
            _out(line)
            sys.stdout.flush()
            if i:   # progress for whoever watches stderr (the host relays a guest's)
                sys.stderr.write(f"thpsim live: {i}/{n} {args.traces[i - 1]}\n")
                sys.stderr.flush()
        return EXIT_OK
    batch = observe(args.traces, kernel=args.kernel, guest=_guest_config(args) if args.kernel else None,
                    stderr=sys.stderr.buffer)
    worst = EXIT_OK
    docs = []
    for path in args.traces:
        trace = map_trace(_load(path), batch.env.geometry)     # as the runner ran it (thpsim.trace.geometry)
        tl = batch.get(path)
        if tl.error and not tl.steps:
            raise ThpsimError(tl.error)
        if args.json:
            docs.append({"trace": trace.header.name or path, "kernel": batch.env.kernel_release,
                         "steps": [to_dict(s) for s in tl.steps], "error": tl.error})
        else:
            _out(format_steps(trace, tl.steps, title=f"{trace.header.name or path}: live kernel "
                                                      f"{batch.env.kernel_release} ({batch.kernel})"))
            if tl.error:
                _out(f"live run stopped: {tl.error}")
        worst = max(worst, _report_expectations(trace, tl.steps, "upstream", args.json),
                    EXIT_DIFF if tl.error else EXIT_OK)
    if args.json:
        _json(docs[0] if len(docs) == 1 else docs)
    return worst


def cmd_diff(args: argparse.Namespace) -> int:
    from thpsim.analysis.diff import diff_live
    from thpsim.model.design import get_design

    get_design(args.design)
    guest = _guest_config(args) if args.kernel else None
    traces = {path: _load(path) for path in args.traces}
    if args.inject:
        return _diff_inject(args, traces, guest)
    results = []
    worst = EXIT_OK
    env = None
    for rnd in range(args.runs):
        env, diffs = diff_live(traces, design=args.design, kernel=args.kernel, guest=guest,
                               compare_globals=not args.ignore_globals, stderr=sys.stderr.buffer)
        if rnd == 0 and not args.json:
            for u in env.unsupported:
                sys.stderr.write(f"thpsim: note: the model does not support this kernel setting: {u}\n")
            for n in env.notes:
                sys.stderr.write(f"thpsim: note: {n}\n")
        for td in diffs:
            d = td.diff
            results.append({"trace": td.path, "run": rnd + 1, "identical": td.identical,
                            "identical_but_host_noise": td.identical_but_host_noise,
                            "host_noise": dict(td.host_noise),
                            "compared_steps": d.compared_steps, "note": td.note,
                            "mismatches": [dataclasses.asdict(m) for m in d.exact],
                            "noisy": [dataclasses.asdict(m) for m in d.noisy]})
            if not td.identical and (args.strict or not td.identical_but_host_noise):
                worst = EXIT_DIFF
            if not args.json:
                state = ("identical" if td.identical else
                         f"identical but for host-wide counters ({len(d.exact)} differences, flagged)"
                         if td.identical_but_host_noise else f"DIFFERENT ({len(d.exact)} mismatches)")
                extra = f" [{td.note}]" if td.note else ""
                _out(f"{td.path} (run {rnd + 1}): {state}, {d.compared_steps} steps compared, "
                     f"{len(d.noisy)} noisy global differences{extra}")
                for m in d.exact[:args.max_show]:
                    _out("  " + m.describe())
                if args.verbose:
                    for m in d.noisy[:args.max_show]:
                        _out("  " + m.describe())
    assert env is not None
    n_same = sum(bool(r["identical"]) for r in results)
    n_noise = sum(bool(r["identical_but_host_noise"]) for r in results)
    where = f"lab guest {args.kernel}" if args.kernel else "this host"
    if args.json:
        _json({"kernel": env.kernel_release, "lab_kernel": args.kernel or "host", "design": args.design,
               "identical_but_host_noise": n_noise, "arch": env.arch_profile, "page_size": env.page_size,
               "pmd_size": env.pmd_size,
               "unsupported": list(env.unsupported), "identical": n_same, "runs": len(results),
               "results": results})
    else:
        geo = "" if env.geometry.is_trace_native else f", traces mapped onto {env.geometry.describe()}"
        flagged = (f", {n_noise} identical but for host-wide counters other processes moved (--strict fails "
                   "them)") if n_noise else ""
        _out(f"{n_same}/{len(results)} runs identical{flagged} (model design {args.design}, arch "
             f"{env.arch_profile}{geo}; kernel {env.kernel_release} on {where})")
    return worst


def _diff_inject(args: argparse.Namespace, traces: dict[str, Any], guest: Any) -> int:
    """diff --inject POINT: one variant per op that allocates at POINT, each diffed model vs kernel."""
    import shutil
    import tempfile
    from pathlib import Path

    from thpsim.analysis.diff import diff_live
    from thpsim.analysis.inject import injection_variants, write_variants
    from thpsim.model.page_alloc import INJECT_POINTS

    if args.inject not in INJECT_POINTS:
        raise ThpsimError(f"unknown injection point {args.inject!r}; points: {', '.join(INJECT_POINTS)}")
    variants = [v for p, t in traces.items()
                for v in injection_variants(p, t, args.inject, design=args.design, times=args.inject_times)]
    if not variants:
        raise ThpsimError(f"no op of these traces allocates at {args.inject} under design {args.design}: "
                          "nothing to inject")
    folder = Path(tempfile.mkdtemp(prefix="thpsim-inject-"))
    try:
        files = write_variants(variants, folder)
        env, diffs = diff_live({f: _load(f) for f in files}, design=args.design, kernel=args.kernel, guest=guest,
                               compare_globals=not args.ignore_globals, stderr=sys.stderr.buffer)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for (_f, v), td in zip(files.items(), diffs, strict=True):
        step = v.step
        m = next((s for s in (td.model_steps or ()) if s.step == step), None)
        k = next((s for s in (td.live_steps or ()) if s.step == step), None)
        # the injected op must itself have been compared: a model-only op (or one after it) is not comparable
        stop = td.diff.stopped_at
        comparable = (stop is None or stop > step) and len(td.live_steps) > step
        status = ("identical" if td.identical else "different") if comparable else "not comparable"
        rows.append({"trace": v.source, "step": step, "line": v.line, "op": v.op, "sites": list(v.sites),
                     "status": status, "identical": td.identical and comparable, "note": td.note,
                     "model": {"result": m.result if m else None, "injected": list(m.injected) if m else []},
                     "kernel": {"result": k.result if k else None, "injected": list(k.injected) if k else []},
                     "mismatches": [dataclasses.asdict(x) for x in td.diff.exact]})
    n_same = sum(r["status"] == "identical" for r in rows)
    n_cmp = sum(r["status"] != "not comparable" for r in rows)
    if args.json:
        _json({"kernel": env.kernel_release, "lab_kernel": args.kernel or "host", "design": args.design,
               "arch": env.arch_profile, "page_size": env.page_size, "pmd_size": env.pmd_size,
               "inject": args.inject, "identical": n_same, "comparable": n_cmp, "variants": len(rows),
               "results": rows})
    else:
        _out(f"{'trace':<44} {'step':>4}  {'op':<36} {'model':>8} {'kernel':>8}  failed allocation (model | kernel)")
        for r in rows:
            mi, ki = ",".join(r["model"]["injected"]) or "-", ",".join(r["kernel"]["injected"]) or "-"
            state = {"identical": "", "different": f"  DIFFERENT: {len(r['mismatches'])} mismatches",
                     "not comparable": f"  not comparable: {r['note']}"}[r["status"]]
            _out(f"{r['trace']:<44.44} {r['step']:>4}  {r['op']:<36.36} {r['model']['result']!s:>8} "
                 f"{r['kernel']['result']!s:>8}  {mi} | {ki}{state}")
            for x in _fmt_mismatches(r["mismatches"], args.max_show):
                _out("    " + x)
        _out(f"{n_same}/{n_cmp} comparable injected variants identical ({len(rows) - n_cmp} not comparable: "
             f"the injected op is model-only or follows one; point {args.inject}, model design {args.design}, "
             f"kernel {env.kernel_release}{' in lab guest ' + args.kernel if args.kernel else ''})")
    return EXIT_OK if n_same == n_cmp else EXIT_DIFF


def _fmt_mismatches(mismatches: list[dict[str, Any]], n: int) -> list[str]:
    return [f"step {m['step']} {m['proc']} {m['field']}: model={m['left']!r} kernel={m['right']!r}"
            for m in mismatches[:n]]


def cmd_probe(args: argparse.Namespace) -> int:
    from thpsim.live.probe import format_probe, probe

    p = probe()
    if args.json:
        _json(p)
    else:
        _out(format_probe(p))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from thpsim.analysis.demo import demo_text, run_demo

    outdir = args.output or "."
    res = run_demo(outdir, live=not args.no_live)
    if args.json:
        _json(res)
    else:
        _out(demo_text(res))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from thpsim.analysis.compare import compare_trace, format_comparison

    trace = _load(args.trace)
    designs = tuple(args.designs.split(",")) if args.designs else ("upstream", "lazy")
    c = compare_trace(trace, designs=designs, arch=args.arch, knobs=_knobs(args), policy=_policy(args))
    if args.json:
        _json(c)
    else:
        _out(format_comparison(c))
    return EXIT_OK


def cmd_selftest(args: argparse.Namespace) -> int:
    if args.live:
        from thpsim.analysis.selftest_live import format_tap_live, run_selftests_live

        results = run_selftests_live()
        if args.json:
            _json(results)
        else:
            _out(format_tap_live(results))
        return EXIT_OK if all(r.ok for r in results.tests) else EXIT_DIFF
    from thpsim.analysis.selftest import format_tap, run_selftests

    res = run_selftests(design=args.design, inject=args.inject, arch=args.arch)
    if args.json:
        _json(res)
    else:
        _out(format_tap(res))
    return EXIT_DIFF if any(r.status == "fail" for r in res) else EXIT_OK


def cmd_campaign(args: argparse.Namespace) -> int:
    from thpsim.analysis.campaign import exhaustive, format_campaign

    trace = _load(args.trace)
    sites = tuple(args.sites.split(",")) if args.sites else None
    r = exhaustive(trace, design=args.design, arch=args.arch, sites=sites, knobs=_knobs(args),
                   workers=args.workers, mode="checkpoint" if args.checkpoint else "replay")
    if args.json:
        _json(r)
    else:
        _out(format_campaign(r))
    return EXIT_DIFF if r.invariant_violations else EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    from thpsim.analysis.review import format_review, review_table

    kw: dict[str, Any] = {"n": args.n}
    if args.reserves is not None:
        kw["reserve_pages"] = args.reserves
    rows = review_table(**kw)
    if args.json:
        _json(rows)
    else:
        _out(format_review(rows))
    return EXIT_OK


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

    designs = tuple(args.designs.split(",")) if args.designs else None
    kw: dict[str, Any] = {"progress": progress, "arch": args.arch, "knobs": _knobs(args)}
    if designs:
        kw["designs"] = designs
    if args.pressure:
        from thpsim.model.page_alloc import FailPolicy

        kw["pressure"] = FailPolicy(probability=args.pressure, seed=args.seed)
    data = build_report(args.traces, **kw)
    write_html(data, args.output)
    images: list[str] = []
    if args.images:
        images = write_images(data, args.images, fmt=args.image_format)
    if args.json:
        _out(to_json(data))
    else:
        _out(f"wrote {args.output}" + (f" and {len(images)} images in {args.images}" if images else ""))
    return EXIT_OK


def cmd_estimate(args: argparse.Namespace) -> int:
    from thpsim.analysis import estimate as est
    from thpsim.analysis.snapshot import load_snapshot

    if args.snapshot and (len(args.snapshot) > 1 or args.scheduler):
        f = est.estimate_fleet(args.snapshot, scheduler=args.scheduler, workers=args.workers)
        if args.json:
            _json(f)
        else:
            _out(est.format_fleet(f))
        return EXIT_DIFF if f.failures else EXIT_OK
    e = est.estimate_snapshot(load_snapshot(args.snapshot[0])) if args.snapshot else est.estimate_live()
    if args.json:
        _json(e)
    else:
        _out(est.format_estimate(e, top=args.top))
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    from thpsim.live.snapshot import take_snapshot

    info = take_snapshot(args.output, tar=args.tar, per_vma=args.per_vma)
    if args.json:
        _json(info)
    else:
        _out(f"wrote {info.path}: {info.processes} processes"
             + (f", {len(info.vanished)} vanished during capture" if info.vanished else "")
             + (f", {len(info.unreadable)} unreadable" if info.unreadable else ""))
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from thpsim.trace import format as tf
    from thpsim.trace.generators import KINDS, generate

    if args.kind == "list":
        if args.json:
            _json(KINDS)
        else:
            _out("\n".join(f"{k:<18} {v}" for k, v in KINDS.items()))
        return EXIT_OK
    size = tf.parse_size(args.size) if args.size else None
    trace = generate(args.kind, seed=args.seed, size=size)
    text = tf.dumps(trace)
    _write(args.output, text)
    if args.json:
        _json({"kind": args.kind, "seed": args.seed, "ops": len(trace.ops), "output": args.output})
    elif args.output != "-":
        _out(f"wrote {args.output}: {len(trace.ops)} ops")
    return EXIT_OK


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ThpsimError(f"cannot write {path}: {e.strerror}") from None


def cmd_import_strace(args: argparse.Namespace) -> int:
    from thpsim.trace.strace import import_strace_file

    kw: dict[str, Any] = {"touch": args.touch, "strict": args.strict}
    if args.faults:
        from thpsim.trace.strace import parse_perf_faults

        try:
            with open(args.faults, encoding="utf-8", errors="replace") as f:
                kw["faults"] = parse_perf_faults(f.read())
        except OSError as e:
            raise ThpsimError(f"cannot read {args.faults}: {e.strerror}") from None
    res = import_strace_file(args.file, **kw)
    _write(args.output, res.text)
    if args.json:
        _json({"output": args.output, "stats": res.stats, "warnings": [str(w) for w in res.warnings]})
    else:
        _out(res.summary())
        for w in res.warnings[: args.max_warnings]:
            sys.stderr.write(f"{w}\n")
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    from thpsim.trace.record import record

    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        raise ThpsimError("give the program to record after --, e.g. thpsim record -o t.jsonl -- python3 -c 'pass'")
    r = record(cmd, args.output, touch=args.touch, sample_vmpte=not args.no_vmpte)
    if args.json:
        _json({"trace": r.trace_path, "returncode": r.returncode, "vmpte": r.vmpte_path,
               "samples": r.samples})
    else:
        _out(f"wrote {r.trace_path}" + (f" and {r.vmpte_path}" if r.vmpte_path else "")
             + f"; the program exited with {r.returncode}")
        _out(r.result.summary())
    return r.returncode if isinstance(r.returncode, int) and r.returncode > 0 else EXIT_OK


def cmd_vmpte_check(args: argparse.Namespace) -> int:
    from thpsim.analysis.realcheck import format_agreement, vmpte_agreement

    out = []
    for path in args.traces:
        a = vmpte_agreement(path, args.samples if len(args.traces) == 1 else None)
        out.append(a)
        if not args.json:
            _out(format_agreement(a, args.tolerance))
    if args.json:
        _json([{"trace": a.trace, "points": len(a.points), "max_abs_error_kb": a.max_abs_error_kb,
                "mean_abs_error_kb": a.mean_abs_error_kb, "live_range_kb": a.live_range_kb,
                "within_tolerance": a.within(args.tolerance)} for a in out])
    return EXIT_OK if all(a.max_abs_error_kb <= args.tolerance for a in out) else EXIT_DIFF


def cmd_validate(args: argparse.Namespace) -> int:
    trace = _load(args.trace)
    if args.json:
        _json({"trace": args.trace, "name": trace.header.name, "ops": len(trace.ops), "procs": trace.procs()})
    else:
        _out(f"{args.trace}: valid trace v1, {len(trace.ops)} ops, processes {', '.join(trace.procs())}")
    return EXIT_OK


def cmd_lab(args: argparse.Namespace) -> int:
    return {"build": _lab_build, "list": _lab_list, "run": _lab_run,
            "kselftest": _lab_kselftest}[args.lab_command](args)


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
        _json(bk)
    else:
        _out(f"{bk.name}: {bk.image} ({spec.description}; {bk.package_version}"
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
        _json(rows)
    else:
        for r in rows:
            _out(f"{r['name']:<14} {r['kind']:<6} {r['arch']:<8} {'built' if r['built'] else 'not built':<9} "
                 f"{r['description']}")
        _out(f"{'host':<14} (this machine: commands run here as they are)")
    return EXIT_OK


def _lab_run(args: argparse.Namespace) -> int:
    from thpsim.lab.guest import run_in_guest

    cmd = list(args.cmd)
    if not cmd:
        raise ThpsimError("lab run needs a command after --, e.g. thpsim lab run lazy-v3-7.3 -- thpsim probe")
    res = run_in_guest(args.kernel, cmd, _guest_config(args), stdout=sys.stdout.buffer,
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
    res = run_in_guest(args.kernel, [str(binary)], _guest_config(args), stdout=sys.stdout.buffer,
                       stderr=sys.stderr.buffer)
    return res.returncode


def _guest_config(args: argparse.Namespace) -> Any:
    from thpsim.lab.guest import GuestConfig
    from thpsim.trace.format import parse_size

    sysfs = []
    for kv in args.sysfs:
        if "=" not in kv:
            raise ThpsimError(f"--sysfs takes PATH=VALUE (got {kv!r}), e.g. "
                              "--sysfs kernel/mm/transparent_hugepage/use_zero_page=0")
        path, val = kv.split("=", 1)
        sysfs.append((path, val))
    return GuestConfig(cpus=args.cpus, memory_mb=parse_size(args.memory) // (1 << 20),
                       swap_mb=parse_size(args.swap) // (1 << 20) if args.swap else 0,
                       thp=None if args.thp == "kernel" else args.thp,
                       sysfs=tuple(sysfs), accel=args.accel, timeout=args.timeout)


# ---- parser -------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="thpsim", description="Executable model of Linux anonymous-THP page-table "
                                 "management: upstream deposit vs lazy PTE allocation at PMD split.")
    ap.add_argument("--version", action="version", version=f"thpsim {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(fn=fn)
        return p

    p = add("run", cmd_run, "replay a trace on the model and print the per-step observations")
    p.add_argument("trace")
    _add_model_opts(p)
    p.add_argument("--check", action="store_true", help="verify the model invariants after every step")
    p.add_argument("--no-shadow", action="store_true", help="skip the shadow-memory data-contract check")
    p.add_argument("--brief", action="store_true", help="status values only (no smaps / page map): much faster "
                   "on long traces")

    p = add("demo", cmd_demo, "run the bundled realistic workload and show what the deposit costs")
    p.add_argument("-o", "--output", help="directory for demo.png (default: current directory)")
    p.add_argument("--no-live", action="store_true", help="do not validate against the live kernel")

    p = add("live", cmd_live, "run traces on the running kernel (or in a lab guest) and print the observations")
    p.add_argument("traces", nargs="+")
    p.add_argument("--jsonl", action="store_true", help="one JSON object per line: the kernel environment, then "
                   "one per trace (what thpsim diff --kernel reads from a guest)")
    p.add_argument("--kernel", help="run inside this lab guest (thpsim lab list) instead of on this kernel")
    _add_guest_opts(p)

    p = add("diff", cmd_diff, "run traces on the model and the live kernel; exit 0 only when identical")
    p.add_argument("traces", nargs="+")
    p.add_argument("--design", default="upstream", help="the model's design (lazy for a kernel with the series)")
    p.add_argument("--kernel", help="observe inside this lab guest (thpsim lab list) instead of this kernel")
    p.add_argument("--inject", metavar="POINT", help="diff one variant per op that allocates at POINT "
                   "(pte_alloc_one | thp_folio), that op's first allocation there failing (lab guests only)")
    p.add_argument("--inject-times", type=int, default=1, help="allocations to fail in the op (default 1)")
    _add_guest_opts(p)
    p.add_argument("--runs", type=int, default=1, help="live runs per trace (default 1)")
    p.add_argument("--ignore-globals", action="store_true", help="compare per-process values only (busy hosts)")
    p.add_argument("--strict", action="store_true",
                   help="a host-wide counter that other processes moved (flagged, exit 0 by default) fails the diff")
    p.add_argument("--max-show", type=int, default=20)
    p.add_argument("-v", "--verbose", action="store_true", help="also list noisy global differences")

    add("probe", cmd_probe, "does the running kernel deposit a PTE table per THP? what would the series save?")

    p = add("compare", cmd_compare, "replay a trace under several designs and compare page-table memory")
    p.add_argument("trace")
    p.add_argument("--designs", help="comma-separated (default upstream,lazy)")
    _add_model_opts(p)

    p = add("selftest", cmd_selftest, "the series' five kselftests (TAP 13) on the model or the live kernel")
    p.add_argument("--design", default="lazy")
    p.add_argument("--arch", default="x86_64")
    p.add_argument("--inject", action="store_true", help="fail the split's table allocation")
    p.add_argument("--live", action="store_true", help="run them on the running kernel")

    p = add("campaign", cmd_campaign, "fail every allocation point of a trace in turn and report outcomes")
    p.add_argument("trace")
    p.add_argument("--design", default="lazy")
    p.add_argument("--arch", default="x86_64")
    p.add_argument("--sites", help="comma-separated site prefixes to fail (default: all)")
    p.add_argument("--workers", type=int, help="process pool size (default: CPUs, at most 8)")
    p.add_argument("--checkpoint", action="store_true", help="restore a snapshot instead of replaying the prefix")
    p.add_argument("--knob", action="append", metavar="NAME=VALUE")
    p.add_argument("--host-knobs", action="store_true")

    p = add("review", cmd_review, "the v3 review's open problems, measured for lazy and the variants")
    p.add_argument("--n", type=int, default=1000, help="processes sharing the THP in Hugh's reclaim case")
    p.add_argument("--reserves", type=int, help="PF_MEMALLOC reserve pages (default: n/2)")

    p = add("report", cmd_report, "replay traces under all designs and write a self-contained HTML report")
    p.add_argument("traces", nargs="+")
    p.add_argument("-o", "--output", default="report.html")
    p.add_argument("--images", metavar="DIR", help="also write the plots as files into DIR")
    p.add_argument("--image-format", default="png", choices=("png", "svg"))
    p.add_argument("--designs", help="comma-separated designs (default: all)")
    p.add_argument("--pressure", type=float, help="also replay lazy designs with this allocation-failure "
                   "probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="x86_64")
    p.add_argument("--knob", action="append", metavar="NAME=VALUE",
                   help="kernel knob override, e.g. thp_enabled=always (real programs rarely madvise)")
    p.add_argument("--host-knobs", action="store_true")

    p = add("estimate", cmd_estimate, "what would the series save on this host (or on captured snapshots)?")
    p.add_argument("--snapshot", nargs="+", metavar="DIR", help="snapshot directories or tarballs (a fleet)")
    p.add_argument("--scheduler", help="Dask scheduler address for fleet runs")
    p.add_argument("--workers", type=int)
    p.add_argument("--top", type=int, default=20)

    p = add("snapshot", cmd_snapshot, "capture what the estimator needs from this host")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--tar", action="store_true")
    p.add_argument("--per-vma", action="store_true")

    p = add("generate", cmd_generate, "generate a realistic workload trace (KIND 'list' lists them)")
    p.add_argument("kind")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", help="main heap size, e.g. 256M")
    p.add_argument("-o", "--output", default="-")

    p = add("import-strace", cmd_import_strace, "convert an strace log into a trace")
    p.add_argument("file")
    p.add_argument("-o", "--output", default="-")
    p.add_argument("--touch", default="write-all", choices=("write-all", "none", "perf"))
    p.add_argument("--faults", help="perf script output with page-fault samples (for --touch perf)")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--max-warnings", type=int, default=20)

    p = add("record", cmd_record, "run a program under strace (and perf) and write its trace")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--touch", default="perf", choices=("write-all", "none", "perf"))
    p.add_argument("--no-vmpte", action="store_true")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    p = add("vmpte-check", cmd_vmpte_check, "compare a recorded program's sampled VmPTE with the model's")
    p.add_argument("traces", nargs="+", help="traces recorded with thpsim record (next to TRACE.vmpte.json)")
    p.add_argument("--samples", help="the sample file, if not TRACE.vmpte.json")
    p.add_argument("--tolerance", type=int, default=4, help="kB (default 4: one table)")

    p = add("validate", cmd_validate, "check that a trace parses")
    p.add_argument("trace")

    p = add("lab", cmd_lab, "the kernel lab: build guest kernels and run thpsim commands inside QEMU guests")
    lab = p.add_subparsers(dest="lab_command", required=True)
    lb = lab.add_parser("build", help="fetch, patch, configure and build a guest kernel (cached)")
    lb.add_argument("kernel", help="a named lab kernel (thpsim lab list)")
    lb.add_argument("--series", metavar="DIR|MBOX", help="patch series to apply (a folder of *.patch, an mbox "
                    "as `b4 am` writes it, or one diff); default: the named kernel's own")
    lb.add_argument("--name", help="cache the result under this name (default: KERNEL)")
    lb.add_argument("-j", "--jobs", type=int, help="make -jN (default: CPUs)")
    lb.add_argument("--force", action="store_true", help="rebuild even when a cached build matches")
    lb.add_argument("--json", action="store_true", help="machine-readable output")
    ll = lab.add_parser("list", help="the named kernels and which are built")
    ll.add_argument("--json", action="store_true", help="machine-readable output")
    lk = lab.add_parser("kselftest", help="compile the series' thp_pmd_split_test from KERNEL's tree and run it "
                        "inside KERNEL's guest (TAP 13)")
    lk.add_argument("kernel", help="a built lab kernel with the series (lazy-v3-7.3)")
    _add_guest_opts(lk)
    lr = lab.add_parser("run", help="boot a guest kernel and run a thpsim command inside it",
                        description="boot KERNEL under QEMU (host / read-only over 9p, scratch in guest RAM) and "
                        "run CMD there, e.g. thpsim lab run lazy-v3-7.3 -- thpsim probe")
    lr.add_argument("kernel", help="a built lab kernel, or 'host' to run CMD here")
    _add_guest_opts(lr)
    lr.add_argument("--json", action="store_true", help="print the run's summary as JSON on stderr's last line")
    lr.add_argument("cmd", nargs="*", help="after --: thpsim COMMAND ... (or any program on the host's /)")
    return ap


def _add_guest_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guest")
    g.add_argument("--cpus", type=int, default=2, help="vCPUs (default 2)")
    g.add_argument("--memory", default="2G", help="guest RAM (default 2G)")
    g.add_argument("--swap", metavar="SIZE", help="a zram swap device of SIZE inside the guest, e.g. 1G")
    g.add_argument("--thp", choices=("always", "madvise", "never", "kernel"), default="madvise",
                   help="THP enabled mode inside the guest (default madvise, as on the host; kernel: keep the "
                   "guest kernel's own default)")
    g.add_argument("--sysfs", action="append", metavar="PATH=VALUE", default=[],
                   help="a sysfs/procfs value to set inside the guest before the command, e.g. "
                   "kernel/mm/transparent_hugepage/use_zero_page=0 (relative to /sys)")
    g.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                   help="KVM when it works (probed once and remembered), else TCG")
    g.add_argument("--timeout", type=float, default=3600.0, help="watchdog: kill the guest after S seconds")


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] | None = None
    if argv[:2] == ["lab", "run"] and "--" in argv:     # everything after -- is the guest's command, verbatim
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args = ap.parse_args(argv)
    if tail is not None:
        args.cmd = tail
    # SIGTERM ends a command like Ctrl-C: builds and guests are killed and reaped on the way out
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.fn(args)
    except ThpsimError as e:
        sys.stderr.write(f"thpsim: {e}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("thpsim: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:        # an unwritable output path, an unreadable input: one line with the file
        where = f"{e.filename}: " if e.filename else ""
        name = errno.errorcode.get(e.errno or 0, "")
        sys.stderr.write(f"thpsim: {where}{e.strerror or e}{f' ({name})' if name else ''}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
