"""thpsim lab race: the v3 02/24 __split_vma race (found by thpsim races) on real kernels.

The host runs upstream, where __split_vma write-locks the VMA before it splits the PMD: no round may race. The
lab's lazy-v3-7.3 guest carries v3 02/24 and races (its CONFIG_DEBUG_VM then oopses in split_huge_pmd_locked);
lazy-v3-vmafix-7.3 (the series plus the fix: vma_start_write first) must not.
"""

from __future__ import annotations

import os

import pytest

from thpsim.lab.build import find_built
from thpsim.lab.guest import guest_unavailable
from thpsim.lab.race import parse_race_output, run_race
from thpsim.live.env import skip_reason

OUT = ("hit: round 1, delay 1 us: the 1 MiB VMA [0x7f0000000000, +1M) shows AnonHugePages 2048 kB (a huge PMD "
       "straddles the VMA boundary at +1M)\n")
CONSOLE = ("[    6.399415] Oops: invalid opcode: 0000 [#1] SMP\n[    6.401477] RIP: 0010:split_huge_pmd_locked+0x93/0x7b6\n"
           "[    6.406038] Kernel panic - not syncing: Fatal exception\n")


def test_parse_a_hit_and_an_oops() -> None:
    r = parse_race_output("lazy-v3-7.3", 300, OUT, CONSOLE, None)
    assert r.raced and r.hits == 1 and r.first_hit_round == 1 and r.rounds_done is None
    assert r.oops[1].endswith("RIP: 0010:split_huge_pmd_locked+0x93/0x7b6")
    clean = parse_race_output("host", 10, "race_split_vma: 10 rounds: 0 hits, 9 THP faults before the split, 1 "
                              "faults after it (delays 0..40 us)\n", "", 0)
    assert not clean.raced and (clean.rounds_done, clean.faults_before, clean.faults_after) == (10, 9, 1)


@pytest.mark.live
@pytest.mark.skipif(skip_reason() is not None, reason=f"live kernel THP not usable: {skip_reason()}")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the race needs 2 CPUs")
def test_upstream_host_never_races() -> None:
    r = run_race("host", rounds=2000, max_delay_us=10)
    assert r.rounds_done == 2000 and r.hits == 0 and not r.oops
    assert r.faults_before and r.faults_after        # both orders happened: the rounds did overlap the split


@pytest.mark.slow
@pytest.mark.skipif(bool(guest_unavailable("lazy-v3-7.3")), reason=str(guest_unavailable("lazy-v3-7.3")))
def test_lazy_v3_guest_races() -> None:
    r = run_race("lazy-v3-7.3", rounds=300)
    assert r.raced, r


@pytest.mark.slow
@pytest.mark.skipif(bool(guest_unavailable("upstream-7.3")), reason=str(guest_unavailable("upstream-7.3")))
def test_upstream_guest_does_not_race() -> None:
    r = run_race("upstream-7.3", rounds=300)
    assert not r.raced and r.rounds_done == 300, r


@pytest.mark.slow
def test_the_fixed_series_does_not_race() -> None:
    """lazy-v3-vmafix-7.3: the series plus thpsim's fix (docs/series.md, "The __split_vma race"), built with
    ``thpsim lab build lazy-v3-7.3 --series DIR --name lazy-v3-vmafix-7.3``."""
    if find_built(FIXED) is None:
        pytest.skip(f"{FIXED} is not built here (docs/series.md says how)")
    r = run_race(FIXED, rounds=300)
    assert not r.raced and r.rounds_done == 300, r


FIXED = "lazy-v3-vmafix-7.3"
