"""Errors that thpsim reports to the user as one clear line (the CLI never shows a traceback for them)."""

from __future__ import annotations


class ThpsimError(Exception):
    """Base class: the message is a complete, user-facing sentence that says how to fix the problem."""


class TraceError(ThpsimError):
    """A malformed trace: names the file, line and field."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None,
                 source: str | None = None) -> None:
        self.line = line
        self.field = field
        self.source = source
        self.reason = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.source or "trace"
        if self.line is not None:
            where += f":{self.line}"
        fld = f" field '{self.field}':" if self.field else ""
        return f"{where}:{fld} {self.reason}"

    def with_source(self, source: str) -> TraceError:
        return TraceError(self.reason, line=self.line, field=self.field, source=source)


class ProcError(ThpsimError):
    """An unreadable or truncated /proc (or snapshot) file."""


class InvariantViolation(ThpsimError):
    """A model invariant failed after a step; carries the step and a replayable trace prefix."""

    def __init__(self, message: str, *, step: int | None = None, trace_prefix: str | None = None) -> None:
        self.step = step
        self.trace_prefix = trace_prefix
        super().__init__(message if step is None else f"step {step}: {message}")


class LivelockDetected(ThpsimError):
    """A kernel retry loop (e.g. change_pmd_range's split retry) did not terminate within the model's bound."""
