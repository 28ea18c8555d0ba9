"""Golden output: ``thpsim run --json TRACE`` (model only) is byte-identical to the stored output, for every
scenario, series scenario, bundled demo trace and example, under the default design and ``--design lazy``.

The safety net for refactoring the model: any change in any observation of any step fails here, naming the
trace, the design, the first step that differs and how.

Storage (tests/golden/run/):
  ``MANIFEST.json``     per trace and design: sha256 of the whole stdout, exit status, stderr, storage mode
  ``<design>/<trace>.json.gz``   the whole stdout (small traces: the diff shows old and new step)
  ``<design>/<trace>.steps.gz``  one sha256 per step (the examples: their output is 10-150 MB; the test names
                                 the first differing step and prints the new one). These are ``slow``.

The CLI is called in-process (``thpsim.cli.main``), which writes exactly the bytes the command prints.
Regenerate after an intended behaviour change, then review ``git diff tests/golden/run/MANIFEST.json``:

    PYTHONPATH=src python3 tests/test_golden_run.py [--only PATTERN] [--skip-examples]
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "run"
MANIFEST = GOLDEN / "MANIFEST.json"
DESIGNS: tuple[tuple[str, tuple[str, ...]], ...] = (("upstream", ()), ("lazy", ("--design", "lazy")))
FULL_GLOBS = ("scenarios/*.jsonl", "scenarios/series/*.jsonl", "src/thpsim/data/*.jsonl")
STEP_GLOBS = ("examples/*.jsonl",)      # large outputs: per-step hashes only, slow


@dataclass(frozen=True)
class Case:
    trace: str          # path relative to the repository root, as passed on the command line
    design: str
    argv: tuple[str, ...]
    mode: str           # "full" | "steps"

    @property
    def key(self) -> str:
        return f"{self.design}:{self.trace}"

    @property
    def file(self) -> Path:
        name = self.trace.replace("/", "__")
        return GOLDEN / self.design / (name + (".json.gz" if self.mode == "full" else ".steps.gz"))


def cases() -> list[Case]:
    out = []
    for design, extra in DESIGNS:
        for globs, mode in ((FULL_GLOBS, "full"), (STEP_GLOBS, "steps")):
            for g in globs:
                for p in sorted(ROOT.glob(g)):
                    out.append(Case(str(p.relative_to(ROOT)), design, extra, mode))
    return out


def run_cli(case: Case) -> tuple[int, bytes, str]:
    """``thpsim run --json TRACE [--design D]`` from the repository root, in this process."""
    from thpsim import cli

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["run", "--json", case.trace, *case.argv])
    finally:
        os.chdir(cwd)
    return rc, out.getvalue().encode(), err.getvalue()


def step_hashes(stdout: bytes) -> list[str]:
    doc = json.loads(stdout)
    return [hashlib.sha256(json.dumps(s, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
            for s in doc["steps"]]


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def load_manifest() -> dict[str, Any]:
    if not MANIFEST.exists():
        return {"entries": {}}
    doc: dict[str, Any] = json.loads(MANIFEST.read_text())
    return doc


# ---- explaining a mismatch --------------------------------------------------------------------------------------
def _step_diff(old: Any, new: Any, i: int) -> str:
    a = json.dumps(old, indent=1).splitlines()
    b = json.dumps(new, indent=1).splitlines()
    return "\n".join(difflib.unified_diff(a, b, f"golden step {i}", f"now step {i}", lineterm="", n=2))


def explain_full(old: bytes, new: bytes) -> str:
    try:
        a, b = json.loads(old), json.loads(new)
    except ValueError:
        a = b = None
    if not isinstance(a, dict) or not isinstance(b, dict):
        lines = difflib.unified_diff(old.decode().splitlines(), new.decode().splitlines(), "golden", "now",
                                     lineterm="", n=2)
        return "\n".join(list(lines)[:80])
    msg = []
    for key in sorted(set(a) | set(b)):
        if key != "steps" and a.get(key) != b.get(key):
            msg.append(f"field {key!r}: golden {str(a.get(key))[:300]} | now {str(b.get(key))[:300]}")
    sa, sb = a.get("steps", []), b.get("steps", [])
    if len(sa) != len(sb):
        msg.append(f"{len(sa)} steps in the golden output, {len(sb)} now")
    bad = [i for i, (x, y) in enumerate(zip(sa, sb, strict=False)) if x != y]
    if bad:
        i = bad[0]
        msg.append(f"{len(bad)} step(s) differ, first: step {i} (trace line {sa[i].get('line')}, op "
                   f"{sa[i].get('op')}); all: {bad[:20]}{' ...' if len(bad) > 20 else ''}")
        msg.append(_step_diff(sa[i], sb[i], i))
    if not msg:     # same JSON, different bytes (formatting)
        lines = difflib.unified_diff(old.decode().splitlines(), new.decode().splitlines(), "golden", "now",
                                     lineterm="", n=1)
        msg.append("same JSON value, different bytes:\n" + "\n".join(list(lines)[:40]))
    return "\n".join(msg)


def explain_steps(old: list[str], new_stdout: bytes) -> str:
    doc = json.loads(new_stdout)
    new = step_hashes(new_stdout)
    if len(old) != len(new):
        return f"{len(old)} steps in the golden output, {len(new)} now"
    bad = [i for i, (x, y) in enumerate(zip(old, new, strict=True)) if x != y]
    if not bad:
        top = {k: v for k, v in doc.items() if k != "steps"}
        return f"every step is identical; a top-level field or the formatting differs; now: {str(top)[:2000]}"
    i = bad[0]
    s = doc["steps"][i]
    return (f"{len(bad)} step(s) differ, first: step {i} (trace line {s.get('line')}, op {s.get('op')}); all: "
            f"{bad[:20]}\nthe step now (the golden stores only hashes; step {i - 1} was identical):\n"
            + json.dumps(s, indent=1)[:6000])


def read_step_file(path: Path) -> tuple[str, list[str]]:
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    total = lines[0].split()[1]
    return total, [ln.split()[1] for ln in lines[1:]]


# ---- the test ---------------------------------------------------------------------------------------------------
_MANIFEST = load_manifest()


def _params() -> list[Any]:
    return [pytest.param(c, id=c.key, marks=[pytest.mark.slow] if c.mode == "steps" else [])
            for c in cases()]


@pytest.mark.parametrize("case", _params())
def test_run_json_is_golden(case: Case) -> None:
    entry = _MANIFEST["entries"].get(case.key)
    assert entry is not None and case.file.exists(), \
        f"no golden output for {case.key}; generate it: PYTHONPATH=src python3 tests/test_golden_run.py " \
        f"--only {case.trace}"
    rc, stdout, stderr = run_cli(case)
    if _sha(stdout) != entry["sha256"]:
        if case.mode == "full":
            why = explain_full(gzip.decompress(case.file.read_bytes()), stdout)
        else:
            why = explain_steps(read_step_file(case.file)[1], stdout)
        pytest.fail(f"thpsim run --json {case.trace} {' '.join(case.argv)}: output differs from the golden "
                    f"output\n{why}", pytrace=False)
    assert (rc, stderr) == (entry["rc"], entry["stderr"]), f"{case.key}: exit status / stderr changed"


def test_golden_covers_every_trace() -> None:
    """No stale entries: every manifest entry is a trace that still exists."""
    keys = {c.key for c in cases()}
    stale = sorted(set(_MANIFEST["entries"]) - keys)
    assert not stale, f"golden entries for traces that no longer exist: {stale}"


def test_mismatch_names_trace_step_and_diff() -> None:
    """The explanation a failing golden test gives: first differing step and a diff of it."""
    old = b'{"trace": "t", "steps": [{"step": 0, "result": 0}, {"step": 1, "result": 0}], "violations": []}'
    new = b'{"trace": "t", "steps": [{"step": 0, "result": 0}, {"step": 1, "result": "ENOMEM"}], "violations": []}'
    why = explain_full(old, new)
    assert "first: step 1" in why and '+ "result": "ENOMEM"' in why
    hashes = step_hashes(old)
    assert "first: step 1" in explain_steps(hashes, new)


# ---- regeneration -----------------------------------------------------------------------------------------------
def regenerate(only: str | None = None, skip_examples: bool = False) -> None:
    man = load_manifest()
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False).stdout.strip()
    except OSError:
        head = ""
    for c in cases():
        if (only and only not in c.trace) or (skip_examples and c.mode == "steps"):
            continue
        rc, stdout, stderr = run_cli(c)
        c.file.parent.mkdir(parents=True, exist_ok=True)
        if c.mode == "full":
            c.file.write_bytes(gzip.compress(stdout, compresslevel=9, mtime=0))
        else:
            text = f"total {_sha(stdout)}\n" + "".join(f"{i} {h}\n" for i, h in enumerate(step_hashes(stdout)))
            c.file.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
        old = man["entries"].get(c.key, {}).get("sha256")
        man["entries"][c.key] = {"sha256": _sha(stdout), "rc": rc, "stderr": stderr, "mode": c.mode,
                                 "bytes": len(stdout)}
        print(f"{'same   ' if old == _sha(stdout) else 'CHANGED' if old else 'new    '} {c.key}", file=sys.stderr)
    man["generated_from"] = head
    man["entries"] = dict(sorted(man["entries"].items()))
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    MANIFEST.write_text(json.dumps(man, indent=1) + "\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="regenerate the golden thpsim run --json outputs")
    ap.add_argument("--only", help="only traces whose path contains this")
    ap.add_argument("--skip-examples", action="store_true", help="skip the (slow) examples/")
    a = ap.parse_args()
    regenerate(a.only, a.skip_examples)
