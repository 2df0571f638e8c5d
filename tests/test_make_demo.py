"""benchmarks/make_demo.py: a finished run becomes a demo the dashboard lists, small and not resumable."""

import json
import sys
from pathlib import Path

import pytest

from byol import embed, map_film, metrics_file, probe, run_images, runs, shipped
from helpers import fresh_checkout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import make_demo  # noqa: E402


def test_a_finished_run_becomes_a_demo_with_its_own_figures(finished_run, runs_dir):
    out = runs_dir / "demo-tiny"
    kept = make_demo.make_demo(finished_run, out, "a test machine", "synthetic", snapshots=2, max_mb=80)
    snapshots = sorted(finished_run.glob(runs.SNAPSHOT_GLOB))
    assert [p.name for p in kept] == [snapshots[0].name, snapshots[-1].name]  # the untrained and the last
    assert sorted(p.name for p in out.glob(runs.SNAPSHOT_GLOB)) == [p.name for p in kept]
    assert not (out / runs.LAST_CHECKPOINT).exists()  # no optimiser state

    record = json.loads((out / "demo.json").read_text())
    evals = [r for r in metrics_file.read_rows(finished_run) if r["kind"] == "eval"]
    assert record["knn"] == evals[-1]["knn"] and record["random_init_knn"] == evals[0]["knn"]
    assert record["machine"] == "a test machine" and record["minutes"] >= 0
    assert "a test machine" in record["label"]
    config = runs.read_config(finished_run)  # the label states the recipe as trained: a fixed τ is not "from"
    assert ("τ from" in record["label"]) == (config.tau_schedule == "cosine")
    assert f"weight decay {config.weight_decay:g}" in record["label"]
    assert ("for the predictor" in record["label"]) == (config.predictor_lr_scale != 1)
    # The summary Home leads with: the same figures, in words a visitor who does not code can follow.
    summary = record["summary"]
    assert f"{config.epochs} passes" in summary and f"right {evals[-1]['knn']:.0f}% of the time" in summary
    assert "a test machine" in summary and not any(word in summary for word in ("lr ", "τ", "kNN", "epoch"))
    assert runs.read_status(out)["state"] == runs.FINISHED
    assert runs.resume_problem(out) is not None  # the dashboard will not offer to train it further


def test_a_collapsed_run_says_so_first_and_records_the_compare_pages_verdict(finished_run):
    healthy = make_demo.demo_record(finished_run, "m", "synthetic")
    rows = metrics_file.read_rows(finished_run)
    steps = [row for row in rows if row["kind"] == "step"]
    assert len(steps) >= 5, "the tiny run logs too few steps to show a collapse"
    for row in steps:  # every projection the same vector: a spread far under the collapse line
        row["z_std"] = 1e-4
    (finished_run / metrics_file.NAME).write_text("".join(json.dumps(row) + "\n" for row in rows))
    collapsed = make_demo.demo_record(finished_run, "m", "synthetic")
    assert collapsed["collapsed"] == f"at step {steps[0]['step']:,}" and healthy["collapsed"] != collapsed["collapsed"]
    summary = collapsed["summary"]
    assert summary.startswith("This network trained") and f"It collapsed at step {steps[0]['step']:,}" in summary
    assert "never recovered" in summary and summary.index("collapsed") < summary.index("right")
    assert f"right {collapsed['knn']:.0f}% of the time" in summary  # the same figures as any demo's


def test_snapshots_are_spread_and_cut_to_the_size_limit(tmp_path):
    assert make_demo.spread(list(range(11)), 5) == [0, 2, 5, 8, 10]  # evenly spread, ends included
    files = []
    for i in range(5):
        files.append(tmp_path / f"step-{i:08d}.pt")
        files[-1].write_bytes(b"x" * 1000)
    kept = make_demo.fit_size(files, 3000)
    assert kept[0] == files[0] and kept[-1] == files[-1] and len(kept) == 3


def test_named_steps_pick_the_snapshots_and_the_ends_stay(finished_run):
    steps = [snapshot.step for snapshot in runs.list_snapshots(finished_run)]
    assert len(steps) >= 3, steps
    kept = make_demo.pick_snapshots(finished_run, count=2, steps=[steps[1]])
    assert [int(path.stem.split("-")[1]) for path in kept] == [steps[0], steps[1], steps[-1]]
    with pytest.raises(SystemExit, match="no snapshot at step"):
        make_demo.pick_snapshots(finished_run, count=2, steps=[steps[-1] + 1])


