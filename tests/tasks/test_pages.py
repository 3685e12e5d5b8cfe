"""The data steps' temporaries: heap memory reused and numpy's huge-page hint off inside, both back after."""

import resource
import threading

import numpy as np
import pytest

import nightcast.tasks.data.clean as clean_mod
import nightcast.tasks.data.window as window_mod
from nightcast.schemas.params import RetrainParams, WindowConfig
from nightcast.tasks.data import pages
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.data.validate import validate_observations

pytestmark = pytest.mark.skipif(pages.huge_page_hint() is None, reason="this numpy has no huge-page switch")


@pytest.fixture(params=[True, False], ids=["hint-on", "hint-off"])
def process_default(request):
    """The process's own setting (numpy's default, or NUMPY_MADVISE_HUGEPAGE=0), restored after."""
    before = pages._set_madvise_hugepage(request.param)
    yield request.param
    pages._set_madvise_hugepage(before)


def test_the_hint_is_off_inside_and_the_process_setting_is_restored(process_default):
    with pages.short_lived_arrays():
        assert pages.huge_page_hint() is False
        with pages.short_lived_arrays():  # nested: still off, and the outer exit restores
            assert pages.huge_page_hint() is False
        assert pages.huge_page_hint() is False
    assert pages.huge_page_hint() is process_default


def test_overlapping_sections_in_threads_keep_it_off_until_the_last_ends(process_default):
    inside, leave = threading.Event(), threading.Event()

    def other():
        with pages.short_lived_arrays():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10)
    with pages.short_lived_arrays():
        pass  # this thread's section ends first: the other still runs, so the hint stays off
    assert pages.huge_page_hint() is False
    leave.set()
    t.join(10)
    assert pages.huge_page_hint() is process_default


def test_an_error_inside_still_restores(process_default):
    with pytest.raises(RuntimeError):
        with pages.short_lived_arrays():
            raise RuntimeError("boom")
    assert pages.huge_page_hint() is process_default


def test_cleaning_and_the_window_arrays_run_without_the_huge_page_hint(sample_raw, monkeypatch, request):
    """The policy, as prepare_training applies it: no huge-page hint for cleaning's temporaries nor for the
    stacked arrays (their first touch waited for compaction; training gathered no faster from huge pages)."""
    before = pages._set_madvise_hugepage(True)
    request.addfinalizer(lambda: pages._set_madvise_hugepage(before))
    seen: dict[str, list[bool]] = {"outliers": [], "stack": []}
    treat, stack = clean_mod.treat_outliers, window_mod._fill_arrays

    def spy_treat(*a, **k):
        seen["outliers"].append(pages.huge_page_hint())
        return treat(*a, **k)

    def spy_stack(*a, **k):
        seen["stack"].append(pages.huge_page_hint())
        return stack(*a, **k)

    monkeypatch.setattr(clean_mod, "treat_outliers", spy_treat)
    monkeypatch.setattr(window_mod, "_fill_arrays", spy_stack)
    prepared = prepare_training(validate_observations(sample_raw), RetrainParams(window=WindowConfig(horizon=24)))
    assert seen["outliers"] == [False]
    assert seen["stack"] == [False]  # one fill: the known-future channels (calendar parts) are coded, not stored
    assert prepared.index.future.shape[1] == 0 and prepared.index.codes is not None
    assert pages.huge_page_hint() is True
    assert prepared.index.past.dtype == np.float32 and prepared.index.past.flags.c_contiguous


def test_same_windows_with_and_without_the_switch(sample_raw, monkeypatch):
    """The hint changes speed only: the prepared arrays are identical."""
    params = RetrainParams(window=WindowConfig(horizon=24))
    checked = validate_observations(sample_raw)
    a = prepare_training(checked, params)
    monkeypatch.setattr(pages, "_set_madvise_hugepage", None)
    b = prepare_training(checked, params)
    assert a.clean.equals(b.clean)
    np.testing.assert_array_equal(a.index.past, b.index.past)
    np.testing.assert_array_equal(a.index.codes, b.index.codes)
    for k in a.index.splits:
        np.testing.assert_array_equal(a.index.splits[k], b.index.splits[k])


@pytest.mark.skipif(pages._libc is None, reason="glibc only")
def test_a_freed_temporary_is_reused_inside_not_faulted_in_again():
    """Inside, a second 64 MiB temporary lands on the pages the first one left: (almost) no page faults."""
    def faults_to_fill() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.empty(8 * 2**20)  # 64 MiB
        a.fill(1.0)
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with pages.short_lived_arrays():
        faults_to_fill()
        again = faults_to_fill()
    assert again < 64 * 2**20 / 4096 / 10  # a fresh mapping faults 16,384 small pages


@pytest.mark.skipif(pages._libc is None, reason="glibc only")
def test_after_a_section_a_freed_temporary_is_still_reused():
    """Leaving a section must not freeze glibc at its 128 KiB starting thresholds (every later 2.5 MB
    temporary of the process a fresh mapping: 610 page faults a time); it leaves the thresholds glibc's adaptive
    rule reaches, where the freed pages serve the next temporary."""
    def faults_to_fill() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.empty(320_000)  # 2.5 MB
        a.fill(1.0)
        del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with pages.short_lived_arrays():
        np.ones(2**22).sum()
    faults_to_fill()
    again = [faults_to_fill() for _ in range(5)]
    assert max(again) < 320_000 * 8 / 4096 / 10, again


def test_default_leaves_numpy_and_glibc_alone(monkeypatch, process_default):
    monkeypatch.setenv("NIGHTCAST_DATA_MEMORY", "default")
    with pages.short_lived_arrays():
        assert pages.huge_page_hint() is process_default
        assert pages.sections_running() == 0


def test_long_lived_arrays_keep_the_hint_off_inside_a_section(process_default):
    with pages.short_lived_arrays():
        with pages.long_lived_arrays():
            assert pages.huge_page_hint() is False and pages.sections_running() == 1
        assert pages.huge_page_hint() is False and pages.sections_running() == 1
    assert pages.huge_page_hint() is process_default and pages.sections_running() == 0
    with pages.long_lived_arrays():  # outside any section it changes nothing
        assert pages.huge_page_hint() is process_default
    assert pages.huge_page_hint() is process_default
