"""The page allocator with fault injection (mm/page_alloc.c, mm/fail_page_alloc.c, lib/fault-inject.c).

Every allocation in the model goes through :meth:`PageAllocator.alloc` with a *named site*
(``pte_alloc_one@split``, ``pte_alloc_one@fault``, ``__pte_alloc``, ``folio@thp_fault``, ...). A
:class:`FailPolicy` decides failures like ``should_fail_ex``: per-task ``fail_nth`` first (globally or counted
at one site), then probability (seeded RNG), interval and times. A page budget models a memcg limit (tables and
folios both charge it; frees uncharge), and PF_MEMALLOC reserves let reclaim-context allocations dip below the
budget until the reserves are consumed (Hugh Dickins' reclaim concern). Every failure is a return value the
caller handles; the allocator keeps a log so campaigns can enumerate allocation points.

Op-scoped injection (a trace op's ``inject`` field, matched on a lab kernel by ``fail_page_alloc``): an
:class:`InjectPoint` names a kernel allocation point and the model sites it covers; :meth:`PageAllocator.arm`
fails the first ``times`` allocations at those sites until :meth:`PageAllocator.disarm`, and records which
sites failed (as the kernel function that called the allocator: :data:`SITE_CALLER`).

Follows Linux 6.18 / 7.3.4 fail_page_alloc semantics.
Left out: GFP flag filters (ignore-gfp-wait/highmem, min-order) — the model's sites are what you choose to fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from thpsim.errors import ThpsimError

__all__ = ["AllocRecord", "FailPolicy", "INJECT_POINTS", "InjectPoint", "PageAllocator", "SITES",
           "SITE_CALLER"]

# Site names. Tables: pte_alloc_one@<caller> for the split/deposit tables, __pte_alloc / __pmd_alloc /
# __pud_alloc for ordinary tables. Folios: folio@<caller>.
SITES = (
    "pte_alloc_one@split", "pte_alloc_one@fault", "pte_alloc_one@huge_zero", "pte_alloc_one@fork",
    "pte_alloc_one@rmap_prealloc", "pte_alloc_one@reserve_pool", "__pte_alloc", "__pmd_alloc", "__pud_alloc",
    "folio@thp_fault", "folio@fault", "folio@cow", "folio@collapse", "folio@huge_zero", "folio@migrate_device",
    "folio@swapin",
)


# The kernel function that calls the allocator for each model site (7.3.4 + v3): what a failed allocation's
# stack shows on a live kernel (thpsim.live.inject classifies stacks with the same table).
SITE_CALLER: dict[str, str] = {
    "pte_alloc_one@split": "__split_huge_pmd",            # v3 01/17: allocated before the PMD lock
    "pte_alloc_one@fault": "do_huge_pmd_anonymous_page",  # the deposit (__do_huge_pmd_anonymous_page, inlined)
    "pte_alloc_one@huge_zero": "do_huge_pmd_anonymous_page",
    "pte_alloc_one@fork": "copy_huge_pmd",
    "pte_alloc_one@rmap_prealloc": "try_to_unmap_one",    # v3 17: prealloc_pte in try_to_unmap_one
    "pte_alloc_one@reserve_pool": "thpsim_reserve_pool",  # a model-only variant: no kernel function
    "__pte_alloc": "__pte_alloc",
    "__pmd_alloc": "__pmd_alloc",
    "__pud_alloc": "__pud_alloc",
    "folio@thp_fault": "do_huge_pmd_anonymous_page",
    "folio@collapse": "collapse_huge_page",
    "folio@huge_zero": "get_huge_zero_folio",
    "folio@fault": "do_anonymous_page",
    "folio@cow": "wp_page_copy",
    "folio@migrate_device": "dmirror_devmem_alloc_page",  # the device driver's page (lib/test_hmm.c), model-only
    "folio@swapin": "do_huge_pmd_swap_page",             # lazy-pmd-swap (model-only): the PMD-order swap-in
}


@dataclass(frozen=True)
class InjectPoint:
    """A kernel allocation point a trace op can fail, and how both engines fail it.

    ``kernel_function``: fail_page_alloc's stack filter (require-start/end = that function's text);
    ``min_order``: fail_page_alloc's min-order; ``sites``: the model site prefixes it covers."""

    name: str
    kernel_function: str | None
    min_order: int
    sites: tuple[str, ...]
    description: str


INJECT_POINTS: dict[str, InjectPoint] = {p.name: p for p in (
    InjectPoint("pte_alloc_one", "pte_alloc_one", 0, ("pte_alloc_one@", "__pte_alloc"),
                "every PTE page table: the deposit, the series' split table, rmap's prealloc, fork's copy, "
                "and __pte_alloc (which calls pte_alloc_one)"),
    InjectPoint("thp_folio", None, 9, ("folio@thp_fault", "folio@collapse", "folio@huge_zero"),
                "every order-9 (PMD-sized) page allocation: THP folios at fault and collapse, the huge zero folio"),
)}


