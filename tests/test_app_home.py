"""Home page: empty state, a finished run as showcase, the demo run first, interrupted runs with Resume."""

from __future__ import annotations

import json
import shutil

import pandas as pd

from byol import cifar10, embed, metrics_file, retrieval, runs
from byol import data as datasets
from byol.checkpoint import checkpoint_choices
from byol.files import write_json_atomic
from test_retrieval import small_data
from ui import neighbour_strip
from ui.common import pick_default_run


def texts(at) -> str:
    """Every piece of text the page shows, in one string (markdown, alerts, captions, headers)."""
    parts = []
    for kind in ("markdown", "info", "warning", "error", "success", "caption", "title", "subheader"):
        parts += [str(element.value) for element in at.get(kind)]
    return "\n".join(parts)


def test_empty_state_says_what_to_do(runs_dir, app_test):
    at = app_test("app.py")
    at.run()
    assert not at.exception
    shown = texts(at)
    assert "No runs yet" in shown and "Launch training" in shown
    assert "Training device" in shown
    assert "stopping the server stops the training" in shown
    assert len(at.get("plotly_chart")) == 0


def test_finished_run_is_shown_with_its_knn_curve(finished_run, app_test):
    at = app_test("app.py")
    at.run()
    assert not at.exception
    assert any("Best finished run: tiny-finished" in s.value for s in at.subheader)
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[0].value
    assert list(table["Run"]) == ["tiny-finished"]
    assert table["Status"].iloc[0].endswith("finished")
    assert table["Epochs"].iloc[0] == "2 / 2"
    assert "Processes" not in table  # only shown when a run used several (torchrun)


def test_a_run_that_has_not_trained_yet_is_not_judged_collapsed(finished_run, runs_dir, app_test, tiny_config):
    runs.create_run(runs_dir, tiny_config(), "not-started")  # no step logged: nothing to judge the spread by
    at = app_test("app.py").run()
    table = at.dataframe[0].value.set_index("Run")
    assert table.loc["tiny-finished", "Collapsed"] == "no"
    assert pd.isna(table.loc["not-started", "Collapsed"])  # drawn as "–", not "no"


def test_demo_run_comes_first(finished_run, runs_dir, app_test, tiny_config):
    other = runs.create_run(runs_dir, tiny_config(), "demo-run")
    (other / "demo.json").write_text(json.dumps({"label": "Trained for 25 epochs on one CPU core; kNN 50%."}))
    at = app_test("app.py")
    at.run()
    assert not at.exception
    assert any("Demo run: demo-run" in s.value for s in at.subheader)
    assert any("25 epochs on one CPU core" in c.value for c in at.caption)  # labelled with how it was trained


def test_a_demo_with_a_plain_summary_leads_with_it_and_keeps_the_recipe_one_click_away(runs_dir, app_test, tiny_config):
    demo = runs.create_run(runs_dir, tiny_config(), "demo-run")
    record = {"summary": "This network learned without labels; it is right 72% of the time.", "label": "AdamW, lr 0.004, τ 0.97."}
    (demo / "demo.json").write_text(json.dumps(record))
    at = app_test("app.py")
    at.run()
    assert not at.exception
    assert any(record["summary"] in m.value for m in at.markdown)
    how = [e for e in at.expander if e.label == "How it was trained"]
    assert len(how) == 1 and any(record["label"] in c.value for c in how[0].caption)


def ship_a_demo_and_a_batch_norm_pair(finished_run, runs_dir) -> None:
    """The checkpoints/ of a fresh checkout: the main demo, and a newer shipped pair whose run without
    batch norm collapsed (the tiny run's copies, the second with every spread far under the line)."""
    for name in ("demo-pair-bn", "demo-pair-no-bn"):
        shutil.copytree(finished_run, runs_dir / name)
        record = runs.read_status(runs_dir / name)
        write_json_atomic(runs_dir / name / "status.json", {**record, "created": record["created"] + 1})  # newer
    rows = metrics_file.read_rows(runs_dir / "demo-pair-no-bn")
    for row in rows:
        if row["kind"] == "step":
            row["z_std"] = 1e-4
    (runs_dir / "demo-pair-no-bn" / metrics_file.NAME).write_text("".join(json.dumps(row) + "\n" for row in rows))
    for run_dir in (finished_run, runs_dir / "demo-pair-bn", runs_dir / "demo-pair-no-bn"):
        (run_dir / "demo.json").write_text(json.dumps({"label": f"{run_dir.name}, shipped."}))
    main_rows = [{**row, "knn": row["knn"] + 1} if row["kind"] == "eval" else row for row in metrics_file.read_rows(finished_run)]
    (finished_run / metrics_file.NAME).write_text("".join(json.dumps(row) + "\n" for row in main_rows))  # the best kNN


def test_the_shipped_batch_norm_pair_gets_its_own_section_and_home_still_shows_the_main_demo(finished_run, runs_dir, app_test):
    ship_a_demo_and_a_batch_norm_pair(finished_run, runs_dir)
    at = app_test("app.py")
    at.run()
    assert not at.exception
    assert any("Demo run: tiny-finished" in s.value for s in at.subheader)  # not the newer, collapsed one
    assert any("batch-norm experiment, already run" in s.value for s in at.subheader)
    assert any("collapsed at step" in m.value and "never recovered" in m.value for m in at.markdown)
    table = at.dataframe[0].value.set_index("Run")
    assert table.loc["demo-pair-no-bn", "Collapsed"].startswith("at step")  # the table says which one collapsed
    assert table.loc["demo-pair-bn", "Collapsed"] == "no"
    to_pictures = [link.proto for link in at.main.get("page_link") if "collapsed network" in link.proto.label]
    assert [link.query_string for link in to_pictures] == ["run=demo-pair-no-bn"]


