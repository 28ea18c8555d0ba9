"""The scenario library (scenarios/*.jsonl): every trace parses, is named and described, and is listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thpsim.errors import TraceError
from thpsim.trace import format as tf
from thpsim.trace.format import TRACE_VERSION, load

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
FILES = sorted(SCENARIOS.glob("*.jsonl"))
SELFTESTS = ("partial_munmap", "partial_mprotect", "partial_mlock", "partial_mremap", "partial_madv_dontneed")


def _first_object(path: Path) -> dict:
    for raw in path.read_text(encoding="utf-8").splitlines():
        s = raw.strip()
        if s and not s.startswith(("#", "//")):
            return json.loads(s)
    raise AssertionError(f"{path.name}: empty trace")


def test_library_size() -> None:
    assert len(FILES) >= 70, f"only {len(FILES)} scenarios in {SCENARIOS}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_scenario_parses_with_header(path: Path) -> None:
    first = _first_object(path)
    assert first.get("thpsim") == TRACE_VERSION, f"{path.name}: the first line must be the header"
    trace = load(str(path))
    assert trace.header.name, f"{path.name}: header has no name"
    assert trace.header.name == path.stem, f"{path.name}: header name {trace.header.name!r} != file name"
    assert len(trace.header.description) >= 40, f"{path.name}: description too short"
    assert trace.ops, f"{path.name}: no operations"


def test_names_unique() -> None:
    names = [load(str(p)).header.name for p in FILES]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"duplicate scenario names: {dupes}"


def test_series_selftests_present() -> None:
    names = {p.stem for p in FILES}
    missing = [t for t in SELFTESTS if f"selftest-{t}" not in names]
    assert not missing, f"missing series selftest scenarios: {missing}"


def test_readme_lists_every_scenario() -> None:
    readme = (SCENARIOS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in FILES if f"`{p.name}`" not in readme]
    assert not missing, f"scenarios/README.md does not list: {missing}"


@pytest.mark.parametrize("ops", [
    # mremap onto a fixed target 100 TiB away (outside the 512 GiB arena): refused before any syscall
    ['{"op": "mmap", "id": "a", "len": "2M"}',
     '{"op": "mremap", "id": "a", "new_len": "2M", "flags": ["maymove", "fixed"], "to": "100T"}'],
    # growing in place across the arena's end
    ['{"op": "mmap", "id": "a", "at": "510G", "len": "2M"}', '{"op": "mremap", "id": "a", "new_len": "4G"}'],
    # UFFDIO_MOVE to a destination past the arena
    ['{"op": "mmap", "id": "a", "len": "2M"}', '{"op": "uffd_move", "id": "a", "to": "512G"}'],
])
def test_no_op_reaches_outside_the_arena(ops: list[str]) -> None:
    with pytest.raises(TraceError, match="past the 512 GiB arena") as e:
        tf.parse("\n".join(ops), source="esc.jsonl")
    assert str(e.value).startswith("esc.jsonl:2:")
