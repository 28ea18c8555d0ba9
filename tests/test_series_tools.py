"""The series tools: design comparison, the series' selftests (TAP), exhaustive campaigns, the review table."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from thpsim.analysis.campaign import exhaustive, format_campaign
from thpsim.analysis.compare import compare_trace, format_comparison
from thpsim.analysis.review import PROBLEMS, format_review, review_table
from thpsim.analysis.selftest import NAMES, format_tap, run_selftests, selftest_trace
from thpsim.model.design import VARIANTS
from thpsim.trace.format import parse


def thps_trace(n: int, size: int):  # noqa: ANN201
    ops = [{"thpsim": 1, "name": f"{n}-thps"}, {"op": "mmap", "id": "a", "len": n * size},
           {"op": "madvise", "id": "a", "advice": "hugepage"}, {"op": "write", "id": "a", "stride": size},
           {"op": "munmap", "id": "a"}]
    return parse("\n".join(json.dumps(o) for o in ops))


@pytest.mark.parametrize("n", [1, 7])
def test_compare_saves_one_table_per_thp_on_x86(n: int) -> None:
    c = compare_trace(thps_trace(n, 2 << 20))
    assert c.saved_peak_bytes == n * 4096 and c.saved_final_bytes == 0
    assert c.saved_peak_nr_pagetable_bytes == n * 4096
    up, lz = c.by_design("upstream"), c.by_design("lazy")
    assert up.table_allocs == n and lz.table_allocs == 0 and up.deposits and not lz.deposits
    json.dumps(asdict(c))
    text = format_comparison(c)
    assert f"peak {n * 4096} B" in text and "pgtables_bytes peak" in text


def test_compare_arch_rule_overrides_design() -> None:
    c = compare_trace(thps_trace(3, 16 << 20), arch="ppc64-hash")
    assert c.saved_peak_bytes == 0 and c.saved_final_bytes == 0
    assert all(d.deposits and d.table_allocs == 3 for d in c.designs)


def test_compare_is_deterministic_and_reports_failures() -> None:
    from thpsim.model.page_alloc import FailPolicy

    t = selftest_trace("partial_madv_dontneed")
    p = FailPolicy(fail_nth=1, fail_site="pte_alloc_one@split")
    a = compare_trace(t, designs=("upstream", "lazy", "lazy-zap-enomem"), policy=p)
    assert a == compare_trace(t, designs=("upstream", "lazy", "lazy-zap-enomem"), policy=p)
    lz = a.by_design("lazy")
    assert lz.split_failures == 1 and lz.failed_split_sites == {"zap_pmd_range": 1}
    assert lz.alloc_failures_by_site == {"pte_alloc_one@split": 1} and lz.violations
    assert "ENOMEM" in a.by_design("lazy-zap-enomem").results


def test_selftests_tap_pass() -> None:
    tap = format_tap(run_selftests("lazy"))
    lines = tap.splitlines()
    assert lines[:2] == ["TAP version 13", "1..5"]
    for i, n in enumerate(NAMES, 1):
        assert f"ok {i} {n}" in lines
    assert "# thp_split_pmd: 0 -> 1" in lines and "# thp_split_pmd: 4 -> 5" in lines
    assert lines.count("# thp_split_pmd_failed: 0 -> 0") == 5
    assert "# split in __split_vma -> vma_adjust_trans_huge (munmap(A+P, P))" in lines
    assert "# split in zap_pmd_range -> __split_huge_pmd (madvise(A+P, P, MADV_DONTNEED))" in lines
    assert lines[-1] == "# Totals: pass:5 fail:0 xfail:0 xpass:0 skip:0 error:0"


def test_selftests_inject() -> None:
    res = {r.name: r for r in run_selftests("lazy", inject=True)}
    assert res["partial_munmap"].status == "fail" and res["partial_mprotect"].status == "fail"
    assert res["partial_mlock"].status == "skip" and "ENOMEM" in res["partial_mlock"].reason
    assert res["partial_mremap"].status == "fail"
    md = res["partial_madv_dontneed"]
    bad = [c.name for c in md.checks if not c.ok]
    assert md.status == "fail" and any("zero check" in b for b in bad) and any("counter check" in b for b in bad)
    tap = format_tap(list(res.values()))
    assert "not ok 5 partial_madv_dontneed" in tap and "ok 3 partial_mlock # SKIP" in tap
    assert tap.splitlines()[-1] == "# Totals: pass:0 fail:4 xfail:0 xpass:0 skip:1 error:0"
    assert all(r.status == "pass" for r in run_selftests("upstream", inject=True))


def test_campaign_over_the_five_selftests() -> None:
    for name in NAMES:
        t = selftest_trace(name)
        r = exhaustive(t, workers=1)
        assert not r.invariant_violations, name
        assert r.points and all(p.injected for p in r.points)
        split = [p for p in r.points if p.point.site == "pte_alloc_one@split"]
        assert len(split) == 1, name
        text = format_campaign(r)
        assert "0 invariant violations" in text
        if name == "partial_madv_dontneed":
            assert split[0].result == 0 and split[0].violations
            assert "MADV_DONTNEED returned 0 but the page still holds data" in split[0].violations[0]
        else:
            assert split[0].result == "ENOMEM" and not split[0].violations


def test_campaign_modes_and_pool_agree() -> None:
    t = selftest_trace("partial_madv_dontneed")
    a = exhaustive(t, workers=1)
    assert exhaustive(t, workers=1, mode="checkpoint").points == a.points
    assert exhaustive(t, workers=2).points == a.points
    only = exhaustive(t, workers=1, sites=("pte_alloc_one",))
    assert [p.point.site for p in only.points] == ["pte_alloc_one@split"]
    assert format_campaign(a) == format_campaign(exhaustive(t, workers=1))


def test_review_table() -> None:
    rows = review_table(("lazy", *VARIANTS), n=8, reserve_pages=4)
    assert len(rows) == len(PROBLEMS) * (1 + len(VARIANTS))
    by = {(r.problem, r.design): r for r in rows}
    assert by[("zap-skip", "lazy")].result == 0 and by[("zap-skip", "lazy-zap-enomem")].result == "ENOMEM"
    assert by[("mprotect-retry", "lazy")].result == "LIVELOCK"
    assert by[("mprotect-retry", "lazy-mprotect-upfront")].result == "ENOMEM"
    h = by[("hugh-reclaim", "lazy")].numbers
    assert h["failed_at_alloc"] == 5 and h["reserve_used_after"] == 4
    assert by[("hugh-reclaim", "lazy-reclaim-pool")].result == 1     # the pool covers 8 tables
    assert all(by[("must-check", d)].numbers["unchecked"] == 0 for d in ("lazy", *VARIANTS))
    text = format_review(rows)
    assert "zap-skip" in text and "hugh-reclaim" in text
