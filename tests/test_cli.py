"""The command line: every command's --json is valid JSON, bad input is one line on stderr with exit 2, and
the demo works from the installed package data."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from thpsim.cli import main
from thpsim.live.env import skip_reason

ROOT = os.path.dirname(os.path.dirname(__file__))
SCEN = os.path.join(ROOT, "scenarios")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "run", os.path.join(SCEN, "fault-thp-2m.jsonl"), "--json", "--check")
    assert rc == 0
    d = json.loads(out)
    assert d["design"] == "upstream" and d["steps"]
    last = d["steps"][-1]
    assert "procs" in last and "vmstat" in last


def test_run_text_shows_deposit(capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]) -> None:
    t = os.path.join(str(tmp_path), "t.jsonl")
    with open(t, "w") as f:
        f.write('{"op": "mmap", "id": "a", "len": "2M"}\n{"op": "madvise", "id": "a", "advice": "hugepage"}\n'
                '{"op": "write", "id": "a", "len": "4K"}\n')
    rc, out, _ = run_cli(capsys, "run", t)
    assert rc == 0
    assert "main: pte 12 rss 2048 ahp 2048" in out      # PUD + PMD + deposited PTE table
    rc, out, _ = run_cli(capsys, "run", t, "--design", "lazy")
    assert "main: pte 8 rss 2048 ahp 2048" in out        # no deposit


@pytest.mark.parametrize("content,needle", [
    ('{"op": "mmap", "len": "4Q"}\n', "trace.jsonl:1: field 'len'"),
    ('{"op": "mmap", "len": "2M"\n', "trace.jsonl:1: not valid JSON"),
    ('{"op": "mmap", "len": "2M"}\n{"op": "munmap", "id": "nope"}\n', "trace.jsonl:2: field 'id': unknown region"),
    ('{"op": "frobnicate"}\n', "field 'op': unknown op 'frobnicate'"),
    ('{"op": "write", "proc": "child", "at": 0, "len": "4K"}\n', "process 'child' does not exist"),
])
def test_bad_trace_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str], content: str,
                               needle: str) -> None:
    t = os.path.join(str(tmp_path), "trace.jsonl")
    with open(t, "w") as f:
        f.write(content)
    rc, out, err = run_cli(capsys, "run", t)
    assert rc == 2
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_missing_file_and_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "run", "/nonexistent/trace.jsonl")
    assert rc == 2 and "cannot read the trace" in err
    rc, _, err = run_cli(capsys, "run", os.path.join(SCEN, "fault-thp-2m.jsonl"), "--design", "nope")
    assert rc == 2 and "unknown design 'nope'" in err
    rc, _, err = run_cli(capsys, "run", os.path.join(SCEN, "fault-thp-2m.jsonl"), "--knob", "bogus=1")
    assert rc == 2 and "unknown kernel knob 'bogus'" in err


def test_generate_is_deterministic(capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]) -> None:
    a, b = (os.path.join(str(tmp_path), n) for n in ("a.jsonl", "b.jsonl"))
    assert run_cli(capsys, "generate", "buffer-pool", "--seed", "3", "--size", "16M", "-o", a)[0] == 0
    assert run_cli(capsys, "generate", "buffer-pool", "--seed", "3", "--size", "16M", "-o", b)[0] == 0
    with open(a) as fa, open(b) as fb:
        assert fa.read() == fb.read()
    rc, out, _ = run_cli(capsys, "validate", a, "--json")
    assert rc == 0 and json.loads(out)["ops"] > 10


def test_same_trace_same_output(capsys: pytest.CaptureFixture[str]) -> None:
    t = os.path.join(ROOT, "src", "thpsim", "data", "demo-redis-bgsave.jsonl")
    outs = [run_cli(capsys, "run", t, "--json", "--design", "lazy", "--fail-prob", "0.2", "--seed", "5")[1]
            for _ in range(2)]
    assert outs[0] == outs[1]


def test_demo_without_live(capsys: pytest.CaptureFixture[str], tmp_path: os.PathLike[str]) -> None:
    rc, out, _ = run_cli(capsys, "demo", "--no-live", "-o", str(tmp_path), "--json")
    assert rc == 0
    d = json.loads(out)
    assert len(d["workloads"]) == 2
    for w in d["workloads"]:
        assert w["upstream_peak_kb"] > w["lazy_peak_kb"] > 0
    with open(d["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.live
@pytest.mark.skipif(skip_reason() is not None, reason=f"live kernel THP not usable: {skip_reason()}")
def test_diff_command_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "diff", os.path.join(SCEN, "fault-thp-2m.jsonl"), "--json")
    assert rc == 0, out
    r = json.loads(out)["results"][0]
    # a busy host moves host-wide thp_* counters (cgroup v1: none are the trace's own); the diff flags those
    # and nothing else may differ (tests/test_model_more.py checks the flagging itself)
    assert r["identical"] or r["identical_but_host_noise"], r


@pytest.mark.live
@pytest.mark.skipif(skip_reason() is not None, reason=f"live kernel THP not usable: {skip_reason()}")
def test_selftest_live_tap(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "selftest", "--live")
    assert out.startswith("TAP version 13") and "1..5" in out
    assert "# Totals: pass:5 fail:0" in out, out
    assert rc == 0


def test_console_script_installed() -> None:
    r = subprocess.run([sys.executable, "-m", "thpsim.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("thpsim ")


@pytest.mark.parametrize("argv", [["report", "scenarios/cold-partial.jsonl", "-o", "/proc/no/such/r.html"],
                                  ["generate", "fork-snapshot", "--seed", "1", "-o", "/proc/no/such/t.jsonl"]])
def test_unwritable_output_is_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/proc/no/such/" in err and "Traceback" not in err


def test_budget_is_counted_in_the_arch_pages() -> None:
    import argparse

    from thpsim.cli import _policy

    for arch, pages in (("x86_64", 16384), ("arm64-64k", 1024), ("arm64-16k", 4096)):
        pol = _policy(argparse.Namespace(arch=arch, budget="64M", reserves="1M"))
        assert (pol.budget_pages, pol.reserve_pages) == (pages, (1 << 20) // ((64 << 20) // pages)), arch


# ---- shared options (thpsim.cli.options) --------------------------------------------------------------------------
def _option_actions() -> dict[str, list[tuple[str, argparse.Action]]]:
    """Every option of every command (lab's subcommands too): flag -> [(command, action)]."""
    from thpsim.cli import build_parser

    found: dict[str, list[tuple[str, argparse.Action]]] = {}

    def walk(p: argparse.ArgumentParser, name: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, sp in a.choices.items():
                    walk(sp, f"{name} {sub}".strip())
            for flag in a.option_strings or [a.dest]:
                found.setdefault(flag, []).append((name, a))

    walk(build_parser(), "")
    return found


# the documented exceptions (thpsim.cli.options' header): a per-command default kept as users know it
_OWN_DEFAULT = {("selftest", "--design"): "lazy", ("campaign", "--design"): "lazy", ("record", "--touch"): "perf"}
# the same flag naming another option of one command, not the shared one
_OTHER_OPTION = {("review", "--reserves"), ("generate", "--seed"), ("selftest", "--inject"), ("record", "--output"),
                 ("demo", "--output"), ("report", "--output"), ("snapshot", "--output")}


def test_shared_options_have_one_default() -> None:
    from thpsim.cli.options import SHARED

    actions = _option_actions()
    for opt in SHARED:
        flag = opt.flags[-1] if opt.flags[-1].startswith("--") else opt.flags[0]
        users = [(cmd, a) for cmd, a in actions.get(flag, []) if (cmd, flag) not in _OTHER_OPTION]
        assert users, f"{flag} is declared in options.py but no command uses it"
        for cmd, a in users:
            want = _OWN_DEFAULT.get((cmd, flag), opt.default)
            assert a.default == want, f"thpsim {cmd} {flag}: default {a.default!r}, shared default {want!r}"
            assert a.type is opt.kwargs.get("type") and a.choices == opt.kwargs.get("choices"), (cmd, flag)
    for (cmd, flag) in _OWN_DEFAULT.keys() | _OTHER_OPTION:
        assert any(c == cmd for c, _ in actions[flag]), f"stale exception: thpsim {cmd} has no {flag}"


def test_every_command_has_json() -> None:
    from thpsim.cli import COMMANDS

    cmds = {c for c, _ in _option_actions()["--json"]}
    assert {c.name for c in COMMANDS} <= cmds and {"lab build", "lab list", "lab run"} <= cmds


@pytest.mark.parametrize("argv,what,registry", [
    (["run", "t.jsonl", "--design", "nope"], "design", "DESIGNS"),
    (["diff", "t.jsonl", "--design", "nope"], "design", "DESIGNS"),
    (["selftest", "--design", "nope"], "design", "DESIGNS"),
    (["campaign", "t.jsonl", "--design", "nope"], "design", "DESIGNS"),
    (["compare", "t.jsonl", "--designs", "upstream,nope"], "design", "DESIGNS"),
    (["run", "t.jsonl", "--arch", "vax"], "arch", "ARCHES"),
    (["report", "t.jsonl", "--arch", "vax"], "arch", "ARCHES"),
    (["diff", "t.jsonl", "--inject", "nope"], "injection point", "INJECT_POINTS"),
    (["live", "t.jsonl", "--kernel", "nope"], "lab kernel", "KERNELS"),
    (["lab", "build", "nope"], "lab kernel", "KERNELS"),
])
def test_unknown_registry_name_is_argparse_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], what: str,
                                                    registry: str) -> None:
    from thpsim.lab.kernels import KERNELS
    from thpsim.model.arch import ARCHES
    from thpsim.model.design import DESIGNS
    from thpsim.model.page_alloc import INJECT_POINTS

    names = {"DESIGNS": DESIGNS, "ARCHES": ARCHES, "INJECT_POINTS": INJECT_POINTS, "KERNELS": KERNELS}[registry]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    line = err.strip()
    assert "Traceback" not in err and f"unknown {what} " in line and "choose one of: " in line, err
    listed = line.split("choose one of: ")[1].split(" (see ")[0].split(", ")
    assert all(n in listed for n in names), line


def test_record_json_with_samples(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: os.PathLike[str]) -> None:
    """issue 12: `thpsim record --json` once raised TypeError (len() of the sample count) when samples were taken."""
    import thpsim.trace.record as rec

    def fake_record(cmd: list[str], out: str, **kw: object) -> rec.RecordResult:
        return rec.RecordResult(trace_path=out, result=None, returncode=0,  # type: ignore[arg-type]
                                vmpte_path=out + ".vmpte.json", samples=7)

    monkeypatch.setattr(rec, "record", fake_record)
    t = os.path.join(str(tmp_path), "t.jsonl")
    rc, out, err = run_cli(capsys, "record", "--json", "-o", t, "--", "true")
    assert rc == 0 and json.loads(out) == {"trace": t, "returncode": 0, "vmpte": t + ".vmpte.json", "samples": 7}


def test_package_entry_points() -> None:
    for argv in (["-m", "thpsim", "--version"], ["-m", "thpsim.cli", "--version"]):
        r = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.startswith("thpsim "), argv
