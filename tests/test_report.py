"""Tests for the savings report (thpsim.analysis.report, thpsim.analysis.plots)."""

from __future__ import annotations

import base64
import json
import os
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from thpsim.analysis import plots
from thpsim.analysis.report import (
    DEFAULT_DESIGNS,
    ReportData,
    build_report,
    from_json,
    kib,
    render_html,
    to_json,
    write_html,
    write_images,
)
from thpsim.errors import ThpsimError
from thpsim.model.design import DESIGNS, VARIANTS
from thpsim.model.page_alloc import FailPolicy
from thpsim.trace.generators import generate_text

ROOT = Path(__file__).resolve().parent.parent
PNG_SIG = b"\x89PNG\r\n\x1a\n"
N_THPS = 3

# N THPs faulted (PMD-mapped) and zapped whole: upstream deposits one PTE table per THP, lazy none, and nothing
# is ever split. Both have the PUD table and the PMD table of the arena (8 KiB).
SYNTHETIC = "\n".join([
    '{"thpsim": 1, "name": "synthetic-whole-zap", "description": "N THPs faulted, then zapped whole"}',
    f'{{"op": "mmap", "id": "a", "len": "{2 * N_THPS}M", "align": "2M"}}',
    '{"op": "madvise", "id": "a", "advice": "hugepage"}',
    '{"op": "write", "id": "a"}',
    '{"op": "madvise", "id": "a", "advice": "dontneed"}',
    '{"op": "munmap", "id": "a"}',
]) + "\n"

# partial zaps and a partial mprotect of PMD-mapped THPs: every one needs a PMD split
PARTIAL = "\n".join([
    '{"thpsim": 1, "name": "partial-zaps"}',
    '{"op": "mmap", "id": "a", "len": "8M", "align": "2M"}',
    '{"op": "madvise", "id": "a", "advice": "hugepage"}',
    '{"op": "write", "id": "a"}',
    '{"op": "madvise", "id": "a", "off": "1M", "len": "4K", "advice": "dontneed"}',
    '{"op": "madvise", "id": "a", "off": "3M", "len": "4K", "advice": "dontneed"}',
    '{"op": "mprotect", "id": "a", "off": "5M", "len": "4K", "prot": "r"}',
    '{"op": "write", "id": "a", "off": "3M", "len": "8K"}',
    '{"op": "read", "id": "a"}',
]) + "\n"

CORRUPT = '{"thpsim": 1, "name": "broken"}\n{"op": "mmap", "id": "a", "len": "2M"}\n{"op": "mmap", "len": "two"}\n'


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("traces")
    # a bundled, recorded example (its first 400 ops: the whole trace takes ~15 s per design)
    lines = (ROOT / "examples" / "sqlite-fill.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    return {
        "synthetic": _write(d / "synthetic.jsonl", SYNTHETIC),
        "example": _write(d / "sqlite-fill-head.jsonl", "".join(lines[:401])),
        "corrupt": _write(d / "corrupt.jsonl", CORRUPT),
        "generated": _write(d / "buffer-pool.jsonl", generate_text("buffer-pool", seed=7, size="8M")),
        "partial": _write(d / "partial.jsonl", PARTIAL),
    }


PRESSURE = FailPolicy(persistent_site="pte_alloc_one@split")


@pytest.fixture(scope="module")
def report(inputs: dict[str, str]) -> tuple[ReportData, list[tuple[int, int, str]]]:
    calls: list[tuple[int, int, str]] = []
    paths = [inputs["synthetic"], inputs["corrupt"], inputs["example"], inputs["generated"], inputs["partial"]]
    data = build_report(paths, pressure=PRESSURE, progress=lambda d, n, lbl: calls.append((d, n, lbl)))
    return data, calls


