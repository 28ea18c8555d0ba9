"""The options several commands share, each declared once, and what turns them into model values.

Groups: model options (``--design``, ``--arch``, ``--knob``, ``--host-knobs``), fault injection (``--fail-*``,
``--budget``, ``--reserves``, ``--seed``), live/lab options (``--kernel``, ``--inject POINT``, the guest's
``--cpus`` ... ``--timeout``), output options (``--json``, a trace's ``-o``), and ``--designs``/``--workers``.
Names are checked against the registries they come from: designs against :data:`thpsim.model.design.DESIGNS`,
arches against :data:`thpsim.model.arch.ARCHES`, injection points against
:data:`thpsim.model.page_alloc.INJECT_POINTS`, lab kernels against :data:`thpsim.lab.kernels.KERNELS`; an
unknown name is argparse's one-line error with the registry's list.

Every shared option has one default. Where commands had different defaults for the same flag before the
options were shared, the user-visible default is kept and named here (tests/test_cli.py checks the list):
``selftest`` and ``campaign`` take ``--design lazy`` (:data:`SERIES_DESIGN`: they exercise the series' failure
paths), ``record`` defaults ``--touch perf`` (it records the perf faults) where ``import-strace`` defaults
``write-all``. Left out: options only one command has stay with that command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from thpsim.errors import ThpsimError
from thpsim.lab.kernels import HOST, KERNELS
from thpsim.model.arch import ARCHES
from thpsim.model.design import DESIGNS
from thpsim.model.page_alloc import INJECT_POINTS

__all__ = ["Option", "SHARED", "SERIES_DESIGN", "add_model_opts", "add_inject_opts", "add_guest_opts", "knobs",
           "policy", "guest_config", "DESIGN", "ARCH", "KNOB", "HOST_KNOBS", "SEED", "RESERVES", "JSON",
           "KERNEL", "INJECT_POINT", "DESIGNS_OPT", "WORKERS", "TRACE_OUTPUT", "TOUCH", "RECORD_TOUCH",
           "LAB_KERNEL", "LAB_KERNEL_OR_HOST"]

Target = argparse.ArgumentParser | argparse._ArgumentGroup


@dataclass(frozen=True)
class Option:
    """One command-line option as ``add_argument`` takes it."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def add(self, p: Target) -> argparse.Action:
        return p.add_argument(*self.flags, **self.kwargs)

    def with_(self, **kwargs: Any) -> Option:
        """The same option with some settings replaced (a documented per-command default, a stricter help)."""
        return Option(self.flags, {**self.kwargs, **kwargs})

    @property
    def default(self) -> Any:
        """The value a command that has this option sees when it is not given (argparse's, e.g. store_true's
        False)."""
        return self.add(argparse.ArgumentParser(add_help=False)).default


def _one_of(what: str, names: Iterable[str]) -> Callable[[str], str]:
    known = tuple(names)

    def check(value: str) -> str:
        if value not in known:
            raise argparse.ArgumentTypeError(f"unknown {what} {value!r}; choose one of: {', '.join(known)}")
        return value

    check.__name__ = what.replace(" ", "_")
    return check


def _designs(value: str) -> tuple[str, ...]:
    names = tuple(value.split(","))
    for n in names:
        _DESIGN(n)
    return names


_DESIGN = _one_of("design", DESIGNS)         # worded like get_design / get_arch errors
_ARCH_NAMES = tuple(sorted(ARCHES))
_LAB = tuple(KERNELS)

# ---- model options ------------------------------------------------------------------------------------------------
DESIGN = Option(("--design",), {
    "default": "upstream", "type": _DESIGN, "choices": tuple(DESIGNS), "metavar": "DESIGN",
    "help": "the model's design: %(choices)s (default %(default)s; lazy for a kernel with the series)"})
SERIES_DESIGN = DESIGN.with_(default="lazy", help="the model's design: %(choices)s (default %(default)s: these "
                             "exercise the series' failure paths)")
ARCH = Option(("--arch",), {
    "default": "x86_64", "type": _one_of("arch", _ARCH_NAMES), "choices": _ARCH_NAMES, "metavar": "ARCH",
    "help": "the model's arch profile: %(choices)s (default %(default)s)"})
KNOB = Option(("--knob",), {"action": "append", "metavar": "NAME=VALUE",
                            "help": "kernel knob override, e.g. thp_enabled=always, use_zero_page=false, swap=true"})
HOST_KNOBS = Option(("--host-knobs",), {"action": "store_true", "help": "configure the model like the running kernel"})
DESIGNS_OPT = Option(("--designs",), {"type": _designs, "metavar": "D1,D2,...",
                                      "help": "comma-separated designs (default: the command's own set)"})
WORKERS = Option(("--workers",), {"type": int, "help": "process pool size (default: CPUs; at most 8 for "
                                                         "campaign, one per snapshot for estimate)"})

# ---- fault injection ----------------------------------------------------------------------------------------------
FAIL_NTH = Option(("--fail-nth",), {"type": int, "help": "fail the N-th counted allocation (1-based)"})
FAIL_SITE = Option(("--fail-site",), {"help": "count/fail only this allocation site (prefix), e.g. "
                                              "pte_alloc_one@split"})