def test_training_minutes_add_up_every_sitting_and_leave_out_pauses():
    sitting = [{"kind": "step", "time": t} for t in (0.0, 10.0, 20.0, 30.0)]  # 30 s of training
    resumed = [{"kind": "step", "time": t} for t in (4000.0, 4010.0, 4070.0)]  # an hour later: 70 s more
    assert make_demo.training_minutes(sitting + resumed) == pytest.approx(100 / 60)
    assert make_demo.training_minutes([{"kind": "step"}]) == 0.0


def test_an_unfinished_run_is_refused(finished_run, runs_dir):
    runs.write_status(finished_run, runs.STOPPED, "stopped")
    with pytest.raises(SystemExit, match="not a finished run"):
        make_demo.make_demo(finished_run, runs_dir / "demo-x", "m", "synthetic", 5, 80)


def test_the_demo_can_name_cifar10_instead_of_the_training_machines_path(finished_run, runs_dir):
    out = runs_dir / "demo-named"
    make_demo.make_demo(finished_run, out, "m", "synthetic", 2, 80, data="cifar10")
    trained, shipped = runs.read_config(finished_run), runs.read_config(out)
    assert shipped.data == "cifar10" and shipped.data_root == ""
    assert shipped.replace(data=trained.data, data_root=trained.data_root) == trained  # nothing else changed


def test_a_demo_ships_its_first_visit_artefacts_and_a_fresh_checkout_computes_nothing(finished_run, runs_dir):
    out = runs_dir / "demo-shipped"
    kept = make_demo.make_demo(finished_run, out, "a test machine", "synthetic", snapshots=3, max_mb=80, ships_artefacts=True)
    assert "come with it" in json.loads((out / "demo.json").read_text())["label"]
    shipped_names = {p.name for p in shipped.shipped_files(out)}
    assert shipped_names == {p.name for p in kept if p.parent.name == shipped.SHIPPED_FOLDER}
    assert map_film.FILM_FILE in shipped_names

    fresh = fresh_checkout(out, runs_dir / "demo-fresh-checkout")
    embed.clear_cache()
    data = run_images.run_data(fresh)  # the pages load the demo's images first, and adopt on the way
    config = runs.read_config(fresh)
    snapshots = [s.path for s in runs.list_snapshots(fresh)]
    assert embed.missing_work(fresh, snapshots[-1], embed.FULL, data, config.knn_k, config.knn_temperature) == []
    assert embed.missing_work(fresh, snapshots[0], embed.BANK, data) == []  # Retrieval's untrained-network figure
    film = map_film.load_film(fresh)
    votes = map_film.film_votes(fresh, film, config.knn_k, config.knn_temperature)
    assert all(frame is not None for frame in votes)  # every frame can be coloured by its kNN vote
    assert probe.saved_probe(fresh, snapshots[-1]) is not None  # Embeddings shows the linear probe without a click


def test_a_demo_made_without_artefacts_ships_them_later(finished_run, runs_dir):
    out = runs_dir / "demo-from-a-gpu"  # made where its artefacts could not come back with it
    make_demo.make_demo(finished_run, out, "a test machine", "synthetic", snapshots=3, max_mb=80)
    assert "come with it" not in json.loads((out / "demo.json").read_text())["label"]

    files = make_demo.ship_into(out, max_mb=80)
    record = json.loads((out / "demo.json").read_text())
    assert "come with it" in record["label"] and record["machine"] == "a test machine"
    assert {p.name for p in shipped.shipped_files(out)} == {p.name for p in files}
    fresh = fresh_checkout(out, runs_dir / "demo-from-a-gpu-fresh")
    embed.clear_cache()
    data = run_images.run_data(fresh)
    last = runs.list_snapshots(fresh)[-1].path
    config = runs.read_config(fresh)
    assert embed.missing_work(fresh, last, embed.FULL, data, config.knn_k, config.knn_temperature) == []


def test_artefacts_that_would_pass_the_size_limit_are_not_shipped(finished_run, runs_dir):
    out = runs_dir / "demo-too-big"
    make_demo.make_demo(finished_run, out, "m", "synthetic", snapshots=2, max_mb=80)
    label = json.loads((out / "demo.json").read_text())["label"]
    limit_mb = make_demo.tracked_bytes(out) / 2**20 + 1e-6  # the snapshots fit, not one byte more
    with pytest.raises(SystemExit, match="over the .* limit: nothing was shipped"):
        make_demo.ship_into(out, max_mb=limit_mb)
    assert not shipped.shipped_folder(out).exists()
    assert json.loads((out / "demo.json").read_text())["label"] == label
