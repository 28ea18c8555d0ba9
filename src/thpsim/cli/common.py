"""What every command module shares: exit statuses, printing (the CLI is the only part of thpsim that prints),
trace loading and writing, the per-step table, and the expectation report.

A command module registers its commands as :class:`Command` values; :func:`thpsim.cli.build_parser` adds them
in the order ``thpsim --help`` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from thpsim.errors import ThpsimError

__all__ = ["EXIT_OK", "EXIT_DIFF", "EXIT_USAGE", "Command", "out", "emit_json", "load_trace", "write_bytes", "write_text",
           "format_steps", "report_expectations", "comma_list"]

EXIT_OK, EXIT_DIFF, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


@dataclasses.dataclass(frozen=True)
class Command:
    """One ``thpsim NAME``: its handler, its one-line help, and what it adds to its parser (besides --json)."""

    name: str
    fn: Handler
    help: str
    setup: Callable[[argparse.ArgumentParser], None] | None = None


def out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def emit_json(obj: Any) -> None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    out(json.dumps(obj, indent=1, sort_keys=False, default=_default))


def emit(args: Any, value: Any, text: Callable[[], str]) -> None:
    """A command's result: ``value`` as JSON with --json, else the human-readable ``text()``."""
    if args.json:
        emit_json(value)
    else:
        out(text())


def _default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, set | frozenset):
        return sorted(o)
    return str(o)


def load_trace(path: str) -> Any:
    from thpsim.trace import format as tf

    return tf.load(path)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` ("-": stdout); an unwritable path is a one-line error."""
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ThpsimError(f"cannot write {path}: {e.strerror}") from None


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``; an unwritable path is a one-line error."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise ThpsimError(f"cannot write {path}: {e.strerror}") from None


def comma_list(value: str | None) -> tuple[str, ...] | None:
    return tuple(value.split(",")) if value else None


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


def report_expectations(trace: Any, steps: Sequence[Any], design: str) -> int:
    """The trace's ``expect`` fields that the run did not meet: one line each on stderr; exit 1 if any."""
    from thpsim.analysis.expect import check_expectations

    failed = check_expectations(trace, steps, design)
    for line in failed:
        sys.stderr.write(f"thpsim: expectation not met: {line}\n")
    return EXIT_DIFF if failed else EXIT_OK