FAIL_PROB = Option(("--fail-prob",), {"type": float, "default": 0.0, "help": "failure probability 0..1 (seeded)"})
FAIL_INTERVAL = Option(("--fail-interval",), {"type": int, "default": 1})
FAIL_TIMES = Option(("--fail-times",), {"type": int, "default": -1})
FAIL_PERSISTENT = Option(("--fail-persistent",), {"metavar": "SITE", "help": "every allocation at SITE fails"})
BUDGET = Option(("--budget",), {"help": "page budget (memcg-like limit), e.g. 64M"})
RESERVES = Option(("--reserves",), {"help": "PF_MEMALLOC reserves beyond the budget, e.g. 1M"})
SEED = Option(("--seed",), {"type": int, "default": 0, "help": "seed of the allocation-failure RNG (default 0)"})
_INJECT = (FAIL_NTH, FAIL_SITE, FAIL_PROB, FAIL_INTERVAL, FAIL_TIMES, FAIL_PERSISTENT, BUDGET, RESERVES, SEED)

# ---- live / lab ---------------------------------------------------------------------------------------------------
LAB_KERNEL = Option(("kernel",), {"type": _one_of("lab kernel", _LAB), "choices": _LAB, "metavar": "KERNEL",
                                  "help": "a named lab kernel: %(choices)s"})
def _lab_kernel_or_build(value: str) -> str:
    """A named lab kernel, host, or the name of a build cached with ``lab build --name``."""
    from thpsim.lab.build import find_built

    if value in (HOST, *_LAB) or find_built(value) is not None:
        return value
    raise argparse.ArgumentTypeError(f"unknown lab kernel {value!r}; choose one of: {', '.join((HOST, *_LAB))} "
                                     "or a build cached with `thpsim lab build ... --name NAME`")


LAB_KERNEL_OR_HOST = Option(("kernel",), {
    "type": _lab_kernel_or_build, "metavar": "KERNEL",
    "help": f"a built lab kernel ({', '.join((HOST, *_LAB))}, or a `lab build --name` build; host: run here)"})
KERNEL = Option(("--kernel",), {"type": _one_of("lab kernel", (HOST, *_LAB)), "choices": (HOST, *_LAB),
                                "metavar": "KERNEL",
                                "help": "run inside this lab guest (%(choices)s) instead of on this kernel"})
INJECT_POINT = Option(("--inject",), {
    "type": _one_of("injection point", INJECT_POINTS), "choices": tuple(INJECT_POINTS), "metavar": "POINT",
    "help": "diff one variant per op that allocates at POINT (%(choices)s), that op's first allocation there "
            "failing (lab guests only)"})
_GUEST = (
    Option(("--cpus",), {"type": int, "default": 2, "help": "vCPUs (default 2)"}),
    Option(("--memory",), {"default": "2G", "help": "guest RAM (default 2G)"}),
    Option(("--swap",), {"metavar": "SIZE", "help": "a zram swap device of SIZE inside the guest, e.g. 1G"}),
    Option(("--thp",), {"choices": ("always", "madvise", "never", "kernel"), "default": "madvise",
                        "help": "THP enabled mode inside the guest (default madvise, as on the host; kernel: keep "
                                "the guest kernel's own default)"}),
    Option(("--sysfs",), {"action": "append", "metavar": "PATH=VALUE", "default": [],
                          "help": "a sysfs/procfs value to set inside the guest before the command, e.g. "
                                  "kernel/mm/transparent_hugepage/use_zero_page=0 (relative to /sys)"}),
    Option(("--accel",), {"choices": ("auto", "kvm", "tcg"), "default": "auto",
                          "help": "KVM when it works (probed once and remembered), else TCG"}),
    Option(("--timeout",), {"type": float, "default": 3600.0, "help": "watchdog: kill the guest after S seconds"}),
)

# ---- output -------------------------------------------------------------------------------------------------------
JSON = Option(("--json",), {"action": "store_true", "help": "machine-readable output"})
TRACE_OUTPUT = Option(("-o", "--output"), {"default": "-", "help": "the trace file to write (default -: stdout)"})
TOUCH = Option(("--touch",), {"default": "write-all", "choices": ("write-all", "none", "perf"),
                              "help": "strace shows no page faults: write every new writable anonymous mapping once "
                                      "(write-all), add no accesses (none), or take them from perf's page faults "
                                      "(perf); default %(default)s"})
RECORD_TOUCH = TOUCH.with_(default="perf")

SHARED: tuple[Option, ...] = (DESIGN, ARCH, KNOB, HOST_KNOBS, DESIGNS_OPT, WORKERS, *_INJECT, KERNEL, INJECT_POINT,
                              *_GUEST, JSON, TRACE_OUTPUT, TOUCH)


def add_model_opts(p: argparse.ArgumentParser, *, design: Option | None = DESIGN, knobs: bool = True) -> None:
    """--design (``design=None``: the command takes --designs instead), --arch, and --knob/--host-knobs."""
    if design is not None:
        design.add(p)
    ARCH.add(p)
    if knobs:
        KNOB.add(p)
        HOST_KNOBS.add(p)


def add_inject_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fault injection")
    for o in _INJECT:
        o.add(g)


def add_guest_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guest")
    for o in _GUEST:
        o.add(g)


# ---- option values ------------------------------------------------------------------------------------------------
def knobs(args: argparse.Namespace) -> Any:
    """The model's Knobs: defaults (or the running kernel's, --host-knobs) with the --knob overrides."""
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


def policy(args: argparse.Namespace) -> Any:
    """The FailPolicy of the fault-injection options; sizes are counted in the arch's pages."""
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


def guest_config(args: argparse.Namespace) -> Any:
    """The lab guest's GuestConfig from the guest options."""
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
