"""byol/files.py: a write lands whole or not at all, and killed writers' leftovers are cleaned up."""

import os

import numpy as np
import pytest

from byol.files import read_json, remembered, remove_stale_temporaries, write_atomic, write_json_atomic, write_npz_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("old")

    def half_write(handle):
        handle.write(b"new but incomp")
        raise RuntimeError("disk pulled out")

    with pytest.raises(RuntimeError):
        write_atomic(target, half_write)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.txt"]


def test_npz_archives_round_trip_compressed_or_not(tmp_path):
    arrays = {"features": np.arange(12, dtype=np.float16).reshape(3, 4), "classes": np.array(["cat", "dog"])}
    for compressed in (True, False):
        path = tmp_path / f"a-{compressed}.npz"
        write_npz_atomic(path, arrays, compressed=compressed)
        with np.load(path, allow_pickle=False) as archive:
            assert sorted(archive.files) == ["classes", "features"]
            np.testing.assert_array_equal(archive["features"], arrays["features"])
            assert archive["classes"].tolist() == ["cat", "dog"]
    # Compression is what makes the shipped artefacts small enough to keep in the repository.
    repetitive = {"zeros": np.zeros(100_000, dtype=np.float32)}
    write_npz_atomic(tmp_path / "small.npz", repetitive)
    write_npz_atomic(tmp_path / "large.npz", repetitive, compressed=False)
    assert (tmp_path / "small.npz").stat().st_size < (tmp_path / "large.npz").stat().st_size / 10


def test_json_round_trips_and_a_missing_or_torn_file_reads_as_the_default(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"kNN": 72.0})
    assert read_json(tmp_path / "a.json") == {"kNN": 72.0}
    assert read_json(tmp_path / "missing.json", default={}) == {}
    (tmp_path / "torn.json").write_text('{"kNN": 7')
    assert read_json(tmp_path / "torn.json", default=None) is None


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    dead_pid = 2**22 + 12345  # above the largest pid Linux allows (2**22), so no live process has it
    stale = tmp_path / f".last.pt.{dead_pid}.abc_123.tmp"
    live = tmp_path / f".last.pt.{os.getpid()}.def456.tmp"
    kept = tmp_path / "last.pt"
    for path in (stale, live, kept):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, kept.name])


def test_a_remembered_figure_is_computed_once_and_only_the_newest_are_kept(tmp_path):
    path = tmp_path / "cache" / "figures.json"
    calls = []

    def compute(value: float):
        return lambda: calls.append(value) or value

    assert remembered(path, "a", compute(1.5)) == 1.5
    assert remembered(path, "a", compute(9.0)) == 1.5  # read back, as a new process would
    assert calls == [1.5]
    for key in "bcd":
        remembered(path, key, compute(2.0), keep=2)
    assert list(read_json(path)) == ["c", "d"]


def test_a_figure_that_cannot_be_saved_is_still_returned(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert remembered(blocked / "figures.json", "a", lambda: 3.0) == 3.0
