"""Designs: typed policy fields, validated at construction (model/design.py)."""

from __future__ import annotations

import pytest

from thpsim.errors import ThpsimError
from thpsim.model.design import DESIGNS, ChangeProtSplitFailure, Design, RmapTables, ZapSplitFailure


def test_a_misspelt_policy_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ThpsimError, match=r"zap_split_failure must be one of 'skip', 'zero', 'enomem', 'upfront', not 'zeros'"):
        Design("x", False, zap_split_failure="zeros")  # type: ignore[arg-type]
    with pytest.raises(ThpsimError, match="change_prot_split_failure must be one of 'retry', 'upfront'"):
        Design("x", False, change_prot_split_failure="later")  # type: ignore[arg-type]
    with pytest.raises(ThpsimError, match="rmap_tables must be one of 'prealloc', 'reserve_pool'"):
        Design("x", False, rmap_tables="pool")  # type: ignore[arg-type]
    with pytest.raises(ThpsimError, match="deposit must be True or False"):
        Design("x", "no")  # type: ignore[arg-type]
    with pytest.raises(ThpsimError, match="reserve_pool_size > 0"):
        Design("x", False, rmap_tables=RmapTables.RESERVE_POOL)


def test_string_values_are_normalised_to_the_enums() -> None:
    d = Design("x", False, zap_split_failure="zero", change_prot_split_failure="upfront",  # type: ignore[arg-type]
               rmap_tables="reserve_pool", reserve_pool_size=2)  # type: ignore[arg-type]
    assert d.zap_split_failure is ZapSplitFailure.ZERO
    assert d.change_prot_split_failure is ChangeProtSplitFailure.UPFRONT
    assert d.rmap_tables is RmapTables.RESERVE_POOL and d.pool_tables == 2


def test_registered_designs() -> None:
    assert DESIGNS["upstream"].deposit and not DESIGNS["upstream"].split_can_fail
    assert DESIGNS["lazy-zap-enomem"].zap_split_failure is ZapSplitFailure.ENOMEM
    assert DESIGNS["lazy-reclaim-pool"].pool_tables == 64
    assert all(d.pool_tables == 0 for n, d in DESIGNS.items() if n != "lazy-reclaim-pool")
