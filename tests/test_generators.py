"""Synthetic workload generators: determinism and validity."""

from __future__ import annotations

import pytest

from thpsim.errors import ThpsimError
from thpsim.trace import format as fmt
from thpsim.trace.generators import KINDS, generate, generate_text
from thpsim.trace.ops import Mremap, RangeOp


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_same_seed_same_text_different_seed_different(kind: str) -> None:
    a = fmt.dumps(generate(kind, seed=7, size="32M"))
    b = fmt.dumps(generate(kind, seed=7, size="32M"))
    c = fmt.dumps(generate(kind, seed=8, size="32M"))
    assert a == b
    assert a != c
    assert generate_text(kind, seed=7, size=32 << 20) == generate_text(kind, seed=7, size="32M")


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_valid_trace_within_the_arena(kind: str, seed: int) -> None:
    t = generate(kind, seed=seed, size="16M")
    assert t.ops
    for op in t.ops:
        if isinstance(op, RangeOp):
            assert op.start >= 0 and op.end <= fmt.ARENA_SIZE
        if isinstance(op, Mremap) and op.dest is not None:
            assert op.dest + op.new_length <= fmt.ARENA_SIZE
    # round-trips through the at-form
    assert fmt.dumps(fmt.parse(fmt.dumps(t))) == fmt.dumps(t)


def test_size_scales_the_workload() -> None:
    small = generate("buffer-pool", seed=1, size="16M")
    big = generate("buffer-pool", seed=1, size="256M")
    assert max(o.length for o in big.ops) > max(o.length for o in small.ops)


def test_kind_specific_shapes() -> None:
    snap = generate("fork-snapshot", seed=3, size="16M")
    assert "bgsave1" in snap.procs() and any(o.kind == "read" and o.proc == "bgsave1" for o in snap.ops)
    short = generate("short-lived", seed=3, size="16M", children=5)
    assert len(short.procs()) == 6
    heap = generate("managed-heap", seed=3, size="64M")
    assert any(o.kind == "mprotect" and o.prot == "none" for o in heap.ops)
    assert any(o.kind == "mremap" for s in range(5) for o in generate("managed-heap", seed=s, size="64M").ops)
    churn = generate("allocator-churn", seed=3, size="16M")
    assert {o.advice for o in churn.ops if o.kind == "madvise"} >= {"hugepage", "dontneed", "free"}


def test_bad_arguments_are_clean_errors() -> None:
    with pytest.raises(ThpsimError):
        generate("nope", seed=1)
    with pytest.raises(ThpsimError):
        generate("buffer-pool", seed=1, size="1M")
    with pytest.raises(ThpsimError):
        generate("buffer-pool", seed=1, bogus=3)
    with pytest.raises(ThpsimError):
        generate("buffer-pool", seed=1, rounds="many")
