"""allocator.keep_freed_memory: a training step's large CPU tensors reuse memory instead of faulting in
fresh pages, and the kept memory is handed back when the block ends."""

import resource

import pytest
import torch

from byol import allocator

MB_OF_FLOATS = 2**20 // 4


def one_step_of_large_activations() -> None:
    """Shaped like a training step: several large tensors alive at once, all freed at the end.

    Each is over 32 MB, glibc's largest automatic mmap threshold, so with glibc's defaults every one is
    a fresh mmap. (A single tensor allocated and freed in a loop is no good test: PyTorch asks for
    64-byte-aligned memory, which glibc cannot carve from a freed chunk of exactly the same size.)
    """
    tensors = [torch.ones(n * MB_OF_FLOATS) for n in (40, 64, 48, 56)]  # written: every page touched
    del tensors


def page_faults_of_five_steps() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        one_step_of_large_activations()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.mark.skipif(allocator._libc() is None, reason="needs glibc's mallopt (Linux)")
def test_steps_reuse_freed_memory_inside_the_block():
    outside = page_faults_of_five_steps()
    with allocator.keep_freed_memory() as active:
        assert active
        one_step_of_large_activations()  # the first step grows the heap; later ones reuse it
        inside = page_faults_of_five_steps()
    # 208 MB a step is 53k pages: outside, every step faults all of them in afresh.
    assert outside > 5 * 40_000
    assert inside < outside / 3


@pytest.mark.skipif(allocator._libc() is None, reason="needs glibc's mallopt (Linux)")
def test_kept_memory_is_handed_back_when_the_block_ends():
    with allocator.keep_freed_memory():
        one_step_of_large_activations()
        kept = resident_mb()
    after = resident_mb()
    assert kept - after > 100  # most of the step's 208 MB goes back to the system


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
