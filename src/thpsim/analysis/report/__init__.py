"""The savings report: replay traces under every design and write one self-contained HTML page.

Three modules: :mod:`.data` (the frozen result classes and their JSON form), :mod:`.build` (replay and
compute) and :mod:`.html` (render the page from the ``report.html`` template, write the plots); every public
name is importable from here.

``build_report(paths)`` replays each trace under upstream, lazy and the variants (and, with ``pressure``, once
more per lazy-family design under that :class:`FailPolicy`) and returns a :class:`ReportData` — pure data, no
I/O besides reading the traces. ``write_html`` turns it into one HTML file (inline CSS, plots embedded as base64
PNG, no external resource), ``write_images`` writes the plots as separate PNG/SVG files and ``to_json`` /
``from_json`` give a deterministic JSON form. Same input, same bytes: no timestamps, fixed matplotlib metadata
and SVG hash salt, the Agg renderer.

What is measured (per trace, per design), all from the observation stream of the replay:

* ``pgtables_bytes`` after every step: the sum over live processes of ``VmPTE`` (``vm_pte_kb``) × 1024, stored
  as change points ``(step, bytes)``; its peak (and the first step reaching it) and its final value;
* savings against upstream at the peak and at the end, in bytes and percent of upstream;
* PTE-table allocations (``pte_alloc_one@*`` and ``__pte_alloc`` calls, as :attr:`ModelRun.table_allocs`),
  ``thp_split_pmd`` / ``thp_split_pmd_failed`` and the kernel functions the splits (and failed splits) came from;
* data-contract violations (shadow memory), each with the step and trace line where it first appeared;
* op results that were errors (``ENOMEM``, ``SIGSEGV``, ``LIVELOCK``...).

Data-contract checking: ``contract="op"`` (the default) uses the engine's op-scoped shadow check: after each
step only the range the op touched is compared (forks, exits and kernel-wide ops compare everything), so a
violation is found at the step that causes it and the cost stays linear. ``contract="every"`` compares every
page of every process after every step (quadratic; the tests check that both give the same report); ``"off"``
skips it.

A violation is counted once, at the step where it first appears: a later check of the same stale pages (a read
over them, a fork) reports them again, possibly with a changed cause, so a
:class:`~thpsim.observation.ContractViolation` counts as new only if it names pages of its process that were not
already known to violate.
"""


from __future__ import annotations

from thpsim.analysis.report.build import DEFAULT_DESIGNS, MAX_LISTED, Progress, build_report
from thpsim.analysis.report.data import (
    CONTRACT_MODES,
    REPORT_FORMAT,
    DesignResult,
    OpError,
    ReportData,
    TraceReport,
    Violation,
    from_json,
    to_json,
)
from thpsim.analysis.report.html import kib, render_html, write_html, write_images

__all__ = ["build_report", "write_html", "write_images", "render_html", "to_json", "from_json", "ReportData",
           "TraceReport", "DesignResult", "Violation", "OpError", "CONTRACT_MODES", "DEFAULT_DESIGNS", "kib",
           "MAX_LISTED", "REPORT_FORMAT", "Progress"]