# ------------------------------------------------------------------------------------------------ HTML parsing
class _Page(HTMLParser):
    """Collects the title, every table (with the id of the section it is in), images and URL attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.imgs: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self.errors: list[str] = []
        self.sections: list[str] = []     # ids of the <h2 id=...> headings (one per trace), in order
        self._section = ""
        self._in: list[str] = []
        self._cell: list[str] | None = None
        self._err: list[str] | None = None
        self._title: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        for k in ("href", "src", "action", "data", "poster", "srcset"):
            if k in a:
                self.urls.append(a[k])
        if tag == "h2":
            self._section = a.get("id", "")
            if self._section:
                self.sections.append(self._section)
        elif tag == "title":
            self._title = []
        elif tag == "table":
            self.tables.append((self._section, []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "div" and "err" in a.get("class", "").split():
            self._err = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._title is not None:
            self.title, self._title = "".join(self._title), None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "div" and self._err is not None:
            self.errors.append("".join(self._err))
            self._err = None

    def handle_data(self, data: str) -> None:
        for buf in (self._cell, self._err, self._title):
            if buf is not None:
                buf.append(data)


def _parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    p.close()
    return p


def _design_table(page: _Page, section: str) -> dict[str, dict[str, str]]:
    """The per-trace design table of one section: {design: {column: cell text}}."""
    for sec, rows in page.tables:
        if sec == section and rows and rows[0][:2] == ["design", "peak pgtables (KiB)"]:
            head = rows[0]
            return {r[0]: dict(zip(head, r, strict=False)) for r in rows[1:]}
    raise AssertionError(f"no design table in section {section!r}")


# ------------------------------------------------------------------------------------------------ the data
def test_synthetic_whole_zap_saves_one_table_per_thp(report: tuple[ReportData, list]) -> None:
    data, _ = report
    t = data.traces[0]
    assert t.error is None and t.name == "synthetic-whole-zap" and t.ops == 5
    up, lazy = t.run("upstream"), t.run("lazy")
    assert up is not None and lazy is not None
    assert up.peak_bytes - lazy.peak_bytes == N_THPS * 4096
    assert up.peak_bytes == (N_THPS + 2) * 4096 and lazy.peak_bytes == 2 * 4096
    assert lazy.saved_peak_bytes == N_THPS * 4096
    assert lazy.saved_peak_pct == pytest.approx(100 * N_THPS / (N_THPS + 2), abs=0.01)
    assert up.final_bytes == lazy.final_bytes == 0 and lazy.saved_final_pct is None   # nothing left at the end
    assert up.table_allocs == N_THPS and lazy.table_allocs == 0
    assert up.thp_split_pmd == lazy.thp_split_pmd == 0 and not up.split_sites and not lazy.split_sites
    assert up.thp_fault_alloc == N_THPS and up.peak_anon_huge_kb == N_THPS * 2048
    assert up.violation_count == lazy.violation_count == 0
    # the series: step 2 faults the THPs in; it is the first step at the peak
    assert up.series_values() == [0, 0, (N_THPS + 2) * 4096, 8192, 0]
    assert up.peak_step == 2 and lazy.peak_step == 2
    # every design and variant replayed, in order; the reserve pool shows in PageTables, not in pgtables
    assert [r.design for r in t.runs] == list(DEFAULT_DESIGNS) == ["upstream", "lazy", *VARIANTS]
    pool = t.run("lazy-reclaim-pool")
    assert pool is not None and pool.peak_bytes == lazy.peak_bytes
    assert pool.peak_pagetables_kb == lazy.peak_pagetables_kb + DESIGNS["lazy-reclaim-pool"].reserve_pool_size * 4


def test_series_peak_and_final_agree(report: tuple[ReportData, list]) -> None:
    data, _ = report
    for t in data.traces:
        for r in t.runs + t.pressure_runs:
            if t.error is not None:
                continue
            assert r.error is None, r.error
            vals = r.series_values()
            assert len(vals) == r.steps == t.ops
            assert max(vals) == r.peak_bytes and vals.index(r.peak_bytes) == r.peak_step
            assert vals[-1] == r.final_bytes
            assert all(v % 1024 == 0 for v in vals)


def test_bundled_example_is_reported(report: tuple[ReportData, list]) -> None:
    data, _ = report
    t = data.traces[2]
    assert t.error is None and t.name == "sqlite-fill" and t.ops == 400
    assert [r.design for r in t.runs] == list(DEFAULT_DESIGNS)
    up = t.run("upstream")
    assert up is not None and up.peak_bytes > 0 and up.table_allocs > 0
    # the recording never asks for THP (enabled=madvise): no PMD mapping, so nothing to save
    assert up.peak_anon_huge_kb == 0
    assert all(r.saved_peak_bytes == 0 and r.saved_final_bytes == 0 for r in t.runs)


def test_corrupt_trace_is_an_error_entry_and_the_others_are_reported(
        report: tuple[ReportData, list], inputs: dict[str, str]) -> None:
    data, _ = report
    assert len(data.traces) == 5
    bad = data.traces[1]
    assert bad.path == inputs["corrupt"] and bad.runs == [] and bad.pressure_runs == []
    assert bad.error is not None and "\n" not in bad.error
    assert bad.error.startswith(f"{inputs['corrupt']}:3:") and "len" in bad.error   # file:line and field
    assert [t.path for t in data.errors] == [inputs["corrupt"]]
    assert all(t.runs for t in data.traces if t is not bad)
    page = render_html(data)
    assert "Traceback" not in page
    assert any(bad.error in e for e in _parse(page).errors)


def test_missing_file_is_an_error_entry(tmp_path: Path, inputs: dict[str, str]) -> None:
    missing = str(tmp_path / "nope.jsonl")
    data = build_report([missing, inputs["synthetic"]], designs=("upstream", "lazy"))
    assert data.traces[0].error is not None and missing in data.traces[0].error
    assert data.traces[1].error is None and len(data.traces[1].runs) == 2


def test_progress_is_called_after_every_replay(report: tuple[ReportData, list]) -> None:
    data, calls = report
    lazy_family = [d for d in DEFAULT_DESIGNS if not DESIGNS[d].deposit]
    loaded = [t for t in data.traces if t.error is None]
    total = len(loaded) * (len(DEFAULT_DESIGNS) + len(lazy_family))
    assert [c[0] for c in calls] == list(range(1, total + 1))
    assert {c[1] for c in calls} == {total}
    assert calls[0][2] == "synthetic-whole-zap: upstream"
    assert calls[len(DEFAULT_DESIGNS)][2] == "synthetic-whole-zap: lazy under pressure"


def test_pressure_pass_failures_and_violations(report: tuple[ReportData, list]) -> None:
    data, _ = report
    t = data.traces[4]
    assert t.name == "partial-zaps"
    # pressure passes only for the lazy family (designs without the deposit)
    assert [r.design for r in t.pressure_runs] == [d for d in DEFAULT_DESIGNS if not DESIGNS[d].deposit]
    assert all(r.pressure for r in t.pressure_runs) and not any(r.pressure for r in t.runs)
    up = t.run("upstream")
    assert up is not None and up.split_sites == {"zap_pmd_range": 2, "__split_vma": 1} and up.thp_split_pmd == 3
    lazy = t.run("lazy")
    assert lazy is not None and lazy.split_sites == up.split_sites and lazy.thp_split_pmd_failed == 0
    p = t.run("lazy", pressure=True)
    assert p is not None
    assert p.thp_split_pmd == 0 and p.thp_split_pmd_failed == 3
    assert p.failed_sites == {"zap_pmd_range": 2, "__split_vma": 1}
    assert p.injected_failures == 3 and p.table_alloc_failures == 3
    # series v3: the partial zap skips the PMD and returns 0, so the data stays: one violation per zap, at the
    # step of the zap (steps count ops from 0; lines count from the header); the later writes do not repeat them
    assert [(v.step, v.line) for v in p.violations] == [(3, 5), (4, 6)]
    assert p.violation_count == 2 and "MADV_DONTNEED returned 0" in p.violations[0].text
    assert p.op_error_counts == {"ENOMEM": 1} and p.op_errors[0].step == 5   # mprotect retry → split up front
    zero = t.run("lazy-zap-zero", pressure=True)
    assert zero is not None and zero.violation_count == 0
    enomem = t.run("lazy-zap-enomem", pressure=True)
    assert enomem is not None and enomem.violation_count == 0 and enomem.op_error_counts["ENOMEM"] == 3


def test_contract_modes_agree(inputs: dict[str, str]) -> None:
    """The op-scoped data-contract check finds the same violations at the same steps as checking every step."""
    paths = [inputs["partial"], inputs["generated"]]
    pol = FailPolicy(probability=0.5, fail_site="pte_alloc_one", seed=2)
    a = build_report(paths, designs=("upstream", "lazy", "lazy-zap-zero"), pressure=pol, contract="op")
    b = build_report(paths, designs=("upstream", "lazy", "lazy-zap-zero"), pressure=pol, contract="every")
    assert sum(r.violation_count for t in b.traces for r in t.pressure_runs) > 0
    assert to_json(a) == to_json(b).replace('"contract": "every"', '"contract": "op"')
    off = build_report(paths, designs=("lazy",), pressure=pol, contract="off")
    assert all(r.violation_count == 0 for t in off.traces for r in t.pressure_runs)


def test_bad_arguments() -> None:
    with pytest.raises(ThpsimError, match="unknown design"):
        build_report([], designs=("upstream", "eager"))
    with pytest.raises(ThpsimError, match="contract"):
        build_report([], contract="sometimes")
    with pytest.raises(ThpsimError):
        build_report([], arch="vax")


# ------------------------------------------------------------------------------------------------ HTML
def test_html_is_self_contained_and_has_the_numbers(report: tuple[ReportData, list], tmp_path: Path) -> None:
    data, _ = report
    out = tmp_path / "report.html"
    write_html(data, str(out))
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    assert page.title == "thpsim savings report"
    # nothing external: no links to other pages' resources, no scripts, no stylesheets by URL
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for url in page.urls:
        assert url.startswith(("data:image/png;base64,", "#")), url[:60]
    assert "http://" not in text and "https://" not in text and "url(" not in text
    # every image is an embedded PNG that decodes
    assert len(page.imgs) >= 1 + 3 * 2
    for img in page.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,") and img.get("alt")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == PNG_SIG
        assert raw[12:16] == b"IHDR"
        w, h = struct.unpack(">II", raw[16:24])
        assert w >= 400 and h >= 200
    # the synthetic trace's design table
    rows = _design_table(page, "01-synthetic-whole-zap")
    assert list(rows) == list(DEFAULT_DESIGNS)
    assert rows["upstream"]["peak pgtables (KiB)"] == str((N_THPS + 2) * 4)
    assert rows["lazy"]["peak pgtables (KiB)"] == "8"
    assert rows["lazy"]["saved at peak (KiB, %)"] == f"{N_THPS * 4} ({100 * N_THPS / (N_THPS + 2):.1f}%)"
    assert rows["upstream"]["PTE-table allocs"] == str(N_THPS) and rows["lazy"]["PTE-table allocs"] == "0"
    # every loaded trace's table matches the data
    assert len(page.sections) == len(data.traces)
    for section, t in zip(page.sections, data.traces, strict=True):
        if t.error is not None:
            continue
        rows = _design_table(page, section)
        for r in t.runs:
            row = rows[r.design]
            assert row["peak pgtables (KiB)"] == kib(r.peak_bytes)
            assert row["final (KiB)"] == kib(r.final_bytes)
            assert row["thp_split_pmd"] == f"{r.thp_split_pmd:,}"
            assert row["thp_split_pmd_failed"] == f"{r.thp_split_pmd_failed:,}"
            assert row["violations"] == str(r.violation_count)
    # the pressure table and the violation list of the partial-zap trace
    pressure = [rows for sec, rows in page.tables if sec == "05-partial-zaps" and rows[0][3] == "injected failures"]
    assert len(pressure) == 1 and [r[0] for r in pressure[0][1:]] == [r.design for r in data.traces[4].pressure_runs]
    assert "step 3 (line 5): main: [1M, 1028K): MADV_DONTNEED returned 0 but the page still holds data" in text


# ------------------------------------------------------------------------------------------------ JSON, images
def test_json_round_trip(report: tuple[ReportData, list]) -> None:
    data, _ = report
    text = to_json(data)
    back = from_json(text)
    assert back == data
    assert to_json(back) == text
    obj = json.loads(text)
    assert obj["format"] == 1 and obj["pressure"]["persistent_site"] == "pte_alloc_one@split"
    assert obj["traces"][0]["runs"][1]["saved_peak_bytes"] == N_THPS * 4096
    with pytest.raises(ThpsimError):
        from_json('{"format": 99}')


def test_deterministic_output(inputs: dict[str, str], tmp_path: Path) -> None:
    paths = [inputs["synthetic"], inputs["partial"], inputs["corrupt"]]
    outs = []
    for n in (1, 2):
        d = build_report(paths, designs=("upstream", "lazy", "lazy-zap-enomem"), pressure=PRESSURE)
        html_path = tmp_path / f"r{n}.html"
        write_html(d, str(html_path))
        svgs = write_images(d, str(tmp_path / f"svg{n}"), fmt="svg")
        pngs = write_images(d, str(tmp_path / f"png{n}"), fmt="png")
        outs.append((to_json(d).encode(), html_path.read_bytes(),
                     [Path(p).read_bytes() for p in svgs], [Path(p).read_bytes() for p in pngs],
                     [os.path.basename(p) for p in svgs + pngs]))
    assert outs[0] == outs[1]
    svg = outs[0][2][0].decode()
    assert "<dc:date>" not in svg and "thpsim" in svg


def test_write_images(report: tuple[ReportData, list], tmp_path: Path) -> None:
    data, _ = report
    paths = write_images(data, str(tmp_path / "img"))
    names = [os.path.basename(p) for p in paths]
    assert names[0] == "savings.png"
    assert "01-synthetic-whole-zap-pgtables.png" in names
    assert "01-synthetic-whole-zap-splits.png" not in names   # no split at all: no split figure
    assert "05-partial-zaps-splits.png" in names
    assert not any(n.startswith("02-") for n in names)      # the corrupt trace has no figures
    for p in paths:
        assert Path(p).read_bytes()[:8] == PNG_SIG
    with pytest.raises(ThpsimError):
        write_images(data, str(tmp_path / "x"), fmt="gif")


def test_figures_have_units_and_legends(report: tuple[ReportData, list]) -> None:
    data, _ = report
    fig = plots.pgtables_figure(data.traces[0])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "pgtables (KiB)" and "step" in ax.get_xlabel()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    # designs with the same series share a line
    assert labels[0].startswith("upstream ") and labels[1].startswith("lazy = lazy-zap-zero = ")
    fig = plots.savings_figure(data)
    assert all(a.get_ylabel() == "saved (KiB)" for a in fig.axes)
    fig = plots.split_sources_figure(data.traces[4])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "zap_pmd_range" in texts and "failed: zap_pmd_range" in texts


def test_the_html_template_is_package_data() -> None:
    """render_html reads report.html next to thpsim/analysis/report/: pyproject must ship it in a wheel."""
    import fnmatch
    import tomllib

    from thpsim.analysis.report import html as report_html

    tmpl = Path(report_html.__file__).with_name(report_html.TEMPLATE)
    assert tmpl.is_file()
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["thpsim"]
    rel = tmpl.relative_to(ROOT / "src" / "thpsim").as_posix()
    assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)
