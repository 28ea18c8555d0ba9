"""The ``expect`` fields of every bundled trace hold on the model, and a wrong expectation is reported."""

from __future__ import annotations

import glob
import os

import pytest

from thpsim.analysis.expect import check_expectations
from thpsim.cli import main
from thpsim.errors import TraceError
from thpsim.model.engine import run_model
from thpsim.trace import format as tf

ROOT = os.path.dirname(os.path.dirname(__file__))
CASES = [(p, "upstream") for p in sorted(glob.glob(os.path.join(ROOT, "scenarios", "*.jsonl")))] + \
        [(p, "lazy") for p in sorted(glob.glob(os.path.join(ROOT, "scenarios", "series", "*.jsonl")))]


def test_scenarios_carry_expectations() -> None:
    n = sum(len(o.expect) > 0 for p, _d in CASES for o in tf.load(p).ops)
    assert n >= 150


@pytest.mark.parametrize("path,design", CASES, ids=[os.path.basename(p)[:-6] for p, _d in CASES])
def test_expectations_hold_on_the_model(path: str, design: str) -> None:
    t = tf.load(path)
    assert check_expectations(t, run_model(t, design=design, observe="status").steps, design) == []


TRACE = "\n".join([
    '{"op": "mmap", "id": "a", "len": "2M"}',
    '{"op": "madvise", "id": "a", "advice": "hugepage"}',
    '{"op": "write", "id": "a", "len": "4K", "expect": {"vm_pte_kb": 12, "rss_anon_kb": 2048, "thp_fault_alloc": 1,'
    ' "lazy": {"vm_pte_kb": 8}}}',
    '{"op": "munmap", "id": "a", "off": "4K", "len": "4K", "expect": {"result": 0, "thp_split_pmd": 1}}',
])


def test_design_specific_and_step_delta_expectations() -> None:
    t = tf.parse(TRACE)
    for d in ("upstream", "lazy"):
        assert check_expectations(t, run_model(t, design=d).steps, d) == [], d
    bad = tf.parse(TRACE.replace('"vm_pte_kb": 12', '"vm_pte_kb": 16'))
    msgs = check_expectations(bad, run_model(bad).steps)
    assert len(msgs) == 1 and "vm_pte_kb: expected 16, got 12" in msgs[0]


def test_host_noise_counters_are_not_checked() -> None:
    """A live run on a busy host: a thp_* counter other processes moved cannot be held to the trace's value."""
    bad = tf.parse(TRACE.replace('"thp_split_pmd": 1', '"thp_split_pmd": 2'))
    steps = run_model(bad).steps
    assert len(check_expectations(bad, steps)) == 1
    assert check_expectations(bad, steps, host_noise={"thp_split_pmd": 31}) == []
    worse = tf.parse(TRACE.replace('"thp_split_pmd": 1', '"thp_split_pmd": 2').replace('"vm_pte_kb": 12',
                                                                                         '"vm_pte_kb": 16'))
    assert len(check_expectations(worse, run_model(worse).steps, host_noise={"thp_split_pmd": 31})) == 1


def test_unknown_expectation_key_is_a_trace_error() -> None:
    t = tf.parse('{"op": "mmap", "len": "2M", "expect": {"bogus": 1}}')
    with pytest.raises(TraceError, match="unknown expectation 'bogus'"):
        check_expectations(t, run_model(t).steps)


def test_run_exits_1_on_an_unmet_expectation(tmp_path: os.PathLike[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    p = os.path.join(str(tmp_path), "t.jsonl")
    with open(p, "w") as f:
        f.write(TRACE.replace('"thp_split_pmd": 1', '"thp_split_pmd": 2'))
    assert main(["run", p, "--brief"]) == 1
    assert "expectation not met" in capsys.readouterr().err
