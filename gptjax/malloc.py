"""glibc's allocator, tuned for XLA:CPU before the process starts.

XLA:CPU takes each step's temporaries (gigabytes for a gpt2 train step) as one fresh allocation
and frees it at the end. glibc serves a block that large with mmap and gives it back with munmap,
so every step faults in and zeroes every page again. Kept in the heap (no mmap, no trimming, one
arena so that worker threads allocate there too) and on huge pages, the memory is reused and the
faults are gone (the figures: benchmarks/README.md, "Speed on a CPU").

glibc reads these settings only at start-up, so the command-line entry points (run.py, `gptjax`,
`python -m gptjax`) start the process again with them, once, before JAX is imported. Left alone:
a process whose GLIBC_TUNABLES is already set (to anything, "" included: that is how to run with
glibc's defaults), one whose JAX will use an accelerator, and anything that is not Linux with
glibc. Library users calling gptjax from their own process are never restarted.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

TUNABLES = ":".join((
    "glibc.malloc.hugetlb=1",  # transparent huge pages for the heap (glibc >= 2.35; older ones ignore it)
    "glibc.malloc.mmap_max=0",  # large blocks from the heap, so they are reused...
    f"glibc.malloc.trim_threshold={1 << 40}",  # ...and never handed back between steps
    "glibc.malloc.arena_max=1",  # other threads' arenas would mmap blocks larger than 64 MB anyway
))
SET_BY = "GPTJAX_SET_GLIBC_TUNABLES"  # marks a process gptjax restarted (benchmark records say so)

ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def wanted(environ=os.environ) -> bool:
    """Whether this process should run under TUNABLES."""
    if "GLIBC_TUNABLES" in environ or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def restart_tuned():
    """Re-executes this command under TUNABLES where wanted(); returns where not."""
    if not wanted() or "jax" in sys.modules:  # too late once JAX (and its threads) started
        return
    os.environ["GLIBC_TUNABLES"] = TUNABLES
    os.environ[SET_BY] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def setting() -> str:
    """What the benchmark records say about the allocator."""
    tunables = os.environ.get("GLIBC_TUNABLES")
    if tunables is None:
        return "glibc defaults"
    return f"{tunables!r} ({'set by gptjax' if os.environ.get(SET_BY) else 'set by the user'})"
