"""The open problems of the v3 review (spec series.md checklist 35-38, §8) as named, reproducible scenarios with
numbers, each run under the lazy design and its variants side by side.

* ``zap-skip`` (Kiryl, 05/24): a partial MADV_DONTNEED whose split fails returns 0 and leaves the data.
* ``mprotect-retry`` (Kiryl, 07/24): change_pmd_range retries a failed split of the same PMD with no bound and no
  fatal-signal check; the model stops at its retry bound (``max_retries``) and reports a livelock.
* ``hugh-reclaim`` (Hugh Dickins): reclaiming (swap) one anon THP mapped by N forked processes under a page budget
  needs N table allocations from the PF_MEMALLOC reserves; if allocation k fails, k−1 reserve pages are consumed
  and nothing is freed.
* ``must-check`` (Kiryl, 16/24: "I think we want the same __must_check annotation on stubs for CONFIG_THP=n"):
  which declarations of ``__split_huge_pmd``, ``split_huge_pmd`` and ``split_huge_pmd_address`` in the series'
  ``include/linux/huge_mm.h`` carry ``__must_check``, for CONFIG_TRANSPARENT_HUGEPAGE=y and for the =n stubs
  (read from a patched tree: the lab's ``lazy-v3-7.3`` build, or ``--tree``); and, as the model's own habit,
  whether every split call in the model sources checks its result (an AST scan).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thpsim.model import invariants
from thpsim.model.design import VARIANTS
from thpsim.model.engine import Simulator, make_kernel, run_model
from thpsim.model.kernel import Kernel
from thpsim.model.page_alloc import FailPolicy
from thpsim.observation import ContractRule
from thpsim.trace.format import KiB, Trace, parse

PROBLEMS = ("zap-skip", "mprotect-retry", "hugh-reclaim", "must-check")
# the split primitives whose result must be checked (the series' __must_check functions and their model helpers)
# (split_folio is a folio split, not one of them: the kernel ignores its result in several places too)
MUST_CHECK = ("__split_huge_pmd", "split_huge_pmd_address", "split_huge_pmd_if_needed", "vma_adjust_trans_huge",
              "split_vma", "split_range", "wp_huge_pmd")
MODEL_DIR = Path(__file__).resolve().parent.parent / "model"


@dataclass(frozen=True)
class ReviewRow:
    problem: str
    design: str
    scenario: str
    result: Any
    numbers: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""


def _trace(name: str, ops: list[dict[str, Any]], kernel: dict[str, Any] | None = None) -> Trace:
    hdr: dict[str, Any] = {"thpsim": 1, "name": name}
    if kernel:
        hdr["kernel"] = kernel
    return parse("\n".join(json.dumps(o) for o in [hdr, *ops]), source=name)


THP: list[dict[str, Any]] = [{"op": "mmap", "id": "a", "len": "2M"}, {"op": "madvise", "id": "a", "advice": "hugepage"},
                              {"op": "write", "id": "a", "fill": True, "byte": 0xDD}]


def zap_skip_trace() -> Trace:
    return _trace("review-zap-skip", [*THP, {"op": "madvise", "id": "a", "off": "4K", "len": "4K",
                                             "advice": "dontneed"},
                                      {"op": "read", "id": "a", "off": "4K", "len": "4K"}])


def mprotect_retry_trace() -> Trace:
    return _trace("review-mprotect-retry", [*THP, {"op": "uffd_register", "id": "a"},
                                            {"op": "uffd_wp", "id": "a", "off": "4K", "len": "4K"},
                                            {"op": "mprotect", "id": "a", "off": "4K", "len": "4K", "prot": "r"}])


def hugh_trace(n: int) -> Trace:
    """One anon THP mapped by ``n`` processes (main + n−1 forked children), then reclaimed with swap."""
    if n < 1:
        raise ValueError("hugh-reclaim needs at least one process")
    ops: list[dict[str, Any]] = [*THP, *({"op": "fork", "child": f"c{i}"} for i in range(1, n)),
                                 {"op": "reclaim", "id": "a"}]
    return _trace(f"review-hugh-reclaim-{n}", ops, kernel={"swap": True})


def zap_skip(design: str) -> ReviewRow:
    t = zap_skip_trace()
    run = run_model(t, design=design, policy=FailPolicy(fail_nth=1, fail_site="pte_alloc_one@split"), check=True,
                    shadow=True)
    st = run.steps[3]
    ev = run.kernel.vmstat.events if run.kernel else {}
    kept = [v.violation for v in run.contract_violations if v.violation.rule is ContractRule.STILL_HOLDS_DATA]
    nums = {"madvise_result": st.result, "thp_split_pmd_failed": ev.get("thp_split_pmd_failed", 0),
            "pages_not_zeroed": 1 if any((v.start, v.end) == (4 * KiB, 8 * KiB) for v in kept) else 0,
            "violations": len(run.contract_violations),
            "read_digest_after": run.steps[4].data}
    if st.result == 0 and kept:
        verdict = "returns 0 but the 4 KiB range keeps its data (Kiryl: callers expect zeroed memory)"
    elif st.result == 0:
        verdict = "returns 0 and the range reads zero (contract kept)"
    else:
        verdict = f"fails with {st.result}; nothing zapped, no silent data (the caller is told)"
    return ReviewRow("zap-skip", design, t.header.name, st.result, nums, verdict)


def mprotect_retry(design: str, *, max_retries: int = 1000) -> ReviewRow:
    t = mprotect_retry_trace()
    run = run_model(t, design=design, policy=FailPolicy(persistent_site="pte_alloc_one@split"), check=True,
                    shadow=True, max_retries=max_retries)
    k = run.kernel
    assert k is not None
    st = run.steps[4]
    attempts = len(run.logs[4].failed_sites)   # failed split allocations during the uffd_wp step
    nums = {"uffd_wp_result": st.result, "split_attempts": attempts, "model_bound": max_retries,
            "errno_returned": st.result if isinstance(st.result, str) and st.result != "LIVELOCK" else None,
            "mprotect_result": run.steps[5].result, "thp_split_pmd_failed": k.vmstat.events["thp_split_pmd_failed"]}
    if st.result == "LIVELOCK":
        verdict = (f"no error: the same PMD was retried {max_retries} times (the model's bound; the kernel has none "
                   "and no fatal-signal check)")
    elif st.result == "ENOMEM":
        verdict = "splits up front and fails with ENOMEM before changing anything (Kiryl's suggestion)"
    else:
        verdict = f"returns {st.result}"
    return ReviewRow("mprotect-retry", design, t.header.name, st.result, nums, verdict)


def _hugh_run(t: Trace, design: str, policy: FailPolicy | None) -> tuple[Kernel, Any, list[str]]:
    """Run the Hugh trace without per-step observations (N processes × N steps would be quadratic); the
    invariants are checked once at the end."""
    k = make_kernel(design=design, policy=policy, overrides=t.header.kernel)
    sim = Simulator(k)
    result: Any = None
    for op in t.ops:
        result, _ = sim.execute(op)
    return k, result, invariants.check(k)


def hugh_reclaim(design: str, *, n: int = 1000, reserve_pages: int | None = None) -> ReviewRow:
    """Budget = the pages in use just before reclaim (so every allocation in reclaim needs the reserves);
    reserves default to n // 2 (Hugh's "allocation #501 fails")."""
    t = hugh_trace(n)
    setup = Trace(t.header, t.ops[:-1], t.source)
    k0, _, _ = _hugh_run(setup, design, None)
    budget = k0.alloc.peak_pages
    r = n // 2 if reserve_pages is None else reserve_pages
    k, result, errs = _hugh_run(t, design, FailPolicy(budget_pages=budget, reserve_pages=r))
    tables = [x for x in k.alloc.log if x.site.startswith("pte_alloc_one@rmap_prealloc")]
    # one allocator call per rmap_one call; the walk ends at the call that found no table (under the pool
    # variant a failed allocator call that the pool covered is not a failure)
    failed_at = len(tables) if k.vmstat.events["thp_split_pmd_failed"] else None
    nums = {"N": n, "reserve_pages": r, "budget_pages": budget, "table_allocs": len(tables),
            "failed_at_alloc": failed_at, "reserve_used_after": k.alloc.reserve_used,
            "reserve_peak": k.alloc.reserve_peak, "pages_freed": budget - k.alloc.pages_in_use,
            "result": result, "thp_split_pmd": k.vmstat.events["thp_split_pmd"],
            "thp_split_pmd_failed": k.vmstat.events["thp_split_pmd_failed"],
            "thp_swpout": k.vmstat.events["thp_swpout"],
            "pool_tables": k.design.reserve_pool_size if k.design.rmap_tables == "reserve_pool" else 0,
            "invariant_violations": len(errs)}
    if failed_at:
        pool = f" (the pool's {nums['pool_tables']} tables used first)" if nums["pool_tables"] else ""
        verdict = (f"no table for rmap_one call #{failed_at} of {n}{pool}: {k.alloc.reserve_used} reserve pages "
                   f"consumed, {max(0, nums['pages_freed'])} pages freed, the THP stays allocated")
    elif result:
        verdict = (f"swapped out: {len(tables)} tables allocated in reclaim ({k.alloc.reserve_peak} from the "
                   f"reserves), {nums['pages_freed']} pages freed")
    else:
        verdict = "not reclaimed"
    return ReviewRow("hugh-reclaim", design, t.header.name, result, nums, verdict)


