"""Debian packages for the kernel lab, fetched with apt through a private configuration.

The host's apt sources, lists, cache and installed packages are never touched: every call runs with
``APT_CONFIG`` pointing at a configuration under the lab cache (its own sources list, lists, archive cache
and an empty dpkg status), and packages are only downloaded (``apt-get download``) and unpacked into the
cache with ``dpkg-deb -x``, never installed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from thpsim.errors import ThpsimError

__all__ = ["AptWorkspace", "LabStepError"]

MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class LabStepError(ThpsimError):
    """A lab step failed: the message names the step and the log that holds the details."""

    def __init__(self, step: str, reason: str, log: Path | None = None) -> None:
        self.step = step
        self.log = log
        super().__init__(f"lab {step} failed: {reason}" + (f" (log: {log})" if log else ""))


class AptWorkspace:
    """A private apt configuration for a set of Debian suites, rooted at ``root``."""

    def __init__(self, root: Path, suites: tuple[str, ...], arch: str = "amd64") -> None:
        self.root = root
        self.suites = tuple(dict.fromkeys(suites))
        self.arch = arch
        self.conf = root / "apt.conf"
        self.log = root / "apt.log"

    def _setup(self) -> None:
        for d in ("lists/partial", "cache/archives/partial", "debs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        sources = "".join(f"deb [arch={self.arch} signed-by={KEYRING}] {MIRROR} {s} main\n" for s in self.suites)
        (self.root / "sources.list").write_text(sources)
        (self.root / "status").touch()
        self.conf.write_text(
            f'Dir::Etc::SourceList "{self.root}/sources.list";\n'
            'Dir::Etc::SourceParts "/nonexistent";\n'
            f'Dir::State::Lists "{self.root}/lists";\n'
            f'Dir::Cache "{self.root}/cache";\n'
            f'Dir::State::status "{self.root}/status";\n'
            f'APT::Architecture "{self.arch}";\n'
            f'APT::Architectures {{ "{self.arch}"; }};\n'
            'Acquire::Languages "none";\n')

    def _apt(self, *argv: str, cwd: Path | None = None) -> str:
        env = dict(os.environ, APT_CONFIG=str(self.conf), DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            try:
                p = subprocess.run(list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=log, text=True,
                                   timeout=1800)
            except FileNotFoundError as e:
                raise LabStepError("fetch", f"{argv[0]} is not installed (the lab needs apt and dpkg)") from e
            except subprocess.TimeoutExpired as e:
                raise LabStepError("fetch", f"{' '.join(argv[:2])} timed out", self.log) from e
            log.write(p.stdout)
        if p.returncode != 0:
            raise LabStepError("fetch", f"{' '.join(argv[:3])} exited {p.returncode}", self.log)
        return p.stdout

    def update(self) -> None:
        self._setup()
        if not Path(KEYRING).exists():
            raise LabStepError("fetch", f"{KEYRING} is missing: apt-get install debian-archive-keyring")
        self._apt("apt-get", "update", "-q")

    def version(self, package: str) -> str:
        """The candidate version of ``package`` in the configured suites."""
        out = self._apt("apt-cache", "policy", package)
        m = re.search(r"Candidate:\s*(\S+)", out)
        if not m or m.group(1) == "(none)":
            raise LabStepError("fetch", f"package {package} is not in {', '.join(self.suites)}", self.log)
        return m.group(1)

    def depends(self, package: str) -> list[str]:
        out = self._apt("apt-cache", "depends", "--no-recommends", "--no-suggests", package)
        return [m.group(1) for m in re.finditer(r"^\s+Depends:\s*(\S+)", out, re.M)]

    def download(self, package: str) -> Path:
        """Download one package (cached by name and version); return the .deb path."""
        ver = self.version(package)
        debs = self.root / "debs"
        stem = f"{package}_{ver.replace(':', '%3a')}_"
        for f in debs.glob(stem + "*.deb"):
            return f
        self._apt("apt-get", "download", "-q", f"{package}={ver}", cwd=debs)
        for f in debs.glob(stem + "*.deb"):
            return f
        raise LabStepError("fetch", f"apt-get download {package} left no .deb in {debs}", self.log)

    def extract(self, deb: Path, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            p = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], stdout=log, stderr=log)
        if p.returncode != 0:
            raise LabStepError("fetch", f"dpkg-deb -x {deb.name} failed", self.log)
        return dest
