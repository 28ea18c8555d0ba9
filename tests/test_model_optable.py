"""One op table: the trace language's definitions (trace/ops.py OP_DEFS), the model's handlers (model/engine.py
OPS) and the live child's handlers (live/_child.py CHILD_OPS) name the same op kinds."""

from __future__ import annotations

import json
import typing
from dataclasses import fields

import pytest

from thpsim.errors import TraceError
from thpsim.live import _child
from thpsim.live.runner import op_message
from thpsim.model.engine import OPS, Scope
from thpsim.trace import format as tf
from thpsim.trace import ops as T


def test_one_definition_per_op_class() -> None:
    classes = typing.get_args(T.Op)
    assert len(classes) == len(T.OP_DEFS) == 23
    assert {c.kind for c in classes} == set(T.OP_DEFS)
    assert all(d.cls.kind == k and d.cls in classes for k, d in T.OP_DEFS.items())
    # the kind is a class attribute, not a field
    assert all("kind" not in {f.name for f in fields(c)} for c in classes)


def test_derived_names_and_the_format_reexports() -> None:
    assert tf.OP_FIELDS is T.OP_FIELDS and tf.MODEL_ONLY_OPS is T.MODEL_ONLY_OPS
    assert set(T.OP_FIELDS) == set(T.OP_DEFS)
    model_only, region = T.MODEL_ONLY_OPS, T.REGION_OPS
    assert model_only == {"khugepaged", "shrink_deferred", "swapoff", "reclaim", "gup", "uffd_move", "pagemap_scan_wp",
                          "migrate"}
    assert region == {k for k, d in T.OP_DEFS.items() if issubclass(d.cls, T.RangeOp)} - {"mmap"}


def test_one_model_handler_per_definition() -> None:
    assert set(OPS) == set(T.OP_DEFS)
    assert all(spec.name == kind and spec.kernel for kind, spec in OPS.items())
    assert {k for k, s in OPS.items() if s.model_only} == T.MODEL_ONLY_OPS


def test_model_handlers_take_their_op_class() -> None:
    for kind, spec in OPS.items():
        hints = typing.get_type_hints(spec.handler, vars(T) | {"Simulator": object, "MM": object,
                                                               "OpResult": object})
        assert hints["op"] is T.OP_DEFS[kind].cls, kind


def test_registering_a_second_model_handler_or_an_unknown_class_fails() -> None:
    from thpsim.model import engine

    with pytest.raises(AssertionError, match="two model handlers"):
        engine._op(T.Munmap, "again")(lambda sim, mm, op, a: (0, None))
    with pytest.raises(AssertionError, match="not an op kind"):
        engine._op(T.RangeOp, "none")(lambda sim, mm, op, a: (0, None))
    assert OPS["munmap"].kernel == "mm/vma.c do_vmi_munmap"


def test_scopes() -> None:
    anywhere = {k for k, s in OPS.items() if s.scope is Scope.ANYWHERE}
    assert anywhere == {"fork", "khugepaged", "shrink_deferred", "swapoff", "reclaim", "migrate", "gup", "expect"}
    assert [k for k, s in OPS.items() if s.scope is Scope.NOTHING] == ["exit"]
    # a RANGE scope compares the op's range: only range ops have one
    assert all(issubclass(T.OP_DEFS[k].cls, T.RangeOp) for k, s in OPS.items() if s.scope is Scope.RANGE)


def test_every_live_op_has_a_live_handler_and_no_other_has_one() -> None:
    live = {k for k, d in T.OP_DEFS.items() if not d.model_only}
    assert set(_child.CHILD_OPS) == live - {"expect"}      # expect runs nothing: the runner records it itself
    with pytest.raises(AssertionError):
        _child._live("khugepaged")(lambda p, op: {})
    with pytest.raises(AssertionError):
        _child._live("no_such_op")(lambda p, op: {})
    with pytest.raises(AssertionError):
        _child._live("mmap")(lambda p, op: {})


