"""Synthetic workload generators: deterministic, seed-driven traces modelled on real THP usage patterns.

``generate(kind, seed=N, size=S)`` returns a validated :class:`~thpsim.trace.format.Trace`; the same
(kind, seed, size, options) always gives byte-identical ``format.dumps`` text (only ``random.Random(seed)`` is
used, never global state, time or hashing). *size* is the main heap in bytes (``"256M"`` strings are accepted
too); each kind documents the real pattern it imitates and its extra options. See docs/workloads.md.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from thpsim.errors import ThpsimError, TraceError
from thpsim.trace import format as fmt

KiB, MiB, GiB, PAGE = fmt.KiB, fmt.MiB, fmt.GiB, fmt.PAGE
HPAGE = 2 * MiB

KINDS: dict[str, str] = {
    "allocator-churn": "jemalloc/tcmalloc-like: MADV_HUGEPAGE arenas, random allocs/frees, partial DONTNEED/FREE "
                       "purges of freed runs inside THPs, some whole-2M purges",
    "fork-snapshot": "Redis BGSAVE-like: big THP heap, fork a child that reads everything and exits while the "
                     "parent keeps writing at random (COW of PMD-mapped THPs)",
    "managed-heap": "JVM/Go-like: large PROT_NONE reservation committed by mprotect in generations, THP madvise, "
                    "PROT_NONE guard pages at edges, DONTNEED of evacuated space, mremap of an off-heap buffer",
    "buffer-pool": "database buffer pool (InnoDB-like): long-lived THP region filled once, then mostly whole-THP "
                   "evictions (DONTNEED) and refills, a few partial ones",
    "short-lived": "many short-lived forked workers (pre-fork servers, make -j, shell pipelines), each mapping, "
                   "touching and exiting",
}

_DEFAULT_SIZE = {"allocator-churn": 256 * MiB, "fork-snapshot": 256 * MiB, "managed-heap": 512 * MiB,
                 "buffer-pool": 512 * MiB, "short-lived": 64 * MiB}


class _Builder:
    def __init__(self, kind: str, seed: int, size: int, opts: dict[str, Any]) -> None:
        self.rng = random.Random(seed)
        self.kind, self.seed, self.size, self.opts = kind, seed, size, opts
        self.lines: list[dict[str, Any]] = []

    def op(self, op: str, **kw: Any) -> None:
        d: dict[str, Any] = {"op": op}
        for k, v in kw.items():
            if v is None:
                continue
            d[k] = fmt.format_size(v) if k in ("len", "off", "new_len", "stride", "align", "misalign", "at",
                                                "to") and isinstance(v, int) else v
        self.lines.append(d)

    def opt(self, name: str, default: Any) -> Any:
        v = self.opts.get(name, default)
        if type(v) is not type(default):
            raise ThpsimError(f"generator {self.kind!r}: option {name!r} must be a {type(default).__name__}")
        return v

    def text(self, description: str) -> str:
        hdr = {"thpsim": fmt.TRACE_VERSION, "name": f"generated:{self.kind}",
               "description": f"{description} (seed {self.seed}, size {fmt.format_size(self.size)})"}
        return "\n".join([json.dumps(hdr)] + [json.dumps(d, separators=(", ", ": ")) for d in self.lines]) + "\n"


def _pages(n: int) -> int:
    return max(PAGE, n // PAGE * PAGE)


def _hp(n: int) -> int:
    return max(HPAGE, n // HPAGE * HPAGE)


def _allocator_churn(b: _Builder) -> str:
    """jemalloc / tcmalloc arenas.

    Real pattern: jemalloc (``opt.thp:always``/``metadata_thp``) and tcmalloc's hugepage-aware allocator
    (Temeraire) map large 2 MiB-aligned extents and ``madvise(MADV_HUGEPAGE)`` them; small and medium objects are
    carved out of them; freed *runs* of pages are purged lazily with ``MADV_FREE`` (jemalloc muzzy decay) or
    forcibly with ``MADV_DONTNEED`` (dirty decay / tcmalloc subrelease), usually a few pages inside a THP — the
    partial zap that splits the PMD — and sometimes a whole empty 2 MiB hugepage (tcmalloc releases whole
    hugepages first). Options: ``arenas`` (4), ``steps`` (scaled by size), ``free_ratio`` (0.45),
    ``khugepaged_every`` (0 = never).
    """
    rng = b.rng
    n_arenas = b.opt("arenas", 4)
    arena_len = _hp(b.size // n_arenas)
    steps = b.opt("steps", max(200, min(4000, b.size // (64 * KiB))))
    kh_every = b.opt("khugepaged_every", 0)
    free_ratio = b.opt("free_ratio", 0.45)
    npages = arena_len // PAGE
    used = [bytearray(npages) for _ in range(n_arenas)]
    live: list[tuple[int, int, int]] = []
    for a in range(n_arenas):
        b.op("mmap", id=f"arena{a}", len=arena_len, align=HPAGE, flags=["noreserve"])
        b.op("madvise", id=f"arena{a}", advice="hugepage")
    for step in range(steps):
        if live and rng.random() < free_ratio:
            a, p, k = live.pop(rng.randrange(len(live)))
            used[a][p:p + k] = bytes(k)
            r = rng.random()
            if r < 0.35:
                b.op("madvise", id=f"arena{a}", off=p * PAGE, len=k * PAGE, advice="dontneed")
            elif r < 0.6:
                b.op("madvise", id=f"arena{a}", off=p * PAGE, len=k * PAGE, advice="free")
            # else: left dirty (decay has not purged it yet)
            hp = p * PAGE // HPAGE
            lo = hp * HPAGE // PAGE
            if rng.random() < 0.5 and not any(used[a][lo:lo + HPAGE // PAGE]):
                b.op("madvise", id=f"arena{a}", off=hp * HPAGE, len=HPAGE, advice="dontneed",
                     note="whole empty hugepage released")
        else:
            r = rng.random()
            k = rng.randint(1, 16) if r < 0.6 else (rng.randint(17, 256) if r < 0.92 else rng.randint(257, 1024))
            a = rng.randrange(n_arenas)
            start = rng.randrange(npages)
            p = used[a].find(bytes(k), start)
            if p < 0:
                p = used[a].find(bytes(k))
            if p < 0:
                continue
            used[a][p:p + k] = b"\x01" * k
            live.append((a, p, k))
            b.op("write", id=f"arena{a}", off=p * PAGE, len=k * PAGE)
        if kh_every and step % kh_every == kh_every - 1:
            b.op("khugepaged")
    for a in range(n_arenas):
        b.op("munmap", id=f"arena{a}")
    return "jemalloc/tcmalloc-like allocator churn"


def _fork_snapshot(b: _Builder) -> str:
    """Redis ``BGSAVE`` / ``BGREWRITEAOF``.

    Real pattern: Redis keeps its dataset in a large anonymous heap (jemalloc), forks, and the child serialises
    the whole dataset (reads every page) and exits; meanwhile the parent keeps serving writes at random keys,
    each of which COW-faults a page that is now shared — on a PMD-mapped THP this splits the PMD
    (``do_huge_pmd_wp_page`` fallback) and copies 4 KiB (Redis's docs recommend disabling THP for exactly this
    reason). Options: ``snapshots`` (2), ``writes_per_chunk`` (8), ``chunk`` ("8M" read slice of the child).
    """
    rng = b.rng
    heap = _hp(b.size)
    snaps = b.opt("snapshots", 2)
    wpc = b.opt("writes_per_chunk", 8)
    chunk = fmt.parse_size(b.opt("chunk", "8M"))
    b.op("mmap", id="heap", len=heap, align=HPAGE)
    b.op("madvise", id="heap", advice="hugepage")
    b.op("write", id="heap", note="load the dataset")
    for s in range(snaps):
        child = f"bgsave{s + 1}"
        b.op("fork", child=child)
        off = 0
        while off < heap:
            n = min(chunk, heap - off)
            b.op("read", proc=child, id="heap", off=off, len=n)
            for _ in range(rng.randint(0, 2 * wpc)):
                b.op("write", id="heap", off=rng.randrange(heap // PAGE) * PAGE, len=PAGE)
            off += n
        b.op("exit", proc=child)
        for _ in range(rng.randint(wpc, 4 * wpc)):
            b.op("write", id="heap", off=rng.randrange(heap // PAGE) * PAGE, len=rng.choice((PAGE, 4 * PAGE)))
        if rng.random() < 0.5:
            b.op("khugepaged")
    return "Redis BGSAVE-like fork snapshot"


def _managed_heap(b: _Builder) -> str:
    """JVM (``-XX:+UseTransparentHugePages``) / Go runtime heap.

    Real pattern: the runtime reserves a large PROT_NONE, MAP_NORESERVE range and commits it piecewise with
    ``mprotect(PROT_READ|PROT_WRITE)`` as generations grow (HotSpot commits in page-size granules, so commits are
    not always 2 MiB aligned), ``madvise(MADV_HUGEPAGE)`` on committed space, keeps PROT_NONE guard pages at
    region edges (HotSpot's stack guard zones and region borders; Go's arena guards), and returns evacuated
    space with ``MADV_DONTNEED`` (HotSpot ``uncommit``, Go's scavenger, which since Go 1.21 may also
    ``MADV_COLLAPSE``). Off-heap buffers grow with ``mremap(MREMAP_MAYMOVE)`` (glibc ``realloc`` of large
    blocks). Options: ``gcs`` (scaled by size), ``guard`` ("4K").
    """
    rng = b.rng
    heap = _hp(b.size)
    reserve = 2 * heap
    guard = fmt.parse_size(b.opt("guard", "4K"))
    gcs = b.opt("gcs", max(4, min(40, b.size // (32 * MiB))))
    b.op("mmap", id="heap", len=reserve, prot="none", flags=["noreserve"], align=HPAGE)
    committed = heap // 4 - rng.randrange(0, 64) * PAGE      # often not 2 MiB aligned
    b.op("mprotect", id="heap", off=0, len=committed, prot="rw")
    b.op("madvise", id="heap", off=0, len=committed, advice="hugepage")
    b.op("mprotect", id="heap", off=committed - guard, len=guard, prot="none", note="guard page at the edge")
    offheap = 4 * MiB + rng.randrange(1, 256) * PAGE
    b.op("mmap", id="offheap", len=offheap, align=PAGE)
    b.op("write", id="offheap")
    top = 0                                                # bump pointer of the young generation
    for _gc in range(gcs):
        # allocate until the committed space is nearly full
        alloc_end = committed - guard
        while top < alloc_end:
            n = min(alloc_end - top, rng.randint(64, 2048) * PAGE)
            b.op("write", id="heap", off=top, len=n)
            top += n
        # collection: evacuate survivors to the old end, release a part of the young space
        survivors = rng.randint(1, 4) * HPAGE // 2
        rel_lo = rng.randrange(0, max(PAGE, committed // 2), PAGE)
        rel_len = min(committed - guard - rel_lo, rng.randint(16, 4096) * PAGE)
        if rel_len > 0:
            b.op("madvise", id="heap", off=rel_lo, len=rel_len, advice="dontneed", note="GC uncommit / scavenge")
        top = min(rel_lo, survivors)
        if rng.random() < 0.2:
            b.op("madvise", id="heap", off=0, len=_hp(committed // 2), advice="collapse")
        # grow the generation: move the guard, commit the next slice
        if committed + guard < reserve - HPAGE and rng.random() < 0.6:
            grow = min(reserve - HPAGE - committed, rng.randint(1, 8) * HPAGE + rng.choice((0, 0, 17 * PAGE)))
            b.op("mprotect", id="heap", off=committed - guard, len=guard + grow, prot="rw")
            b.op("madvise", id="heap", off=committed - guard, len=guard + grow, advice="hugepage")
            committed += grow
            b.op("mprotect", id="heap", off=committed - guard, len=guard, prot="none", note="guard page")
        if rng.random() < 0.3:
            new = offheap + rng.randint(1, 8) * MiB
            b.op("mremap", id="offheap", new_len=new, flags=["maymove"])
            b.op("write", id="offheap", off=offheap, len=new - offheap)
            offheap = new
    b.op("munmap", id="offheap")
    return "JVM/Go-like managed heap"


def _buffer_pool(b: _Builder) -> str:
    """Database buffer pool (InnoDB ``innodb_buffer_pool_size``; also MySQL/MariaDB with large pages off).

    Real pattern: one long-lived anonymous region sized to most of RAM, advised ``MADV_HUGEPAGE``, filled as
    pages are read from disk, then kept in a steady state where the LRU evicts and re-reads pages; an allocator
    that manages the pool in 2 MiB chunks (InnoDB chunks, buffer-pool resizing) releases whole hugepages with
    ``MADV_DONTNEED`` and refills them, and occasionally frees single 16 KiB pages. Options: ``rounds`` (scaled
    by size), ``partial_ratio`` (0.1).
    """
    rng = b.rng
    pool = _hp(b.size)
    n_hp = pool // HPAGE
    rounds = b.opt("rounds", max(50, min(3000, pool // (256 * KiB))))
    partial = b.opt("partial_ratio", 0.1)
    b.op("mmap", id="pool", len=pool, align=HPAGE)
    b.op("madvise", id="pool", advice="hugepage")
    b.op("write", id="pool", note="warm-up: read the working set")
    for _ in range(rounds):
        h = rng.randrange(n_hp)
        r = rng.random()
        if r < partial:
            off = h * HPAGE + rng.randrange(HPAGE // (16 * KiB)) * 16 * KiB
            b.op("madvise", id="pool", off=off, len=16 * KiB, advice="dontneed", note="free one 16K page")
            b.op("write", id="pool", off=off, len=16 * KiB)
        elif r < partial + 0.15:
            b.op("read", id="pool", off=h * HPAGE, len=HPAGE, stride=16 * KiB)
        else:
            b.op("madvise", id="pool", off=h * HPAGE, len=HPAGE, advice="dontneed", note="evict a 2M chunk")
            b.op("write", id="pool", off=h * HPAGE, len=HPAGE, note="refill")
    return "database buffer pool"


def _short_lived(b: _Builder) -> str:
    """Short-lived forked processes (pre-fork servers such as Apache prefork / PHP-FPM workers, ``make -j``,
    shell pipelines).

    Real pattern: a parent with a modest heap forks many children; each maps its own working memory (malloc
    arenas of glibc map 64 MiB-aligned heaps; large buffers get their own mmap, sometimes MADV_HUGEPAGE), touches
    it, maybe frees part of it, and exits soon; the parent keeps touching its heap between forks (COW on pages
    shared with live children). Options: ``children`` (scaled by size), ``overlap`` (0.3: chance that a child
    is still alive when the next one is forked).
    """
    rng = b.rng
    heap = _hp(b.size)
    children = b.opt("children", max(8, min(200, b.size // MiB)))
    overlap = b.opt("overlap", 0.3)
    b.op("mmap", id="heap", len=heap, align=HPAGE)
    b.op("madvise", id="heap", advice="hugepage")
    b.op("write", id="heap", len=heap // 2)
    alive: list[str] = []
    for i in range(children):
        name = f"w{i + 1}"
        b.op("fork", child=name)
        ln = rng.randint(1, 16) * MiB + rng.choice((0, 0, rng.randrange(1, 512) * PAGE))
        rid = f"buf{i + 1}"
        b.op("mmap", proc=name, id=rid, len=ln, align=rng.choice((PAGE, HPAGE)))
        if rng.random() < 0.5:
            b.op("madvise", proc=name, id=rid, advice="hugepage")
        b.op("write", proc=name, id=rid)
        if rng.random() < 0.4:
            b.op("write", proc=name, id="heap", off=rng.randrange(heap // 2 // PAGE) * PAGE, len=PAGE,
                 note="child writes an inherited page (COW)")
        if rng.random() < 0.3:
            b.op("munmap", proc=name, id=rid, off=0, len=_pages(ln // 3))
        for _ in range(rng.randint(0, 4)):
            b.op("write", id="heap", off=rng.randrange(heap // PAGE) * PAGE, len=PAGE)
        alive.append(name)
        while alive and (len(alive) > 2 or rng.random() >= overlap):
            b.op("exit", proc=alive.pop(0))
    for name in alive:
        b.op("exit", proc=name)
    return "short-lived forked workers"


_GEN: dict[str, Callable[[_Builder], str]] = {
    "allocator-churn": _allocator_churn, "fork-snapshot": _fork_snapshot, "managed-heap": _managed_heap,
    "buffer-pool": _buffer_pool, "short-lived": _short_lived,
}


def generate(kind: str, *, seed: int, size: int | str | None = None, **opts: Any) -> fmt.Trace:
    """Generate a trace of workload *kind* (one of :data:`KINDS`), deterministic in (seed, size, opts)."""
    text = generate_text(kind, seed=seed, size=size, **opts)
    return fmt.parse(text, source=f"generate:{kind}")


def generate_text(kind: str, *, seed: int, size: int | str | None = None, **opts: Any) -> str:
    """The generated trace as JSON Lines with region handles (``format.dumps(generate(...))`` gives the
    resolved at-form)."""
    if kind not in _GEN:
        raise ThpsimError(f"unknown workload kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ThpsimError("the seed must be an integer")
    nbytes = _DEFAULT_SIZE[kind] if size is None else fmt.parse_size(size, fld="size")
    if nbytes < 4 * MiB:
        raise ThpsimError(f"size {fmt.format_size(nbytes)} is too small: use at least 4M")
    if nbytes > 64 * GiB:
        raise ThpsimError(f"size {fmt.format_size(nbytes)} is too large for the 512 GiB arena: use at most 64G")
    b = _Builder(kind, seed, nbytes, dict(opts))
    desc = _GEN[kind](b)
    known = _OPTIONS[kind]
    for k in opts:
        if k not in known:
            raise ThpsimError(f"generator {kind!r} has no option {k!r}; options: {', '.join(known) or 'none'}")
    text = b.text(desc)
    try:
        fmt.parse(text, source=f"generate:{kind}")
    except TraceError as e:   # a generator bug: report it cleanly
        raise ThpsimError(f"generator {kind!r} produced an invalid trace ({e}); please report this") from None
    return text


_OPTIONS: dict[str, tuple[str, ...]] = {
    "allocator-churn": ("arenas", "steps", "free_ratio", "khugepaged_every"),
    "fork-snapshot": ("snapshots", "writes_per_chunk", "chunk"),
    "managed-heap": ("gcs", "guard"),
    "buffer-pool": ("rounds", "partial_ratio"),
    "short-lived": ("children", "overlap"),
}
