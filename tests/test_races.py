"""thpsim races: exhaustive interleavings of the split's lock boundaries (issue 9, "race exploration").

    0 ------- 1M ------- 2M ------------ 4M
    |<- A splits the VMA at 1M ->|            thread A: __split_vma (mmap_write_lock held)
    |<- B faults a THP at 0 ---->|            thread B: per-VMA-lock fault, PMD [0, 2M) none before

v3 02/24 runs vma_adjust_trans_huge before vma_start_write: B's fault can land between them, and the THP then
straddles the new VMA boundary. Upstream write-locks the VMA first.
"""

from __future__ import annotations

import json

import pytest

from thpsim.analysis import races
from thpsim.cli import main
from thpsim.errors import ThpsimError


def test_v3_02_window_lets_a_vma_lock_fault_straddle_the_split() -> None:
    lazy = races.explore("split-vma-vs-vma-lock-fault", "lazy")
    assert len(lazy.findings) == 1
    f = lazy.findings[0]
    assert any("not inside one VMA" in b for b in f.broken)
    assert f.steps.index("A: vma_adjust_trans_huge") < f.steps.index(
        "B: handle_mm_fault (do_huge_pmd_anonymous_page)") < f.steps.index("A: vma_start_write")
    up = races.explore("split-vma-vs-vma-lock-fault", "upstream")
    assert up.findings == () and up.interleavings < lazy.interleavings       # the write lock orders them
    # the fix (write-lock first, as upstream) closes it
    fixed = races.explore("split-vma-vs-vma-lock-fault", "lazy-vma-lock-first")
    assert fixed.findings == () and fixed.interleavings == up.interleavings
    # the finding replays, under lazy only
    steps, broken = races.replay("split-vma-vs-vma-lock-fault", "lazy", f.schedule)
    assert steps == f.steps and broken == f.broken


@pytest.mark.parametrize("name", ["split-alloc-vs-zap", "split-vs-split", "fork-vs-vma-lock-fault",
                                  "collapse-vs-zap"])
@pytest.mark.parametrize("design", ["upstream", "lazy"])
def test_other_scenarios_hold_their_invariants(name: str, design: str) -> None:
    r = races.explore(name, design)
    assert r.findings == () and r.interleavings >= 7 and r.states > r.final_states


def test_the_checker_catches_a_broken_final_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zap that forgets to split a partial huge PMD leaves the data: the exploration must report it."""
    from thpsim.model import memory

    monkeypatch.setattr(memory, "zap_pmd_range", lambda *a, **kw: 0)
    r = races.explore("collapse-vs-zap", "lazy")
    assert r.findings and all("old data" in " ".join(f.broken) for f in r.findings)


def test_lazy_split_frees_the_unused_table_when_the_pmd_went_away() -> None:
    """split-alloc-vs-zap: A allocates its table, B zaps the whole PMD, A's re-check frees the table (no leak,
    which invariants.check's NR_PAGETABLE balance would report)."""
    steps, broken = races.replay("split-alloc-vs-zap", "lazy", ("A", "A", "B", "B", "B"))
    assert broken == ()
    assert steps[1:5] == ("A: __split_huge_pmd: pte_alloc_one (before the PMD lock)", "B: lock_vma_under_rcu",
                          "B: zap_pmd_range (zap_huge_pmd)", "B: vma_end_read")


def test_replay_errors_are_one_line() -> None:
    with pytest.raises(ThpsimError, match="thread B is blocked at handle_mm_fault"):
        races.replay("split-vma-vs-vma-lock-fault", "upstream", ("A", "A", "B", "B"))
    with pytest.raises(ThpsimError, match="scenario split-vs-split has A, B"):
        races.replay("split-vs-split", "lazy", ("C",))
    with pytest.raises(ThpsimError, match="unknown race scenario 'nope'"):
        races.explore("nope")


def test_cli_table_json_and_replay(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["races", "--scenario", "split-vma-vs-vma-lock-fault"]) == 0
    out = capsys.readouterr().out
    assert "--replay A,A,B,B,B,A,A,A" in out and "not inside one VMA" in out
    assert main(["races", "--scenario", "split-vs-split", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["design"], r["interleavings"], r["findings"]) for r in rows] == [("upstream", 252, []),
                                                                              ("lazy", 252, [])]
    assert main(["races", "--scenario", "split-vma-vs-vma-lock-fault", "--designs", "lazy",
                 "--replay", "A,A,B,B,B,A,A,A"]) == 1
    assert "BROKEN: main: huge PMD" in capsys.readouterr().out
    assert main(["races", "--replay", "A"]) == 2
    assert "exactly one --scenario" in capsys.readouterr().err


def test_deterministic() -> None:
    a = races.explore("split-vs-split", "lazy")
    b = races.explore("split-vs-split", "lazy")
    assert a == b