@dataclass(frozen=True)
class CallSite:
    file: str
    line: int
    func: str
    checked: bool


def split_call_sites(model_dir: Path = MODEL_DIR) -> list[CallSite]:
    """Every call of a MUST_CHECK function in the model sources; ``checked`` is False when the call is a bare
    expression statement (its result discarded)."""
    out: list[CallSite] = []
    for path in sorted(model_dir.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in MUST_CHECK:
                out.append(CallSite(path.name, node.lineno, name, id(node) not in bare))
    return sorted(out, key=lambda c: (c.file, c.line))


SPLIT_DECLS = ("__split_huge_pmd", "split_huge_pmd", "split_huge_pmd_address")   # v3 16/24's three
SERIES_TREE_KERNEL = "lazy-v3-7.3"
_DECL = re.compile(r"^(?P<pre>(?:static\s+inline\s+)?(?:int|void)\s+(?:__must_check\s+)?)"
                   r"(?P<name>__split_huge_pmd|split_huge_pmd|split_huge_pmd_address)\s*\(")
_MACRO = re.compile(r"^#\s*define\s+(?P<name>__split_huge_pmd|split_huge_pmd|split_huge_pmd_address)\s*\(")
_THP_IF = re.compile(r"^#\s*(?P<kw>ifdef|ifndef|if)\b(?P<cond>.*)")


@dataclass(frozen=True)
class SplitDecl:
    """One declaration of a split function in huge_mm.h: under which CONFIG_TRANSPARENT_HUGEPAGE setting
    ("y", "n", or "any" outside a THP conditional) and whether it is ``__must_check``."""

    func: str
    thp: str
    line: int
    must_check: bool


def huge_mm_split_decls(text: str) -> list[SplitDecl]:
    """The declarations of SPLIT_DECLS in a huge_mm.h text, with the THP branch each is in (``#ifdef
    CONFIG_TRANSPARENT_HUGEPAGE`` / ``#else`` / ``#endif``, nesting followed; a ``#define`` has no
    ``__must_check``)."""
    stack: list[tuple[bool | None, bool]] = []   # (the branch is THP=y / THP=n / not a THP conditional, else seen)
    out: list[SplitDecl] = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _THP_IF.match(line)
        if m:
            cond = m.group("cond")
            thp = "CONFIG_TRANSPARENT_HUGEPAGE" in cond and "&&" not in cond and "||" not in cond
            positive = m.group("kw") != "ifndef" and not cond.strip().startswith("!")
            stack.append((positive if thp else None, False))
            continue
        if re.match(r"^#\s*(else|elif)\b", line) and stack:
            pos, _ = stack[-1]
            stack[-1] = (None if pos is None else not pos, True)
            continue
        if re.match(r"^#\s*endif\b", line) and stack:
            stack.pop()
            continue
        branch = next((pos for pos, _ in reversed(stack) if pos is not None), None)
        where = "any" if branch is None else ("y" if branch else "n")
        d = _DECL.match(line)
        if d:
            out.append(SplitDecl(d.group("name"), where, no, "__must_check" in d.group("pre")))
            continue
        mm = _MACRO.match(line)
        if mm:
            out.append(SplitDecl(mm.group("name"), where, no, False))
    return out


def series_tree() -> Path | None:
    """The patched source tree of the lab's lazy series build, if it was built."""
    from thpsim.lab.build import find_built, source_tree

    bk = find_built(SERIES_TREE_KERNEL)
    return source_tree(bk) if bk is not None else None


def must_check(design: str, tree: Path | None = None) -> ReviewRow:
    sites = split_call_sites()
    bad = [s for s in sites if not s.checked]
    nums: dict[str, Any] = {"call_sites": len(sites), "unchecked": len(bad),
                            "unchecked_sites": [f"{s.file}:{s.line} {s.func}" for s in bad]}
    model = ("every split call in the model checks its result" if not bad else
             f"{len(bad)} model call(s) discard the result: " + ", ".join(nums["unchecked_sites"]))
    header = tree / "include" / "linux" / "huge_mm.h" if tree is not None else None
    if header is None or not header.is_file():
        where = f"{header} does not exist" if header is not None else \
            f"no series tree (build it: thpsim lab build {SERIES_TREE_KERNEL}, or pass --tree DIR)"
        nums["header"] = None
        return ReviewRow("must-check", design, "model sources", len(bad), nums,
                         f"the series' THP=n stubs not checked: {where}; {model}")
    decls = huge_mm_split_decls(header.read_text(encoding="utf-8", errors="replace"))
    nums["header"] = str(header)
    for cfg in ("y", "n"):
        nums[f"thp_{cfg}"] = {d.func: d.must_check for d in decls if d.thp in (cfg, "any")}
    missing = [f"{f} (THP={cfg})" for cfg in ("y", "n") for f in SPLIT_DECLS
               if not nums[f"thp_{cfg}"].get(f, False)]
    nums["without_must_check"] = missing
    verdict = ("every declaration of the three split functions is __must_check" if not missing else
               f"{len(missing)} declaration(s) without __must_check: {', '.join(missing)}"
               + (" — an unchecked call builds without a warning when THP=n" if any("THP=n" in m for m in missing)
                  else ""))
    return ReviewRow("must-check", design, "huge_mm.h + model sources", len(missing) + len(bad), nums,
                     f"{verdict}; {model}")


def review_table(designs: tuple[str, ...] = ("lazy", *VARIANTS), *, problems: tuple[str, ...] = PROBLEMS,
                 n: int = 1000, reserve_pages: int | None = None, tree: Path | None = None) -> list[ReviewRow]:
    """``tree``: the series' patched kernel tree for the must-check row (default: the lab's build, if any)."""
    rows: list[ReviewRow] = []
    if "must-check" in problems and tree is None:
        tree = series_tree()
    for p in problems:
        for d in designs:
            if p == "zap-skip":
                rows.append(zap_skip(d))
            elif p == "mprotect-retry":
                rows.append(mprotect_retry(d))
            elif p == "hugh-reclaim":
                rows.append(hugh_reclaim(d, n=n, reserve_pages=reserve_pages))
            elif p == "must-check":
                rows.append(must_check(d, tree))
            else:
                raise ValueError(f"unknown review problem {p!r}; problems: {', '.join(PROBLEMS)}")
    return rows


def format_review(rows: list[ReviewRow]) -> str:
    table = [("problem", "design", "result", "verdict")]
    for r in rows:
        table.append((r.problem, r.design, str(r.result), r.verdict))
    w = [max(len(t[i]) for t in table) for i in range(3)]
    out = ["  ".join(v.ljust(x) for v, x in zip(t[:3], w, strict=True)) + "  " + t[3] for t in table]
    out.append("")
    for r in rows:
        nums = ", ".join(f"{k}={v}" for k, v in r.numbers.items() if k != "unchecked_sites")
        out.append(f"{r.problem} / {r.design} ({r.scenario}): {nums}")
    return "\n".join(out)
