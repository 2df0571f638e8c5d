"""Run folders: creation leaves no half-made folders behind, even after a creator was killed."""

import os
import subprocess
import sys

from byol import runs
from helpers import tiny_config


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_create_run_removes_folders_a_killed_creator_left(tmp_path):
    runs_dir = tmp_path / "runs"
    abandoned = runs_dir / f".creating-{dead_pid()}-123"
    in_progress = runs_dir / f".creating-{os.getpid()}-456"  # a live creator: about to rename it
    for folder in (abandoned, in_progress):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    run_dir = runs.create_run(runs_dir, tiny_config())
    assert not abandoned.exists()
    assert in_progress.exists()
    assert runs.read_config(run_dir) == tiny_config()
    assert [s.name for s in runs.list_runs(runs_dir)] == [run_dir.name]
