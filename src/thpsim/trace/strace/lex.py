"""Pass 1 of the strace importer: log lines -> syscall and exit events, with the import's bookkeeping.

Reads the text of ``strace -f -tt -e trace=memory,process -o FILE CMD...``, and also logs without ``-f`` (no pid
column), the ``[pid N]`` prefix form strace prints to stderr, ``-ttt`` (epoch) or ``-r`` timestamps or none at
all (``-tt`` times of day are unwrapped across midnight), ``-T`` durations, ``-y`` fd decorations,
``<unfinished ...>`` / ``<... NAME resumed>`` pairs (joined into one event), signal lines
(``--- SIGCHLD ... ---``, counted), exit lines (``+++ exited with 0 +++``, ``+++ killed by SIGKILL +++``), error
returns (``= -1 ENOMEM (Cannot allocate memory)``) and ``strace:`` messages (skipped).

An event is a call's name, its raw argument text (split later by :func:`split_args`) and its result; it takes
effect at the line where the call completed, except process creation (``clone``/``fork``), which takes effect at
its entry line because the child may log before the parent's call returns.

Every problem is an :class:`ImportNote` naming ``FILE:LINE`` (or, with ``strict=True``, a one-line
:class:`~thpsim.errors.TraceError`); nothing here raises a traceback. Left out: decoding of the arguments (the
replay reads the few it needs), and strace's ``-k`` stack-trace lines and ``-i`` instruction pointers (such
lines are garbled lines here).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from thpsim.errors import TraceError

__all__ = ["Event", "ImportNote", "Importer", "split_args"]

_PREFIX_RE = re.compile(
    r"^\s*(?:\[pid\s+(?P<bpid>\d+)\]\s+|(?P<pid>\d+)\s+(?=\S))?"
    r"(?:(?P<tod>\d{1,2}:\d{2}:\d{2}(?:\.\d+)?)\s+|(?P<sec>\d+\.\d+)\s+)?(?P<body>.*?)\s*$")
_RESUMED_RE = re.compile(r"^<\.\.\.\s+(?P<name>[A-Za-z_][\w]*)\s+resumed>\s?(?P<rest>.*)$")
_CALL_RE = re.compile(r"^(?P<name>[A-Za-z_][\w]*)\((?P<rest>.*)$")
_UNFINISHED = "<unfinished ...>"
_RET_RE = re.compile(r"\)\s+=\s+(?P<ret>-?\d+|0x[0-9a-fA-F]+|\?)(?:\s+(?P<err>E[A-Z0-9_]+))?(?:\s+\(.*\))?"
                     r"(?:\s+<(?:[\d.]+|unavailable)>)?\s*$")
_EXIT_RE = re.compile(r"^\+\+\+\s+(?:exited with -?\d+|killed by \S+(?:\s+\(core dumped\))?)\s+\+\+\+$")
_CREATES = ("clone", "clone3", "fork", "vfork")


@dataclass(frozen=True)
class ImportNote:
    """A problem in the strace log that did not stop the import."""

    line: int
    message: str
    source: str = "strace.log"

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


@dataclass
class Event:
    pos: int                 # line number where the event takes effect (ordering key)
    line: int                # line number of the call's first line (for messages)
    pid: int
    t: float | None
    kind: str                # "call" | "exit"
    name: str = ""
    args: str = ""
    ret: str = ""
    err: str = ""


@dataclass(frozen=True)
class _Pending:
    """A call of one pid that strace printed as ``<unfinished ...>``."""

    line: int
    t: float | None
    name: str
    args: str                # the argument text so far


def split_args(s: str) -> list[str]:
    """Split a strace argument list at top-level commas (brackets, braces and quotes respected)."""
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    quote = False
    esc = False
    for ch in s:
        if quote:
            cur.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                quote = False
            continue
        if ch == '"':
            quote = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    if tail or out:
        out.append(tail)
    return out


def _strip_unfinished(rest: str) -> str | None:
    """The argument text before a trailing ``<unfinished ...>``, or None when the call is complete."""
    r = rest.rstrip()
    return r[: -len(_UNFINISHED)] if r.endswith(_UNFINISHED) else None


class Importer:
    """The state of one import: options, notes, counters (the replay adds to them too) and pass 1."""

    def __init__(self, source: str, touch: str, strict: bool) -> None:
        self.source = source
        self.touch = touch
        self.strict = strict
        self.warnings: list[ImportNote] = []
        self.seen: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        self.imported = 0
        self.other = 0
        self.signals = 0
        self.clock = "none"
        self.stats_touch = 0
        self._events: list[Event] = []
        self._pending: dict[int, _Pending] = {}
        self._day = 0.0
        self._last_tod: float | None = None

    def warn(self, line: int, message: str) -> None:
        if self.strict:
            raise TraceError(message, line=line, source=self.source)
        self.warnings.append(ImportNote(line, message, self.source))

    # -- pass 1 ------------------------------------------------------------------------------------------

    def read_events(self, lines: list[str]) -> list[Event]:
        self._events, self._pending = [], {}
        self._day, self._last_tod = 0.0, None
        for no, raw in enumerate(lines, 1):
            text = raw.rstrip("\n")
            if not text.strip():
                continue
            m = _PREFIX_RE.match(text)
            if m is None:   # pragma: no cover - the pattern matches any string
                self.warn(no, "unreadable line")
                continue
            pid = int(m.group("bpid") or m.group("pid") or 0)
            self._read_body(no, pid, self._timestamp(m), m.group("body"))
        self._end_of_log()
        events = self._events
        events.sort(key=lambda e: e.pos)
        return events

    def _timestamp(self, m: re.Match[str]) -> float | None:
        """The line's time (``-tt`` times of day unwrapped across midnight), and which clock the log uses."""
        if m.group("tod"):
            h, mi, s = m.group("tod").split(":")
            tod = int(h) * 3600 + int(mi) * 60 + float(s)
            if self._last_tod is not None and tod < self._last_tod - 43200:
                self._day += 86400.0
            self._last_tod = tod
            self.clock = "time-of-day"
            return tod + self._day
        if m.group("sec"):
            t = float(m.group("sec"))
            self.clock = "epoch" if t > 1e8 else "relative"
            return t
        return None

    def _read_body(self, no: int, pid: int, t: float | None, body: str) -> None:
        """One line without its pid and time: an strace message, signal, exit, resumed call or call."""
        if body.startswith("strace:") or body.startswith("+++ superseded"):
            return
        if body.startswith("---") and body.endswith("---"):
            self.signals += 1
        elif body.startswith("+++"):
            if _EXIT_RE.match(body):
                self._events.append(Event(no, no, pid, t, "exit"))
            else:
                self.warn(no, f"unrecognised exit line {body[:60]!r}")
        elif body.startswith("<..."):
            self._resumed(no, pid, t, body)
        else:
            self._call(no, pid, t, body)

    def _resumed(self, no: int, pid: int, t: float | None, body: str) -> None:
        """``<... NAME resumed> REST``: join REST to the pid's unfinished call (which may stay unfinished)."""
        r = _RESUMED_RE.match(body)
        if r is None:
            self.warn(no, f"garbled 'resumed' line {body[:60]!r}")
            return
        name, rest = r.group("name"), r.group("rest")
        p = self._pending.get(pid)
        if p is None or p.name != name:
            self.warn(no, f"'<... {name} resumed>' without a matching '<unfinished ...>' call of pid {pid}")
            return
        del self._pending[pid]
        more = _strip_unfinished(rest)
        if more is not None:
            self._pending[pid] = _Pending(p.line, p.t, name, p.args + more)
            return
        self._complete(pid, p.line, no, p.t, t, name, p.args + rest)

    def _call(self, no: int, pid: int, t: float | None, body: str) -> None:
        """``NAME(ARGS) = RESULT``, or its ``<unfinished ...>`` first half."""
        c = _CALL_RE.match(body)
        if c is None:
            self.warn(no, f"garbled line (not a syscall, signal or exit line): {body[:60]!r}")
            return
        name, rest = c.group("name"), c.group("rest")
        head = _strip_unfinished(rest)
        if head is not None:
            p = self._pending.get(pid)
            if p is not None:
                self.warn(p.line, f"{p.name} of pid {pid} never resumed")
            self._pending[pid] = _Pending(no, t, name, head)
            return
        self._complete(pid, no, no, t, t, name, rest)

    def _end_of_log(self) -> None:
        """Calls still unfinished at the end: a task that died inside exit has exited, the rest are ignored."""
        for pid, p in sorted(self._pending.items(), key=lambda kv: kv[1].line):
            self.seen[p.name] += 1
            if p.name in ("exit", "exit_group"):
                # the task died inside exit: as good as a finished exit
                self._events.append(Event(p.line, p.line, pid, p.t, "call", p.name, "", "?", ""))
                continue
            self.warn(p.line, f"{p.name} of pid {pid} never finished (log truncated?); ignored")
            self.ignored["unfinished"] += 1
        self._pending = {}

    def _complete(self, pid: int, line0: int, line1: int, t0: float | None, t1: float | None, name: str,
                  rest: str) -> None:
        r = None
        for r in _RET_RE.finditer(rest):  # noqa: B007 - the last match is the result
            pass
        if r is None or r.end() != len(rest.rstrip()):
            self.warn(line1, f"garbled {name} call: no ') = RESULT' at the end")
            self.seen[name] += 1
            self.ignored["garbled"] += 1
            return
        args = rest[: r.start()]
        self.seen[name] += 1
        # process creation takes effect at the call's entry (the child may run before the call returns);
        # everything else at its completion.
        creates = name in _CREATES
        pos = line0 if creates else line1
        self._events.append(Event(pos, line0, pid, t0 if creates else t1, "call", name, args, r.group("ret"),
                                  r.group("err") or ""))
