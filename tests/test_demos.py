"""Shipped runs: a demo.json marks one, the best of them is shown first, and the shipped pair is found."""

import json

from byol import demos, metrics_file, runs
from helpers import tiny_config


def make_run(runs_dir, name, knn, demo=True):
    """A finished run with one kNN evaluation; with a demo.json when `demo`."""
    run_dir = runs.create_run(runs_dir, tiny_config(), name)
    runs.write_status(run_dir, runs.FINISHED)
    metrics_file.append_rows(run_dir, [{"kind": "eval", "step": 10, "epoch": 1, "knn": knn}])
    if demo:
        record = {"label": f"{name}, trained by the team", "summary": f"{name} learned."}
        (run_dir / demos.DEMO_RECORD).write_text(json.dumps(record))
    return run_dir


def test_a_demo_json_marks_a_shipped_run_and_gives_its_words(tmp_path):
    demo, plain = make_run(tmp_path, "demo", 70.0), make_run(tmp_path, "plain", 80.0, demo=False)
    assert demos.is_shipped_demo(demo) and not demos.is_shipped_demo(plain)
    assert demos.demo_words(demo) == ("demo, trained by the team", "demo learned.")
    assert demos.demo_words(plain) == ("", "")


def test_the_main_demo_is_the_shipped_run_with_the_best_knn_never_a_users_run(tmp_path):
    for name, knn, demo in (("good", 72.0, True), ("collapsed-no-bn", 34.0, True), ("users", 90.0, False)):
        make_run(tmp_path, name, knn, demo)
    assert demos.main_demo(runs.list_runs(tmp_path)).name == "good"
    assert demos.main_demo([s for s in runs.list_runs(tmp_path) if not s.demo]) is None


def test_the_shipped_pair_is_found_among_shipped_runs_only(tmp_path):
    make_run(tmp_path, "mine-bn", 50.0, demo=False)
    make_run(tmp_path, "mine-no-bn", 30.0, demo=False)
    assert demos.shipped_pair(runs.list_runs(tmp_path)) is None
    make_run(tmp_path, "demo-bn", 50.0)
    make_run(tmp_path, "demo-no-bn", 34.0)
    with_bn, without_bn = demos.shipped_pair(runs.list_runs(tmp_path))
    assert (with_bn.name, without_bn.name) == ("demo-bn", "demo-no-bn")
    assert (with_bn.best_knn, without_bn.best_knn) == (50.0, 34.0)
