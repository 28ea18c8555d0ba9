"""The model's op table (model/engine.py OPS) against the trace language's op definitions."""

from __future__ import annotations

from thpsim.model.engine import MODEL_ONLY, OPS, Scope
from thpsim.trace.format import MODEL_ONLY_OPS, OP_FIELDS


def test_one_handler_per_op_kind() -> None:
    assert set(OPS) == set(OP_FIELDS)
    assert all(spec.name == kind and spec.kernel for kind, spec in OPS.items())


def test_model_only_ops_agree_with_the_trace_format() -> None:
    assert MODEL_ONLY == MODEL_ONLY_OPS


def test_scopes() -> None:
    anywhere = {k for k, s in OPS.items() if s.scope is Scope.ANYWHERE}
    assert anywhere == {"fork", "khugepaged", "shrink_deferred", "reclaim", "migrate", "gup", "expect"}
    assert [k for k, s in OPS.items() if s.scope is Scope.NOTHING] == ["exit"]
