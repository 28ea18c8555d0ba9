"""The three recorded real programs replay on the model, and the VmPTE the real program had while it ran
(sampled every 20 ms) agrees with the model's upstream VmPTE at the same points of the trace."""

from __future__ import annotations

import glob
import os

import pytest

from thpsim.analysis.realcheck import vmpte_agreement
from thpsim.errors import ThpsimError

ROOT = os.path.dirname(os.path.dirname(__file__))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.jsonl")))


def test_three_real_programs_are_bundled() -> None:
    names = {os.path.basename(p) for p in EXAMPLES}
    assert {"python-list.jsonl", "sqlite-fill.jsonl", "redis-bgsave.jsonl"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_model_vmpte_tracks_the_real_program(path: str) -> None:
    a = vmpte_agreement(path)
    assert len(a.points) >= 40
    assert a.live_range_kb >= 100            # the program's page tables really changed while it ran
    # tolerance 4 kB = one table: the real heap shares upper-level tables with the binary and libraries
    assert a.max_abs_error_kb <= 4, [(p.op_index, p.live_delta_kb, p.model_delta_kb) for p in a.points
                                     if p.error_kb]
    assert a.within(0) >= 0.95


def test_bad_sample_file(tmp_path: os.PathLike[str]) -> None:
    bad = os.path.join(str(tmp_path), "x.vmpte.json")
    with open(bad, "w") as f:
        f.write("{not json")
    with pytest.raises(ThpsimError, match="cannot read the VmPTE samples"):
        vmpte_agreement(EXAMPLES[0], bad)
