"""Data-contract violations as records (thpsim.observation.ContractViolation): the text of each rule is what the
shadow check printed before it made records, and the record survives the JSON stream (``thpsim live --jsonl``,
parsed back by lab/remote.py) unchanged; a corrupt one is a one-line error."""

from __future__ import annotations

import json

import pytest

from thpsim.analysis.review import zap_skip, zap_skip_trace
from thpsim.errors import ThpsimError
from thpsim.lab.remote import parse_jsonl
from thpsim.live.env import LiveEnv
from thpsim.model.engine import Simulator, make_kernel, run_model
from thpsim.model.page_alloc import FailPolicy
from thpsim.model.shadow import compare
from thpsim.observation import ContractRule, ContractViolation, StepObs, StepViolation, from_dict, to_dict
from thpsim.trace.format import parse

K, M, G = 1 << 10, 1 << 20, 1 << 30


def _old_fmt(off: int) -> str:
    """shadow._fmt as it was when violations were strings."""
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if off and off % m == 0:
            return f"{off // m}{unit}"
    return f"{off:#x}"


def _old_text(proc: str, lo: int, hi: int, why: str, kind: str) -> str:
    """shadow.compare()'s report text as it was (f"{mm.name}: [{lo}, {hi}): {why} but the page {kind}")."""
    return f"{proc}: [{_old_fmt(lo)}, {_old_fmt(hi)}): {why} but the page {kind}"


@pytest.mark.parametrize("rule, kind", [(ContractRule.STILL_HOLDS_DATA, "still holds data"),
                                        (ContractRule.LOST_ITS_DATA, "lost its data"),
                                        (ContractRule.HOLDS_DIFFERENT_DATA, "holds different data")])
@pytest.mark.parametrize("proc, lo, hi, why", [
    ("main", 4 * K, 8 * K, "MADV_DONTNEED returned 0"),
    ("c1", 0, 2 * M, "write"),
    ("child.2-x", 2 * M + 4 * K, G, "MADV_DONTNEED returned ENOMEM (hole)"),
    ("main", 0x1800, 3 * G, "mremap to a fixed destination"),
    ("main", 12 * K, 16 * K, "the trace"),
])
def test_text_is_the_old_text_and_parses_back(rule: ContractRule, kind: str, proc: str, lo: int, hi: int,
                                              why: str) -> None:
    v = ContractViolation(proc, lo, hi, rule, why)
    assert str(v) == _old_text(proc, lo, hi, why, kind)
    assert ContractViolation.parse(str(v)) == v
    assert str(StepViolation(3, 5, v)) == f"step 3 (line 5): {_old_text(proc, lo, hi, why, kind)}"


TRACE = """{"thpsim": 1, "name": "cv"}
{"op": "mmap", "id": "a", "len": "16K"}
{"op": "write", "id": "a"}
"""


def test_shadow_compare_makes_each_rule() -> None:
    """Tamper with the shadow state so that each rule is broken once; compare() reports records whose text is
    the old text."""
    sim = Simulator(make_kernel(), shadow=True)
    for i, op in enumerate(parse(TRACE).ops):
        assert sim.step(i, op).violations == ()
    sh, base = sim.shadow, sim.base
    assert sh is not None
    mm = sim.k.procs["main"]
    pages = sorted(sh.proc("main"))
    del sh.proc("main")[pages[0]]                                         # model has data, contract says zero
    sh.write("main", pages[1], (0x55, ()), "write")                       # both data, different
    sh.write("main", pages[3] + 8 * sim.k.page, (0x66, ()), "mremap grow")   # contract data, model zero
    got = compare(sim.k, mm, sh, base)
    off = pages[0] - base
    assert [(v.rule, v.start - off, v.end - off) for v in got] == [
        (ContractRule.STILL_HOLDS_DATA, 0, 4 * K), (ContractRule.HOLDS_DIFFERENT_DATA, 4 * K, 8 * K),
        (ContractRule.LOST_ITS_DATA, 44 * K, 48 * K)]
    assert [str(v) for v in got] == [
        _old_text("main", off, off + 4 * K, "write", "still holds data"),
        _old_text("main", off + 4 * K, off + 8 * K, "write", "holds different data"),
        _old_text("main", off + 44 * K, off + 48 * K, "mremap grow", "lost its data")]


def test_model_run_keeps_records_and_prints_old_text() -> None:
    row = zap_skip("lazy")
    assert row.numbers["pages_not_zeroed"] == 1 and zap_skip("upstream").numbers["pages_not_zeroed"] == 0
    run = run_model(zap_skip_trace(), design="lazy", shadow=True,
                    policy=FailPolicy(fail_nth=1, fail_site="pte_alloc_one@split"))
    assert run.contract_violations and all(isinstance(v, StepViolation) for v in run.contract_violations)
    first = run.contract_violations[0]
    assert first.violation.rule is ContractRule.STILL_HOLDS_DATA
    assert (first.violation.start, first.violation.end) == (4 * K, 8 * K)
    assert run.violations[0] == (f"step {first.step} (line {first.line}): main: [4K, 8K): MADV_DONTNEED "
                                 "returned 0 but the page still holds data")
    assert to_dict(run.steps[first.step])["violations"][0] == str(first.violation)


ENV = LiveEnv(kernel_release="6.18.0", arch="x86_64", thp_available=True, is_root=False, thp_enabled="madvise",
              thp_defrag="madvise", use_zero_page=True, shmem_enabled="never", mthp_enabled=(), khugepaged=(),
              swap_present=False, config=(), pgtable_levels_runtime=4, has_split_pmd_failed=True,
              huge_zero_allocated=False, pagemap_scan=True, unsupported=())


def _stream(steps: list[dict]) -> str:
    from thpsim.lab.remote import env_to_dict

    return json.dumps({"env": env_to_dict(ENV)}) + "\n" + json.dumps({"path": "t.jsonl", "steps": steps}) + "\n"


def test_round_trip_through_the_json_stream() -> None:
    v = ContractViolation("main", 4 * K, 8 * K, ContractRule.STILL_HOLDS_DATA, "MADV_DONTNEED returned 0")
    w = ContractViolation("c1", 0x1800, 2 * M, ContractRule.HOLDS_DIFFERENT_DATA, "write")
    obs = StepObs(step=3, line=5, op="madvise", proc="main", result=0, violations=(v, w))
    d = to_dict(obs)
    assert d["violations"] == [str(v), str(w)]                  # serialised as the text, as before
    assert from_dict(json.loads(json.dumps(d))) == obs
    batch = parse_jsonl(_stream([d]), "host", "live run")
    assert batch.get("t.jsonl").steps == (obs,)
    assert json.dumps(to_dict(batch.get("t.jsonl").steps[0])) == json.dumps(d)


@pytest.mark.parametrize("bad", ["main: [4K, 8K): write but the page is purple", "main [4K, 8K): x but the page "
                                 "lost its data", "main: [4K, 3X): write but the page lost its data",
                                 "main: [4096, 8K): write but the page lost its data", 7])
def test_a_corrupt_record_in_the_stream_is_one_line(bad: object) -> None:
    d = to_dict(StepObs(step=0, line=2, op="write", proc="main", result=0))
    d["violations"] = [bad]
    with pytest.raises(ThpsimError) as ei:
        parse_jsonl(_stream([d]), "host", "live run")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("live run:2: not a thpsim live record") and "data-contract" in msg
