"""Memory for the data steps' short-lived arrays: reused, not faulted in afresh.

Cleaning, features and the window index make dozens of row-sized numpy temporaries (150 MB each at
10,000 x 2,000) and drop them at once. Two allocator defaults make each one cost far more than its
arithmetic:

- glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free, so each
  temporary's pages are faulted in and zeroed by the kernel again. Measured on this project's 2-core
  VM: ``prepare_training`` at 10,000 x 2,000 spent 7-15 s of its 15-25 s in the kernel.
- numpy asks for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array of 4 MiB or
  more; where the kernel's THP ``defrag`` setting is ``madvise`` or ``defer+madvise`` (Debian's and
  Ubuntu's default) and memory is fragmented, the first write waits for the kernel to compact memory
  (numpy issue #31590): one 600 MB array took 2.5 s to fill, 2.2 s of it in the kernel.

``short_lived_arrays`` therefore, while any data step runs (in any thread): serves large
allocations from glibc's heap, where a freed temporary's pages are reused by the next one
(``mallopt(M_MMAP_MAX, 0)``, with trimming held off), and turns numpy's huge-page hint off. After
the last step it turns the hint back as it was, hands the freed heap back to the system
(``malloc_trim``), so the process holds no more than before, and leaves glibc at the thresholds its
adaptive rule reaches in a data process (mappings from 32 MiB, trimming above 64 MiB: glibc cannot
give the adaptive rule back once a threshold was set, and its 128 KiB starting values would make
every later temporary a fresh mapping). Scoring (``forecast_part`` and the shard tasks) is one
section too; on a Dask worker, whose nanny sets ``MALLOC_TRIM_THRESHOLD_`` (the same freeze), that
made an 8-shard scoring task at 10,000 x 2,000 20 % faster. The arrays that outlive a step (``make_windows``' stacked
features, which training gathers from) are made as their own mappings again (``long_lived_arrays``:
freed to the system when training drops them) but still without the hint: their first touch waited
1.5-2.2 s for compaction in most preparations profiled one afternoon, and training gathered from them
no faster with huge pages than without (interleaved, 4 runs each of 200 steps at 10,000 x 2,000:
4.3-5.1 s with, 4.0-5.2 s without, 4.7-5.2 s from the memory-mapped ``.npy`` copies the seed workers
read). A whole
preparation (``prepare_training``) is one section, so one step's freed temporaries serve the next.

Only speed changes, never a value. ``NIGHTCAST_DATA_MEMORY=default`` leaves both settings alone; on a
C library other than glibc the heap part does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

try:  # numpy >= 2
    from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
except ImportError:  # numpy 1.x
    try:
        from numpy.core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
    except ImportError:  # no such switch (not Linux, or a numpy without it)
        _get_madvise_hugepage = _set_madvise_hugepage = None

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX = 65536
# After a section: the thresholds glibc's own adaptive rule reaches in a process that frees big arrays (the
# mmap threshold follows each freed mapping up to DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB on 64-bit; trimming at
# twice that). glibc has no call that turns the adaptive rule back on once ``mallopt`` has set a threshold, and
# setting only its 128 KiB starting values froze them there: every later temporary over 128 KiB, in any step of
# the process, was a fresh mapping faulted in again (a 2.5 MB numpy array: 595 page faults a time, against 62
# in a process that never entered a section). Dask's nanny freezes them the same way (MALLOC_TRIM_THRESHOLD_).
_AFTER_MMAP_THRESHOLD = 32 * 2**20
_AFTER_TRIM_THRESHOLD = 2 * _AFTER_MMAP_THRESHOLD
_HOLD = 2**31 - 1  # trim threshold while a section runs (2 GiB, mallopt's largest): freed temporaries stay

_libc = ctypes.CDLL(None) if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else None
_lock = threading.Lock()
_active = 0  # data steps running now, in any thread: the settings hold while any is
_hint: bool | None = None  # numpy's own hint, read when the first section starts

F = TypeVar("F", bound=Callable)


def _enabled() -> bool:
    return os.environ.get("NIGHTCAST_DATA_MEMORY", "reuse").strip().lower() != "default"


def _heap_reuse(on: bool, trim: bool = True) -> None:
    if _libc is None:
        return
    _libc.mallopt(_M_MMAP_MAX, 0 if on else _DEFAULT_MMAP_MAX)
    if not on:
        _libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
    _libc.mallopt(_M_TRIM_THRESHOLD, _HOLD if on else _AFTER_TRIM_THRESHOLD)
    if not on and trim:
        _libc.malloc_trim(0)  # the freed temporaries go back to the system


@contextmanager
def short_lived_arrays() -> Iterator[None]:
    """Heap reuse on and numpy's huge-page hint off inside; both back as they were after the last section."""
    global _active, _hint
    if not _enabled():
        yield
        return
    with _lock:
        if _active == 0:
            _heap_reuse(True)
            if _set_madvise_hugepage is not None:
                _hint = bool(_set_madvise_hugepage(False))  # returns the previous setting
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                if _set_madvise_hugepage is not None:
                    _set_madvise_hugepage(bool(_hint))
                _heap_reuse(False)


@contextmanager
def long_lived_arrays() -> Iterator[None]:
    """Inside a section, glibc's own settings back for arrays that outlive it (``make_windows``' stacked
    features: each its own mapping, returned to the system when freed), numpy's huge-page hint still off;
    the section's settings after."""
    with _lock:
        inside = _active > 0
        if inside:
            _heap_reuse(False, trim=False)
    try:
        yield
    finally:
        with _lock:
            if inside and _active > 0:
                _heap_reuse(True)


def on_small_pages(fn: F) -> F:
    """Run ``fn`` inside ``short_lived_arrays``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with short_lived_arrays():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def huge_page_hint() -> bool | None:
    """Numpy's current setting (None where it has none): for tests."""
    return None if _get_madvise_hugepage is None else bool(_get_madvise_hugepage())


def sections_running() -> int:
    """Data steps inside ``short_lived_arrays`` now: for tests."""
    return _active
