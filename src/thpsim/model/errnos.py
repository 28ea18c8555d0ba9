"""The kernel's negative errno returns, as the model's functions give them (include/uapi/asm-generic/errno-base.h
and errno.h; x86-64 and arm64 share these values). One place, so that no module keeps its own copy; the engine
turns a negative return into the errno name (``errno.errorcode``) for observations. The values are Linux's uapi ones (unchanged in 6.18 / 7.3.4).
Left out: errnos the model never returns, and the arches whose values differ (alpha, mips, parisc, sparc).
"""

from __future__ import annotations

import errno as _e

ENOENT = -_e.ENOENT      # -2
EAGAIN = -_e.EAGAIN      # -11
ENOMEM = -_e.ENOMEM      # -12
EFAULT = -_e.EFAULT      # -14
EBUSY = -_e.EBUSY        # -16
EEXIST = -_e.EEXIST      # -17
EINVAL = -_e.EINVAL      # -22

__all__ = ["ENOENT", "EAGAIN", "ENOMEM", "EFAULT", "EBUSY", "EEXIST", "EINVAL"]
