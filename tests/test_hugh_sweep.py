"""thpsim review hugh: Hugh's reclaim case over N × reserves × free memory (issue 9, "Hugh's objection,
quantified"). One THP mapped by N processes is reclaimed to swap:

    main ─fork─> c1 ... c(N-1)          every process maps the THP by a PMD; reclaim's rmap walk visits N VMAs,
                                        and under lazy each try_to_unmap_one call allocates its PTE table
"""

from __future__ import annotations

import json

import pytest

from thpsim.analysis import hugh
from thpsim.analysis.plots import render
from thpsim.cli import main

GRID = dict(designs=("upstream", "lazy", "lazy-reclaim-pool", "lazy-pmd-swap"), ns=(1, 8), reserves=(0, 4, 16),
            headroom=(0, 32), fragmentation=(0.0, 1.0))


@pytest.fixture(scope="module")
def cells() -> list[hugh.HughCell]:
    return hugh.hugh_sweep(**GRID)  # type: ignore[arg-type]


def _cell(cells: list[hugh.HughCell], design: str, n: int, r: int, h: int = 0, frag: float = 0.0) -> hugh.HughCell:
    return next(c for c in cells if (c.design, c.n, c.reserve_pages, c.headroom_pages, c.fragmentation)
                == (design, n, r, h, frag))


def test_upstream_always_swaps_without_a_table(cells: list[hugh.HughCell]) -> None:
    up = [c for c in cells if c.design == "upstream"]
    assert len(up) == 2 * 3 * 2 * 2
    assert all(c.swapped and c.table_allocs == 0 and c.pages_freed == 512 and c.reserve_used == 0 for c in up)


def test_lazy_needs_one_table_per_mapping_from_the_reserves(cells: list[hugh.HughCell]) -> None:
    # no free page and no reserve: the first table fails, nothing is freed
    c = _cell(cells, "lazy", 1, 0)
    assert (c.swapped, c.failed_at, c.pages_freed) == (False, 1, 0)
    # 8 mappings, 4 reserve pages: call #5 finds no table; 4 reserve pages stay consumed, net -4 (Hugh's k-1)
    c = _cell(cells, "lazy", 8, 4)
    assert (c.swapped, c.failed_at, c.reserve_used, c.pages_freed) == (False, 5, 4, -4)
    # enough reserves: swapped, and the 8 tables are what it cost
    c = _cell(cells, "lazy", 8, 16)
    assert c.swapped and c.table_allocs == 8 and c.pages_freed == 512 - 8
    # free memory first: with 32 free pages no reserve is touched
    c = _cell(cells, "lazy", 8, 0, 32)
    assert c.swapped and c.reserve_used == 0 and c.pages_freed == 512 - 8


def test_pmd_swap_needs_no_table_unless_the_swap_is_fragmented(cells: list[hugh.HughCell]) -> None:
    """lazy-pmd-swap: with a whole free swap cluster every mapping becomes a PMD swap entry (no table, even with
    no free page and no reserve); on a fragmented device the folio is split first and it is lazy again."""
    assert all(c.swapped and c.table_allocs == 0 and c.pages_freed == 512
               for c in cells if c.design == "lazy-pmd-swap" and c.fragmentation == 0.0)
    frag = {(c.n, c.reserve_pages, c.headroom_pages): (c.swapped, c.failed_at, c.pages_freed)
            for c in cells if c.design == "lazy-pmd-swap" and c.fragmentation == 1.0}
    lazy = {(c.n, c.reserve_pages, c.headroom_pages): (c.swapped, c.failed_at, c.pages_freed)
            for c in cells if c.design == "lazy" and c.fragmentation == 1.0}
    assert frag == lazy and frag[(8, 4, 0)] == (False, 5, -4)


def test_the_pool_covers_small_n_without_reserves(cells: list[hugh.HughCell]) -> None:
    c = _cell(cells, "lazy-reclaim-pool", 8, 0)
    assert c.swapped and c.reserve_used == 0


def test_the_pool_gives_the_same_cells_as_one_process(cells: list[hugh.HughCell]) -> None:
    assert hugh.hugh_sweep(**GRID, workers=1) == cells  # type: ignore[arg-type]


def test_every_cell_keeps_the_invariants_and_renders(cells: list[hugh.HughCell]) -> None:
    assert all(c.invariant_violations == 0 for c in cells)
    text = hugh.format_sweep(cells)
    assert "no table @5 4 -4" in text and text.count("reserves 16") == 4 * 2 * 2
    assert render(hugh.sweep_figure(cells), "svg").startswith(b"<?xml")


def test_cli_json_and_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # noqa: ANN001
    plot = tmp_path / "h.png"
    assert main(["review", "hugh", "--ns", "1,2", "--reserves-list", "0,4", "--headroom", "0",
                 "--fragmentation", "0", "--designs", "lazy", "--json", "--plot", str(plot)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["n"], r["reserve_pages"], r["swapped"]) for r in rows] == [(1, 0, False), (1, 4, True),
                                                                          (2, 0, False), (2, 4, True)]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["review", "hugh", "--ns", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["review", "hugh", "--ns", "x"]) == 2


def test_the_html_report_carries_the_heat_maps(cells: list[hugh.HughCell]) -> None:
    import dataclasses
    import os

    from thpsim.analysis.report import build_report, render_html
    from thpsim.analysis.report.data import from_json, to_json

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = build_report([os.path.join(root, "scenarios", "fault-thp-2m.jsonl")], designs=("upstream", "lazy"))
    assert '"hugh"' not in to_json(data)                       # reports without the sweep keep their format
    with_hugh = dataclasses.replace(data, hugh=[dataclasses.asdict(c) for c in cells])
    page = render_html(with_hugh)
    assert "<h2>Hugh's reclaim case</h2>" in page and page.count("data:image/png;base64,") >= 2
    assert "no table @5 4 -4" in page
    assert from_json(to_json(with_hugh)) == with_hugh
