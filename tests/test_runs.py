"""Run folders: creation leaves no half-made folders behind, even after a creator was killed."""

import os
import subprocess
import sys

import pytest

from byol import demos, metrics_file, runs
from helpers import shipped_demo, tiny_config


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


def test_a_demo_runs_local_settings_are_ignored_by_git():
    """Using the app on the shipped demo run writes only files git ignores (its config.json is tracked)."""
    demo = shipped_demo()
    last_snapshot = sorted(demo.glob(runs.SNAPSHOT_GLOB))[-1]
    for name in (runs.LOCAL_SETTINGS, f"embeddings/{last_snapshot.stem}-train.npz"):
        result = subprocess.run(["git", "check-ignore", "-q", str(demo / name)], cwd=demo.parent.parent)
        assert result.returncode == 0, f"{name} is not ignored by git"


def test_delete_keeps_a_shipped_demo_run_and_removes_any_other(tmp_path):
    """A run with a demo.json ships with the repository: deleting it would change tracked files."""
    demo, plain = (runs.create_run(tmp_path, tiny_config(), name) for name in ("demo", "plain"))
    (demo / demos.DEMO_RECORD).write_text('{"label": "a demo"}')
    for run_dir in (demo, plain):
        runs.write_status(run_dir, runs.FINISHED)
    files = sorted(path.name for path in demo.iterdir())
    with pytest.raises(runs.RunError, match="comes with BYOL Studio"):
        runs.delete_run(demo)
    with pytest.raises(runs.RunError, match="comes with BYOL Studio"):
        runs.delete_run(demo, force=True)
    assert sorted(path.name for path in demo.iterdir()) == files
    runs.delete_run(plain)
    assert not plain.exists()


def test_resume_problem_refuses_a_finished_run_without_last_pt(tmp_path):
    run_dir = runs.create_run(tmp_path, tiny_config(), "r")
    runs.write_status(run_dir, runs.INTERRUPTED)
    assert runs.resume_problem(run_dir) is None  # interrupted before its first save: it starts over
    runs.write_status(run_dir, runs.FINISHED)
    assert "no optimiser state" in runs.resume_problem(run_dir)
    (run_dir / runs.LAST_CHECKPOINT).write_bytes(b"")
    assert runs.resume_problem(run_dir) is None
    runs.write_status(run_dir, runs.RUNNING, pid=os.getpid())
    assert "cannot be resumed twice" in runs.resume_problem(run_dir)


def test_a_resume_may_not_plan_fewer_epochs_than_done_and_a_finished_run_needs_more(tmp_path):
    run_dir = runs.create_run(tmp_path, tiny_config(epochs=10), "r")
    metrics_file.append_rows(run_dir, [{"kind": "step", "step": 25, "epoch": 2.5, "z_std": 0.1}])
    runs.write_status(run_dir, runs.STOPPED)
    assert runs.fewest_epochs_to_resume(10, runs.summarize_run(run_dir).epochs_done, runs.STOPPED) == 3
    assert runs.extended_config(run_dir, runs.STOPPED, 3).epochs == 3  # a shorter plan that is not behind
    with pytest.raises(runs.RunError, match="at least 3"):
        runs.extended_config(run_dir, runs.STOPPED, 2)
    runs.write_status(run_dir, runs.FINISHED)
    assert runs.fewest_epochs_to_resume(10, 10.0, runs.FINISHED) == 11
    with pytest.raises(runs.RunError, match="choose more epochs"):
        runs.extended_config(run_dir, runs.FINISHED, 10)
    with pytest.raises(runs.RunError, match="at least 11"):
        runs.extended_config(run_dir, runs.FINISHED, 9)
    assert runs.extended_config(run_dir, runs.FINISHED, 11).epochs == 11


def test_snapshots_are_labelled_with_their_step_epoch_and_knn(tmp_path):
    run_dir = runs.create_run(tmp_path, tiny_config(), "r")
    metrics_file.append_rows(run_dir, [{"kind": "eval", "step": 488, "epoch": 10.0103, "knn": 47.83}])
    for step in (0, 488):
        (run_dir / f"step-{step:08d}.pt").write_bytes(b"")
    labels = [s.label for s in runs.list_snapshots(run_dir)]
    assert labels == ["step 0", "step 488 (epoch 10), kNN 47.8%"]


def test_a_runs_summary_says_whether_and_when_it_collapsed(tmp_path):
    """The verdict Home's table and Compare show, from the logged projection spread alone."""
    config = tiny_config()
    healthy = 1 / config.projector_dim**0.5
    for name, spreads in (("healthy", [healthy] * 30), ("collapsed", [healthy] * 10 + [1e-4] * 20)):
        run_dir = runs.create_run(tmp_path, config, name)
        metrics_file.append_rows(run_dir, [{"kind": "step", "step": 10 * i, "z_std": z} for i, z in enumerate(spreads)])
    assert runs.summarize_run(tmp_path / "healthy").collapse is None
    collapse = runs.summarize_run(tmp_path / "collapsed").collapse
    assert collapse is not None and 100 <= collapse.step <= 150 and collapse.recovered_step is None


def test_a_runs_best_knn_is_the_trained_networks_never_the_untrained_baseline(tmp_path):
    """A collapsed run that never beat its random init reads as what training reached, not as the init's figure."""
    run_dir = runs.create_run(tmp_path, tiny_config(), "r")
    metrics_file.append_rows(run_dir, [{"kind": "eval", "step": 0, "epoch": 0.0, "knn": 26.5}])
    started = runs.summarize_run(run_dir)
    assert (started.latest_knn, started.best_knn, started.baseline_knn) == (26.5, None, 26.5)
    for step, knn in ((100, 24.9), (200, 22.4)):
        metrics_file.append_rows(run_dir, [{"kind": "eval", "step": step, "epoch": step / 100, "knn": knn}])
    trained = runs.summarize_run(run_dir)
    assert (trained.latest_knn, trained.best_knn, trained.baseline_knn) == (22.4, 24.9, 26.5)


def test_knn_is_read_against_the_untrained_network_at_step_0_and_the_newest_pixel_figure():
    rows = [
        {"kind": "eval", "step": 0, "knn": 26.5, "pixel_knn": 33.0},
        {"kind": "eval", "step": 100, "knn": 40.0},
        {"kind": "eval", "step": 200, "knn": 45.0, "pixel_knn": 33.3},
    ]
    assert runs.knn_baselines(rows) == (26.5, 33.3)
    assert runs.knn_baselines(rows[1:]) == (None, 33.3)  # no step-0 evaluation: no baseline
    assert runs.knn_baselines([]) == (None, None)
