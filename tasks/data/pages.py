"""Short-lived arrays on small pages.

On Linux numpy asks the kernel for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every
array of 4 MiB or more. Where the kernel's THP ``defrag`` setting is ``madvise`` or
``defer+madvise`` (Debian's and Ubuntu's default) and free memory is fragmented, the first write to
such an array waits for the kernel to compact memory: measured on this project's 2-core VM, the
cleaning and windowing of a 10,000 x 2,000 panel spent 2-5 s in the kernel on it (``_stack``: 2.2 s
of system time for one 600 MB array; numpy issue #31590). Huge pages pay off for arrays that live
long and are read at random (the stacked window arrays training gathers from: training ran 5-10 %
slower without them), not for the dozens of row-sized temporaries cleaning makes and drops.

``short_lived_arrays`` turns numpy's hint off while the data steps run and restores the process's
own setting afterwards (``NUMPY_MADVISE_HUGEPAGE`` or numpy's default), so a user's choice stands
outside them. The hint changes speed only, never a value.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

try:  # numpy >= 2
    from numpy._core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
except ImportError:  # numpy 1.x
    try:
        from numpy.core.multiarray import _get_madvise_hugepage, _set_madvise_hugepage
    except ImportError:  # no such switch (not Linux, or a numpy without it): nothing to do
        _get_madvise_hugepage = _set_madvise_hugepage = None

_lock = threading.Lock()
_active = 0  # data steps running now, in any thread: the hint is off while any is
_default: bool | None = None  # the process's own setting, read when the first step starts

F = TypeVar("F", bound=Callable)


@contextmanager
def short_lived_arrays() -> Iterator[None]:
    """Numpy's huge-page hint off inside (any thread's section keeps it off), back on after the last."""
    global _active, _default
    if _set_madvise_hugepage is None:
        yield
        return
    with _lock:
        if _active == 0:
            _default = bool(_get_madvise_hugepage())
            _set_madvise_hugepage(False)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _set_madvise_hugepage(bool(_default))


def on_small_pages(fn: F) -> F:
    """Run ``fn`` inside ``short_lived_arrays``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with short_lived_arrays():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def huge_page_hint() -> bool | None:
    """Numpy's current setting (None where it has none): for tests and the bench's environment line."""
    return None if _get_madvise_hugepage is None else bool(_get_madvise_hugepage())
