"""The thpsim command line. The only part of thpsim that prints.

One module per command group — :mod:`~thpsim.cli.model` (run, compare, selftest, campaign, review),
:mod:`~thpsim.cli.live` (live, diff, probe), :mod:`~thpsim.cli.lab`, :mod:`~thpsim.cli.reports` (report,
estimate, snapshot, vmpte-check), :mod:`~thpsim.cli.traces` (generate, import-strace, record, validate),
:mod:`~thpsim.cli.demo` — and the options they share, declared once, in :mod:`~thpsim.cli.options`.

Every command has --json. Errors the user can fix (a malformed trace, an unreadable /proc file, a bad option)
are one line on stderr and exit status 2; a run that finds a difference exits 1.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from thpsim import __version__
from thpsim.cli import demo, lab, live, model, reports, traces
from thpsim.cli.common import EXIT_DIFF, EXIT_OK, EXIT_USAGE, Command, format_steps
from thpsim.cli.options import JSON, policy
from thpsim.errors import ThpsimError

__all__ = ["main", "build_parser", "COMMANDS", "format_steps", "EXIT_OK", "EXIT_DIFF", "EXIT_USAGE"]

_policy = policy        # the name tests and older callers import

_BY_NAME = {c.name: c for group in (model, demo, live, lab, reports, traces) for c in group.COMMANDS}
# the order `thpsim --help` lists them in
COMMANDS: tuple[Command, ...] = tuple(_BY_NAME[n] for n in (
    "run", "demo", "live", "diff", "probe", "compare", "selftest", "campaign", "review", "races", "report",
    "estimate",
    "snapshot", "generate", "import-strace", "record", "vmpte-check", "validate", "lab"))
assert len(COMMANDS) == len(_BY_NAME), "a command is missing from the --help order"


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is its one error line (``thpsim run: error: ...``) without the usage block,
    like every other error thpsim reports; ``--help`` still shows the usage. Subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="thpsim", description="Executable model of Linux anonymous-THP page-table "
                                 "management: upstream deposit vs lazy PTE allocation at PMD split.")
    ap.add_argument("--version", action="version", version=f"thpsim {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        JSON.add(p)
        p.set_defaults(fn=c.fn)
        if c.setup:
            c.setup(p)
    return ap


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _parse(argv: list[str]) -> argparse.Namespace:
    tail: list[str] | None = None
    if argv[:2] == ["lab", "run"] and "--" in argv:     # everything after -- is the guest's command, verbatim
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if tail is not None:
        args.cmd = tail
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    try:
        args = _parse(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:     # argparse's --help/--version, or its one-line error (exit 2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    # SIGTERM ends a command like Ctrl-C: builds and guests are killed and reaped on the way out
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return int(args.fn(args))
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
