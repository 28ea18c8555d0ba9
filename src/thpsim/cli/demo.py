"""The ``demo`` command: the bundled realistic workloads under upstream and lazy, what the deposit costs, and
(unless ``--no-live``) a check of the model against the running kernel (:mod:`thpsim.analysis.demo`)."""

from __future__ import annotations

import argparse

from thpsim.cli.common import EXIT_OK, Command, emit

__all__ = ["COMMANDS", "cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
    from thpsim.analysis.demo import demo_text, run_demo

    outdir = args.output or "."
    res = run_demo(outdir, live=not args.no_live)
    emit(args, res, lambda: demo_text(res))
    return EXIT_OK


def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="directory for demo.png (default: current directory)")
    p.add_argument("--no-live", action="store_true", help="do not validate against the live kernel")


COMMANDS = (Command("demo", cmd_demo, "run the bundled realistic workload and show what the deposit costs",
                    _setup_demo),)