def test_the_pages_open_on_the_users_newest_run_else_on_the_main_demo(finished_run, runs_dir, tiny_config):
    ship_a_demo_and_a_batch_norm_pair(finished_run, runs_dir)
    summaries = runs.list_runs(runs_dir)
    assert summaries[0].name.startswith("demo-pair")  # the newest runs: the pair
    assert summaries[pick_default_run(summaries)].name == "tiny-finished"  # not the collapsed one
    runs.create_run(runs_dir, tiny_config(), "mine")
    summaries = runs.list_runs(runs_dir)
    assert summaries[pick_default_run(summaries)].name == "mine"
    assert summaries[pick_default_run(summaries, wanted="demo-pair-no-bn")].name == "demo-pair-no-bn"


def test_interrupted_run_offers_resume(runs_dir, app_test, tiny_config, fake_train):
    fake_train.auto_release = True
    run = runs.create_run(runs_dir, tiny_config(), "left-behind")
    record = runs.read_status(run)
    record.update(state=runs.RUNNING, pid=2**22 + 4321, pid_start=None)  # its server is gone
    write_json_atomic(run / "status.json", record)

    at = app_test("app.py")
    at.run()
    assert not at.exception
    assert any(s.value == "Interrupted runs" for s in at.subheader)
    at.button(key="resume_left-behind").click().run()
    assert not at.exception
    from byol.jobs import shared_runner

    assert shared_runner(runs_dir).wait(timeout=10)
    assert fake_train.calls == ["left-behind"]
    assert runs.read_status(run)["state"] == runs.FINISHED


def test_display_helpers():
    from ui.common import fmt_bytes, fmt_duration, fmt_pct

    assert fmt_duration(42) == "42 s" and fmt_duration(720) == "12 min" and fmt_duration(3 * 3600 + 300) == "3 h 05 min"
    assert fmt_duration(60 * 3600) == "2 days 12 h" and fmt_duration(None) == "–"
    assert fmt_pct(None) == "–" and fmt_pct(61.234) == "61.2%"
    assert fmt_bytes(1_500_000) == "1.5 MB"


def test_the_sidebars_first_entry_is_home(runs_dir, app_test):
    at = app_test("app.py")
    at.run()
    assert not at.exception
    labels = [link.proto.label for link in at.sidebar.get("page_link")]
    assert labels == ["Home", "Train", "Compare", "Embeddings", "Retrieval"]


def strip_rows(at) -> list[tuple[str, list[str]]]:
    """The neighbour strip as shown: (query caption, its neighbours' captions) per row."""
    shown = [image.captions for image in at.image]
    return [(shown[i][0], shown[i + 1]) for i in range(0, len(shown) - 1, 2) if shown[i][0].startswith("#")]


def test_the_showcase_shows_its_neighbours_in_pictures_once_its_search_bank_is_ready(finished_run, app_test, monkeypatch):
    data, loads = small_data(), []
    monkeypatch.setattr(datasets, "load_for", lambda config: loads.append(config) or data)
    retrieval.clear_caches()
    at = app_test("app.py").run()
    assert not at.exception
    assert not strip_rows(at)  # Home computes no search bank: it points to the page that does
    assert any(neighbour_strip.NOT_READY in c.value for c in at.caption)
    assert loads == []  # nor loads images for a bank it would find missing

    embed.prepare_checkpoint(finished_run, checkpoint_choices(finished_run)[-1].path, None, data, level=embed.BANK)
    at = app_test("app.py").run()
    assert not at.exception
    rows = strip_rows(at)
    assert len(rows) == neighbour_strip.ROWS
    counts = [c.value for c in at.caption if "nearest by raw pixels" in c.value]
    for (query, neighbours), count in zip(rows, counts):
        assert len(neighbours) == neighbour_strip.NEIGHBOURS
        assert all(n[:2] in ("✓ ", "✗ ") for n in neighbours)
        query_class = query.split(" ", 1)[1]
        assert all((n[2:] == query_class) == n.startswith("✓") for n in neighbours)  # ✓ means the same class
        assert count.startswith(f"{sum(n.startswith('✓') for n in neighbours)} of {neighbour_strip.NEIGHBOURS} ")
    assert len({query.split(" ")[1] for query, _ in rows}) == len(rows)  # of different classes
    typical = [m.value for m in at.markdown if m.value.startswith("How typical are these?")]
    assert len(typical) == 1 and "by raw pixels" in typical[0]  # the score over many pictures, under the few

    draws = {tuple(query for query, _ in rows)}
    for _ in range(3):
        at.button(key="home-strip-more").click().run()
        assert not at.exception
        draws.add(tuple(query for query, _ in strip_rows(at)))
    assert len(draws) > 1  # the button draws other pictures


def test_the_strip_downloads_nothing_for_a_run_whose_images_are_not_here(finished_run, app_test, monkeypatch):
    runs.set_data_source(finished_run, "cifar10")  # a demo naming CIFAR-10, on a computer without a copy
    downloads = []
    monkeypatch.setattr(cifar10, "load", lambda *args, **kwargs: downloads.append(args))
    at = app_test("app.py").run()
    assert not at.exception
    assert downloads == [] and not strip_rows(at)
    assert any(neighbour_strip.NOT_READY in c.value for c in at.caption)
