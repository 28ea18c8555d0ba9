"""Import an strace log of a real program as a thpsim trace (format v1).

Input: the text written by ``strace -f -tt -e trace=memory,process -o FILE CMD...``. Also accepted: logs
without ``-f`` (no pid column), the ``[pid N]`` prefix form strace prints to stderr, ``-ttt`` (epoch) or
``-r`` timestamps or none at all, ``-T`` durations, ``-y`` fd decorations, ``<unfinished ...>`` /
``<... NAME resumed>`` pairs, signal lines (``--- SIGCHLD ... ---``), exit lines (``+++ exited with 0 +++``,
``+++ killed by SIGKILL +++``), error returns (``= -1 ENOMEM (Cannot allocate memory)``) and ``strace:``
messages. With the ``"perf"`` touch policy, also the ``perf script`` text of
``perf record -e exceptions:page_fault_user -e exceptions:page_fault_kernel -k monotonic``.

The import runs in passes, one module each:

* :mod:`.lex` — lines -> call/exit events (joins unfinished/resumed halves, reads timestamps), the import's
  notes and counters;
* :mod:`.faults` — perf page-fault samples, moved onto the log's clock;
* :mod:`.replay` — a mini address-space model (segments only, no page tables: it infers the program's address
  space from the log and is deliberately not :mod:`thpsim.model`) replays the calls and emits raw ops in real
  addresses; the touch policy and the folding of faults into strided ops live here;
* :mod:`.arena` — real 1 GiB windows -> arena slots (offsets modulo 1 GiB kept), raw ops -> trace ops;
* :mod:`.importer` — :func:`import_strace` runs them and validates the result.

The policies (what is imported, addresses, processes, touch) are in docs/workloads.md, "Importing strace logs",
and in the header of :mod:`.replay`. Problems never raise a traceback: a garbled line gives an
:class:`ImportNote` with its line number (``str()`` is ``FILE:LINE: message``), or with ``strict=True`` a
one-line :class:`~thpsim.errors.TraceError` naming the line.
"""

from thpsim.trace.strace.arena import ARENA_SLOTS, GiB
from thpsim.trace.strace.faults import parse_perf_faults
from thpsim.trace.strace.importer import TOUCH_POLICIES, ImportResult, import_strace, import_strace_file
from thpsim.trace.strace.lex import ImportNote
from thpsim.trace.strace.replay import PAGE

__all__ = ["ARENA_SLOTS", "PAGE", "TOUCH_POLICIES", "GiB", "ImportNote", "ImportResult", "import_strace",
           "import_strace_file", "parse_perf_faults"]