def test_unknown_op_is_an_error_reply_from_the_child() -> None:
    reply, exiting = _child.Proc(_child.Chan(-1, -1)).handle({"cmd": "op", "op": {"kind": "gup"}})
    assert reply == {"error": "op 'gup' is not supported by the live child"} and not exiting


TEXT = """{"thpsim": 1}
{"op": "mmap", "id": "a", "len": "4M", "flags": ["noreserve"]}
{"op": "mremap", "id": "a", "len": "2M", "new_len": "4M", "flags": ["maymove"]}
{"op": "write", "id": "a", "len": "2M", "fill": true, "byte": 7}
{"op": "fork", "child": "c"}
{"op": "madvise", "id": "a", "advice": "dontneed", "proc": "c"}
{"op": "exit", "proc": "c"}
"""


def test_the_wire_message_carries_each_kind_s_fields_under_their_names() -> None:
    ops = tf.parse(TEXT).ops
    msgs = [op_message(op) for op in ops]
    assert msgs[0] == {"kind": "mmap", "start": 0, "length": 4 << 20, "prot": "rw", "flags": ["noreserve"]}
    assert msgs[1] == {"kind": "mremap", "start": 0, "length": 2 << 20, "new_length": 4 << 20,
                       "flags": ["maymove"], "dest": ops[1].dest}
    assert msgs[2] == {"kind": "write", "start": 0, "length": 2 << 20, "stride": 4096, "fill": True, "byte": 7}
    assert msgs[3] == {"kind": "fork", "child": "c"}
    assert msgs[4] == {"kind": "madvise", "start": 0, "length": 4 << 20, "advice": "dontneed"}
    assert msgs[5] == {"kind": "exit"}
    assert all(json.loads(json.dumps(m)) == m for m in msgs)


def test_kind_specific_fields_live_on_their_kind_only() -> None:
    ops = tf.parse(TEXT).ops
    assert isinstance(ops[1], T.Mremap) and not hasattr(ops[0], "new_length")
    assert not hasattr(ops[3], "start") and ops[3].describe() == "main: fork -> c"
    with pytest.raises(TypeError):
        T.Munmap(line=1, start=0, length=4096, prot="r")  # type: ignore[call-arg]
    with pytest.raises(TraceError, match="op 'munmap' has no field 'prot'"):
        tf.parse('{"op": "munmap", "at": 0, "len": 4096, "prot": "r"}')


def test_dump_parse_round_trip_per_kind() -> None:
    text = TEXT + "\n".join([
        '{"op": "mprotect", "id": "a", "prot": "r"}', '{"op": "mlock", "id": "a", "flags": ["onfault"]}',
        '{"op": "munlock", "id": "a"}', '{"op": "read", "id": "a", "stride": "2M"}', '{"op": "khugepaged"}',
        '{"op": "shrink_deferred"}', '{"op": "swapoff"}', '{"op": "reclaim", "id": "a"}', '{"op": "gup", "id": "a", "flags": ["pin"]}',
        '{"op": "uffd_move", "id": "a", "len": "2M", "to": "100M"}', '{"op": "pagemap_scan_wp", "id": "a"}',
        '{"op": "uffd_register", "id": "a"}', '{"op": "uffd_wp", "id": "a"}', '{"op": "uffd_unregister", "id": "a"}',
        '{"op": "migrate", "id": "a"}', '{"op": "expect", "note": "end"}',
        '{"op": "munmap", "id": "a", "inject": {"at": "pte_alloc_one", "times": "all"}}'])
    t = tf.parse(text)
    assert {op.kind for op in t.ops} == set(T.OP_DEFS)
    again = tf.parse(tf.dumps(t))
    assert tf.dumps(again) == tf.dumps(t)
    assert [op.describe() for op in again.ops] == [op.describe() for op in t.ops]
