"""The series' own kselftest (v3 patches 19-24: tools/testing/selftests/mm/thp_pmd_split_test.c), compiled
from a lab kernel's tree and run inside its guest — the C test beside thpsim's Python port of it
(``thpsim selftest --live``).

The posted test was written against mm-unstable; on Debian's 7.3.4 two names differ and are adapted in a
copy of the file (the tree is not modified): ``thp_settings.h`` is ``hugepage_settings.h`` there, and
``check_huge_anon()`` takes the range length as its second argument
(``check_huge_anon(addr, len, nr_hpages, hpage_size)``). Nothing else changes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from thpsim.errors import ThpsimError
from thpsim.lab.apt import LabStepError
from thpsim.lab.build import BuiltKernel, source_tree

__all__ = ["build_kselftest", "ADAPTATIONS"]

TEST = "tools/testing/selftests/mm/thp_pmd_split_test.c"
ADAPTATIONS = ((' "thp_settings.h"', ' "hugepage_settings.h"'),
               ("check_huge_anon(aligned, 1, pmdsize)", "check_huge_anon(aligned, pmdsize, 1, pmdsize)"))


def build_kselftest(bk: BuiltKernel) -> Path:
    """Compile the series' thp_pmd_split_test for ``bk``; return the binary (cached beside the build)."""
    tree = source_tree(bk)
    mm = tree / "tools/testing/selftests/mm"
    src = tree / TEST
    if not src.exists():
        raise ThpsimError(f"{bk.name} has no {TEST}: the series (v3 patch 19) is not applied to it")
    out = Path(bk.directory) / "kselftest"
    out.mkdir(exist_ok=True)
    binary = out / "thp_pmd_split_test"
    text = src.read_text()
    for old, new in ADAPTATIONS:
        if old in text and not (mm / "thp_settings.h").exists():
            text = text.replace(old, new)
    copy = out / "thp_pmd_split_test.c"
    if binary.exists() and copy.exists() and copy.read_text() == text:
        return binary
    copy.write_text(text)
    log = out / "build.log"
    with open(log, "w") as f:
        r = subprocess.run(["gcc", "-O2", "-Wall", "-I", str(mm), "-I", str(mm.parent), "-isystem",
                            str(tree / "tools/include"), "-isystem", str(tree / "tools/include/uapi"),
                            "-o", str(binary), str(copy), str(mm / "vm_util.c"), str(mm / "hugepage_settings.c")],
                           stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise LabStepError("kselftest build", f"gcc exited {r.returncode}", log)
    return binary
