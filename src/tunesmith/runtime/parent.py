"""A worker that ends with the service that started it, however the service ends.

The service names itself in the worker's environment (`PARENT_ENV`); the worker, at start-up in
its own process (no code between fork and exec in the threaded service), asks Linux for SIGTERM
when its parent goes (PR_SET_PDEATHSIG). A parent gone before that request took effect is
noticed at once: the worker is no longer the child of the process that named itself.
"""

from __future__ import annotations

import ctypes
import os
import signal

PARENT_ENV = "TUNESMITH_PARENT_PID"
PR_SET_PDEATHSIG = 1


def follow_parent() -> bool:
    """Where this process was started by a service that named itself: SIGTERM when the service
    goes (now, if it has gone already). Whether it follows; False where nobody asked or the system
    has no such request (a restarted service then stops leftover workers by pid)."""
    expected = os.environ.pop(PARENT_ENV, None)  # (not for processes this one starts)
    if not expected:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != int(expected):  # the parent went before the request: as if it went after
        os.kill(os.getpid(), signal.SIGTERM)
    return True