@dataclass(frozen=True)
class FailPolicy:
    fail_nth: int | None = None          # fail the n-th counted allocation (1-based), once
    fail_site: str | None = None         # count (and fail) only allocations at this site (prefix match "pte_alloc_one")
    probability: float = 0.0             # 0..1, with the injected seeded RNG
    interval: int = 1                    # only every interval-th counted call may fail
    times: int = -1                      # at most this many injected failures (-1 unlimited)
    persistent_site: str | None = None   # every allocation at this site fails (persistent pressure)
    budget_pages: int | None = None      # memcg-like limit on pages in use
    reserve_pages: int = 0               # PF_MEMALLOC reserves usable beyond the budget
    seed: int = 0

    def __post_init__(self) -> None:
        if self.fail_nth is not None and self.fail_nth < 1:
            raise ThpsimError("--fail-nth counts from 1")
        if not 0.0 <= self.probability <= 1.0:
            raise ThpsimError("--fail-prob must be between 0 and 1")
        if self.interval < 1:
            raise ThpsimError("--fail-interval must be at least 1")
        for s in (self.fail_site, self.persistent_site):
            if s is not None and not any(x.startswith(s) for x in SITES):
                raise ThpsimError(f"unknown allocation site {s!r}; sites: {', '.join(SITES)}")

    @property
    def active(self) -> bool:
        return (self.fail_nth is not None or self.probability > 0 or self.persistent_site is not None
                or self.budget_pages is not None)


@dataclass(slots=True)
class AllocRecord:
    n: int            # global allocation number (1-based)
    site: str
    pages: int
    ok: bool
    memalloc: bool


@dataclass
class PageAllocator:
    policy: FailPolicy = field(default_factory=FailPolicy)
    pages_in_use: int = 0
    peak_pages: int = 0
    reserve_used: int = 0
    reserve_peak: int = 0
    counted: int = 0
    injected: int = 0
    log: list[AllocRecord] = field(default_factory=list)
    keep_log: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.policy.seed)
        self.per_site: dict[str, int] = {}
        self._inactive = not self.policy.active   # fast path: no injection, no budget
        self.armed: InjectPoint | None = None
        self.armed_left = 0
        self.armed_failed: list[str] = []

    def set_policy(self, policy: FailPolicy, *, counted: int) -> None:
        """Replace the failure policy mid-run (a campaign resuming from a checkpoint): ``counted`` allocations
        have already matched the new policy's filter, as if it had been in force from the start."""
        self.policy = policy
        self.counted = counted
        self._inactive = not policy.active and self.armed is None

    def arm(self, point: InjectPoint, times: int) -> None:
        """Fail the next ``times`` allocations at ``point``'s sites (an op's ``inject``) until disarm()."""
        self.armed, self.armed_left, self.armed_failed = point, times, []
        self._inactive = False

    def disarm(self) -> tuple[str, ...]:
        """End the armed window; the kernel callers of the allocations it failed, in order."""
        failed = tuple(SITE_CALLER.get(s, s) for s in self.armed_failed)
        self.armed, self.armed_left, self.armed_failed = None, 0, []
        self._inactive = not self.policy.active
        return failed

    def _armed_fails(self, site: str) -> bool:
        a = self.armed
        if a is None or self.armed_left == 0 or not site.startswith(a.sites):
            return False
        self.armed_left -= 1
        self.armed_failed.append(site)
        return True

    def _matches(self, site: str, pattern: str | None) -> bool:
        return pattern is None or site.startswith(pattern)

    def _should_fail(self, site: str) -> bool:
        p = self.policy
        if p.persistent_site is not None and site.startswith(p.persistent_site):
            return True
        if not self._matches(site, p.fail_site):
            return False
        self.counted += 1
        if p.fail_nth is not None:
            return self.counted == p.fail_nth
        if p.probability <= 0:
            return False
        if p.times >= 0 and self.injected >= p.times:
            return False
        if self.counted % p.interval:
            return False
        return self.rng.random() < p.probability

    def alloc(self, site: str, pages: int = 1, *, memalloc: bool = False) -> bool:
        """Try to allocate ``pages`` pages at ``site``. Returns False on (injected or budget) failure."""
        self.per_site[site] = self.per_site.get(site, 0) + 1
        if self._inactive:
            fs = self.policy.fail_site
            if fs is None or site.startswith(fs):
                self.counted += 1     # allocation points are still counted (campaigns enumerate them)
            self.pages_in_use += pages
            if self.pages_in_use > self.peak_pages:
                self.peak_pages = self.pages_in_use
            if self.keep_log:
                self.log.append(AllocRecord(len(self.log) + 1, site, pages, True, memalloc))
            return True
        ok = not (self._armed_fails(site) or self._should_fail(site))
        if not ok:
            self.injected += 1
        elif self.policy.budget_pages is not None and self.pages_in_use + pages > self.policy.budget_pages:
            room = self.policy.reserve_pages - self.reserve_used
            if memalloc and room >= pages:
                self.reserve_used += pages
                self.reserve_peak = max(self.reserve_peak, self.reserve_used)
            else:
                ok = False
        if ok:
            self.pages_in_use += pages
            self.peak_pages = max(self.peak_pages, self.pages_in_use)
        if self.keep_log:
            self.log.append(AllocRecord(len(self.log) + 1, site, pages, ok, memalloc))
        return ok

    def free(self, pages: int = 1) -> None:
        self.pages_in_use -= pages
        # pages freed while reserves are in use replenish the reserves first
        if self.reserve_used:
            back = min(self.reserve_used, pages)
            self.reserve_used -= back
