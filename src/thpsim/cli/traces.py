"""Trace commands: ``generate`` (realistic workloads), ``import-strace`` (an strace log into a trace), ``record``
(run a program under strace and perf and write its trace) and ``validate`` (does a trace parse?)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import thpsim.cli.options as O
from thpsim.cli.common import EXIT_OK, Command, emit, emit_json, load_trace, out, write_text
from thpsim.errors import ThpsimError

__all__ = ["COMMANDS", "cmd_generate", "cmd_import_strace", "cmd_record", "cmd_validate"]


def cmd_generate(args: argparse.Namespace) -> int:
    from thpsim.trace import format as tf
    from thpsim.trace.generators import KINDS, generate

    if args.kind == "list":
        emit(args, KINDS, lambda: "\n".join(f"{k:<18} {v}" for k, v in KINDS.items()))
        return EXIT_OK
    size = tf.parse_size(args.size) if args.size else None
    trace = generate(args.kind, seed=args.seed, size=size)
    text = tf.dumps(trace)
    write_text(args.output, text)
    if args.json:
        emit_json({"kind": args.kind, "seed": args.seed, "ops": len(trace.ops), "output": args.output})
    elif args.output != "-":
        out(f"wrote {args.output}: {len(trace.ops)} ops")
    return EXIT_OK


def _setup_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind")
    # not fault injection's --seed (default 0): the generator's seed, default 1 as it always was
    p.add_argument("--seed", type=int, default=1, help="the workload generator's seed (default 1)")
    p.add_argument("--size", help="main heap size, e.g. 256M")
    O.TRACE_OUTPUT.add(p)


def cmd_import_strace(args: argparse.Namespace) -> int:
    from thpsim.trace.strace import import_strace_file

    kw: dict[str, Any] = {"touch": args.touch, "strict": args.strict}
    if args.faults:
        try:
            with open(args.faults, encoding="utf-8", errors="replace") as f:
                kw["faults"] = f.read()      # the perf script text: import_strace parses and aligns it
        except OSError as e:
            raise ThpsimError(f"cannot read {args.faults}: {e.strerror}") from None
    res = import_strace_file(args.file, **kw)
    write_text(args.output, res.text)
    if args.json:
        emit_json({"output": args.output, "stats": res.stats, "warnings": [str(w) for w in res.warnings]})
    else:
        out(res.summary())
        for w in res.warnings[: args.max_warnings]:
            sys.stderr.write(f"{w}\n")
    return EXIT_OK


def _setup_import_strace(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    O.TRACE_OUTPUT.add(p)
    O.TOUCH.add(p)
    p.add_argument("--faults", help="perf script output with page-fault samples (for --touch perf)")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--max-warnings", type=int, default=20)


def cmd_record(args: argparse.Namespace) -> int:
    from thpsim.trace.record import record

    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        raise ThpsimError("give the program to record after --, e.g. thpsim record -o t.jsonl -- python3 -c 'pass'")
    r = record(cmd, args.output, touch=args.touch, sample_vmpte=not args.no_vmpte)
    if args.json:
        emit_json({"trace": r.trace_path, "returncode": r.returncode, "vmpte": r.vmpte_path,
                   "samples": r.samples})
    else:
        out(f"wrote {r.trace_path}" + (f" and {r.vmpte_path}" if r.vmpte_path else "")
            + f"; the program exited with {r.returncode}")
        out(r.result.summary())
    return r.returncode if isinstance(r.returncode, int) and r.returncode > 0 else EXIT_OK


def _setup_record(p: argparse.ArgumentParser) -> None:
    # a file, never stdout: the VmPTE samples are written next to it (TRACE.vmpte.json)
    p.add_argument("-o", "--output", required=True, help="the trace file to write")
    O.RECORD_TOUCH.add(p)
    p.add_argument("--no-vmpte", action="store_true")
    p.add_argument("cmd", nargs=argparse.REMAINDER)


def cmd_validate(args: argparse.Namespace) -> int:
    trace = load_trace(args.trace)
    emit(args, {"trace": args.trace, "name": trace.header.name, "ops": len(trace.ops), "procs": trace.procs()},
         lambda: f"{args.trace}: valid trace v1, {len(trace.ops)} ops, processes {', '.join(trace.procs())}")
    return EXIT_OK


def _setup_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace")


COMMANDS = (
    Command("generate", cmd_generate, "generate a realistic workload trace (KIND 'list' lists them)", _setup_generate),
    Command("import-strace", cmd_import_strace, "convert an strace log into a trace", _setup_import_strace),
    Command("record", cmd_record, "run a program under strace (and perf) and write its trace", _setup_record),
    Command("validate", cmd_validate, "check that a trace parses", _setup_validate),
)
