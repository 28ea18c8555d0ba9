"""Live observations of a batch of traces, taken here or inside a lab guest, as one value.

``thpsim live --jsonl TRACE...`` (run on the host or inside a guest by :func:`observe`) writes one JSON
object per line: first ``{"env": ...}`` (the kernel's :class:`~thpsim.live.env.LiveEnv`), then one
``{"path": ..., "steps": [...]}`` or ``{"path": ..., "error": ...}`` per trace. :func:`observe` parses
that stream back into a :class:`LiveBatch`, so the diff runs the model on the host, configured like the
guest's kernel, against observations made inside it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, BinaryIO

from thpsim.errors import ThpsimError
from thpsim.lab.apt import LabStepError
from thpsim.live.env import LiveEnv, detect, skip_reason
from thpsim.observation import StepObs, from_dict, to_dict

__all__ = ["LiveBatch", "TraceLive", "observe", "jsonl_lines", "env_to_dict", "env_from_dict"]


@dataclass(frozen=True)
class TraceLive:
    path: str
    steps: tuple[StepObs, ...]
    error: str | None = None


@dataclass(frozen=True)
class LiveBatch:
    kernel: str                      # lab kernel name, or "host"
    env: LiveEnv
    traces: tuple[TraceLive, ...]

    def get(self, path: str) -> TraceLive:
        for t in self.traces:
            if t.path == path:
                return t
        raise KeyError(path)


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def env_to_dict(env: LiveEnv) -> dict[str, Any]:
    return asdict(env)


def env_from_dict(d: dict[str, Any]) -> LiveEnv:
    names = {f.name for f in fields(LiveEnv)}
    missing = names - d.keys()
    if missing:
        raise ThpsimError(f"the guest's environment record lacks {', '.join(sorted(missing))}: is the guest "
                          "running a different thpsim checkout?")
    return LiveEnv(**{k: _tuples(v) for k, v in d.items() if k in names})


def jsonl_lines(paths: Sequence[str]) -> Iterator[str]:
    """The ``thpsim live --jsonl`` stream for ``paths`` on this kernel (one line per item)."""
    from thpsim.live.runner import LiveRunError, run_live
    from thpsim.trace import format as tf

    env = detect()
    yield json.dumps({"env": env_to_dict(env)})
    why = skip_reason(env)
    for path in paths:
        if why:
            yield json.dumps({"path": path, "error": f"cannot run on the live kernel: {why}"})
            continue
        try:
            steps = run_live(tf.load(path))
        except LiveRunError as e:
            yield json.dumps({"path": path, "error": str(e), "steps": [to_dict(s) for s in e.steps]})
            continue
        except ThpsimError as e:
            yield json.dumps({"path": path, "error": str(e)})
            continue
        yield json.dumps({"path": path, "steps": [to_dict(s) for s in steps]})


def parse_jsonl(text: str, kernel: str, source: str) -> LiveBatch:
    env: LiveEnv | None = None
    traces: list[TraceLive] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if "env" in d:
                env = env_from_dict(d["env"])
                continue
            traces.append(TraceLive(d["path"], tuple(from_dict(s) for s in d.get("steps", ())), d.get("error")))
        except (ValueError, KeyError, TypeError) as e:
            raise ThpsimError(f"{source}:{n}: not a thpsim live record ({type(e).__name__}: {e})") from e
    if env is None:
        raise ThpsimError(f"{source}: the live run printed no environment record")
    return LiveBatch(kernel, env, tuple(traces))


def observe(paths: Sequence[str], *, kernel: str | None = None, guest: Any = None,
            stderr: BinaryIO | None = None) -> LiveBatch:
    """Live observations of ``paths``: on this kernel (``kernel`` None or "host") or in a lab guest."""
    if kernel in (None, "host"):
        return parse_jsonl("\n".join(jsonl_lines(paths)), "host", "live run")
    from thpsim.lab.guest import GuestConfig, run_in_guest

    out = io.BytesIO()
    stopped: str | None = None
    try:
        cfg = guest or GuestConfig()
        cfg = replace(cfg, env=(*cfg.env, ("THPSIM_THP_DISABLE", "1")))
        res = run_in_guest(kernel, ["thpsim", "live", "--jsonl", *paths], cfg, stdout=out,
                           stderr=stderr)
        if res.returncode not in (0, 1):
            stopped = f"thpsim live inside {kernel} exited {res.returncode} (console log: {res.console_log})"
    except LabStepError as e:       # watchdog, or a guest that died: keep what it reported before
        stopped = str(e)
    text = out.getvalue().decode("utf-8", "replace")
    if stopped and '{"env"' not in text:
        raise ThpsimError(stopped)
    lines = text.splitlines()
    if stopped and lines and not text.endswith("\n"):
        lines = lines[:-1]          # a record cut off mid-line
    batch = parse_jsonl("\n".join(lines), kernel, f"guest {kernel} output")
    if stopped:
        done = {t.path for t in batch.traces}
        batch = LiveBatch(batch.kernel, batch.env, batch.traces + tuple(
            TraceLive(p, (), f"not run: {stopped}") for p in paths if p not in done))
    return batch
