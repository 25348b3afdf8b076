"""Resident memory of this process: its peak, and handing freed heap back to the OS.

XLA's CPU runtime allocates each kernel's temporary buffers from several glibc malloc
arenas (one per thread that runs it). Freed buffers stay in those arenas, so without a
trim the resident set grows chunk after chunk to about the arenas' sum of high-water
marks, although the live working set is one chunk's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from functools import cache


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far, GiB (``ru_maxrss`` is KiB on
    Linux, bytes on macOS). It never decreases: after a stage it is the peak of the
    process up to the end of that stage, earlier work in the same process included."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024**3 if sys.platform == "darwin" else 1024**2)


@cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Return freed heap pages of every malloc arena to the OS (glibc; a no-op
    elsewhere). Cheap (milliseconds); called after each chunk of a streamed pass."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
