"""allocator.keep_freed_memory: large CPU tensors reuse memory instead of faulting in fresh pages."""

import resource

import pytest
import torch

from byol import allocator


def page_faults_of_five_big_tensors() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        tensor = torch.ones(16 * 2**20)  # 64 MB, written, so every page is touched
        del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(allocator._libc() is None, reason="needs glibc's mallopt (Linux)")
def test_freed_memory_is_reused_inside_the_block_and_returned_after():
    outside = page_faults_of_five_big_tensors()
    with allocator.keep_freed_memory() as active:
        assert active
        inside = page_faults_of_five_big_tensors()
    after = page_faults_of_five_big_tensors()
    # 64 MB is 16k pages: outside, each of the five tensors faults its pages in afresh.
    assert outside > 5 * 10_000
    assert inside < outside / 2
    assert after > 5 * 10_000  # glibc's defaults are back once the block ends


def test_nested_blocks_keep_the_setting_until_the_last_ends(monkeypatch):
    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))

        def malloc_trim(self, pad):
            calls.append(("trim", pad))

    monkeypatch.setattr(allocator, "_libc", lambda: FakeLibc())
    with allocator.keep_freed_memory():
        with allocator.keep_freed_memory():
            pass
        assert ("trim", 0) not in calls  # the outer training still runs
    assert calls[-1] == ("trim", 0)
    assert (allocator.M_MMAP_MAX, allocator.DEFAULT_MMAP_MAX) in calls


def test_switch_off(monkeypatch):
    monkeypatch.setenv("BYOL_DEFAULT_MALLOC", "1")
    with allocator.keep_freed_memory() as active:
        assert not active
