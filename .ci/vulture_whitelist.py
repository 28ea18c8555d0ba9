"""vulture false positives: names that are used, but not in a way vulture can see.

Run: ``vulture src/ .ci/vulture_whitelist.py --min-confidence 60 --ignore-decorators @_op`` (tests/test_static_checks.py).
The op handlers of model/engine.py are registered by the ``@_op`` decorator (hence --ignore-decorators).
Each entry says why it stays; remove an entry when the code it names goes.
"""
# ruff: noqa
_ = object()

# ---- dataclass / record fields: read through asdict(), JSON output, reports or tests ---------------------------
alloc_no  # analysis/campaign.py Point (campaign JSON)
baseline_results  # analysis/campaign.py (campaign JSON)
retried  # analysis/diff.py (diff JSON / report)
deposit_kept  # analysis/estimate.py (estimate JSON)
extra_mappings  # analysis/estimate.py
thp_zero_page_alloc  # analysis/estimate.py
op_index  # analysis/realcheck.py SamplePoint
op_results  # analysis/selftest.py
config_sha256  # lab/build.py (build manifest JSON)
options  # lab/build.py
boot_seconds  # lab/guest.py GuestResult
run_seconds  # lab/guest.py GuestResult
page_size_kb  # lab/kernels.py KernelSpec
shmem_enabled  # live/env.py LiveEnv (recorded environment)
mthp_enabled  # live/env.py LiveEnv
used_for  # live/features.py Feature (docs table)
without  # live/features.py Feature
exclusive  # live/pagemap.py PageInfo
rss_kb  # observation.py StepObs (observation record)
anonymous_kb  # observation.py
lazyfree_kb  # observation.py
locked_kb  # observation.py
swap_kb  # observation.py
strace_log  # trace/record.py Recording (recording JSON)
perf_faults  # trace/record.py

# ---- methods and properties used by tests and reports ----------------------------------------------------------
_.by_design  # analysis/compare.py, used by tests/test_series_tools.py
_.series_values  # analysis/report.py, used by tests/test_report.py
_.patched  # lab/build.py BuiltKernel, shown by `thpsim lab list`

# ---- protocol signatures and kernel ABI constants --------------------------------------------------------------
signum  # cli.py signal handler signature (signal.signal)
exc  # live/pagemap.py __exit__(*exc)
_._sock  # live/_child.py keeps the socket object alive
PROT_EXEC  # live/syscalls.py: the uapi constant table
UFFD_FEATURE_WP_UNPOPULATED  # live/syscalls.py: uapi constant (WP_ASYNC implies it; named for the docs)
PROT_NONE
PAGE_IS_WPALLOWED
PAGE_IS_WRITTEN
PAGE_IS_SOFT_DIRTY
PM_SOFT_DIRTY
PM_UFFD_WP
PM_FILE
KPF_COMPOUND_HEAD
KPF_COMPOUND_TAIL
KPF_HUGE

# ---- kernel knobs: part of the trace format (header "kernel" overrides) and of LiveEnv.knobs() ----------------
max_ptes_swap  # model/knobs.py: khugepaged/max_ptes_swap, validated per arch by Kernel (EINVAL above HPAGE_PMD_NR-1)
_.max_ptes_swap  # model/kernel.py: resolved default (HPAGE_PMD_NR / 8); khugepaged's swap-PTE limit is not modelled
no_page_mapcount  # model/knobs.py: CONFIG_NO_PAGE_MAPCOUNT, filled by live/env.py, not yet read by the model

# ---- dead, but in files this branch may not edit (issue 12: the cli split removes it) --------------------------
as_json  # cli.py _report_expectations(..., as_json): unused parameter

# ---- dispatched by name ----------------------------------------------------------------------------------------
# trace/strace.py: _Sim handlers, called as getattr(self, "_" + syscall name)
_._brk
_._munmap
_._pkey_mprotect
_._madvise
_._mlock_2
_._munlock
_._mremap
_._fork
_._vfork
MODEL_ONLY  # model/engine.py, used by tests/test_model_optable.py
_uffd_register  # live/_child.py and model/engine.py: registered by @_live / @_op into CHILD_OPS / OPS
_uffd_wp  # live/_child.py: registered by @_live into CHILD_OPS
_uffd_unregister  # live/_child.py: registered by @_live into CHILD_OPS
_.final_states  # analysis/races.py RaceResult field: in --json output and tests
_.free_clusters  # model/swapfile.py SwapSpace: what /proc/swaps would show; read by tests/model/test_swapfile.py
