"""Train page: empty state, a finished run's curves, plain errors for bad input, launch/stop/delete."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from byol import demos, metrics_file, runs
from byol.config import PRESETS, preset
from byol.device import resolve_device, use_bf16
from byol.estimate import speed_key
from byol.jobs import shared_runner

PAGE = "pages/1_Train.py"


def alerts(at, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


def widget(at, kind: str, key_start: str):
    """The widget of `kind` whose key starts with `key_start` (keys carry the preset's name)."""
    for element in at.get(kind):
        if element.key and element.key.startswith(key_start):
            return element
    raise AssertionError(f"no {kind} with a key starting {key_start!r}")


def use_synthetic(at) -> None:
    at.radio(key="new_source").set_value("synthetic")


def test_empty_state_says_what_to_do(runs_dir, app_test):
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert any("No runs yet" in text for text in alerts(at, "info"))
    assert at.button(key="launch") is not None
    assert len(at.get("plotly_chart")) == 0


def test_finished_run_shows_its_curves_and_message(finished_run, app_test):
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert at.selectbox(key="train_run").value == "tiny-finished"
    assert any(text.startswith("Finished") for text in alerts(at, "success"))
    assert len(at.get("plotly_chart")) == 4  # loss, kNN with baselines, collapse meter, effective rank
    assert at.button(key="resume").label == "Train further"
    total = widget(at, "number_input", "resume_epochs_")
    planned = runs.read_config(finished_run).epochs
    assert total.value == total.proto.min == planned + 1  # a finished run can only go further
    assert at.button(key="delete").disabled  # until the confirmation box is ticked


def test_latest_knn_says_untrained_until_the_first_evaluation_after_step_0(runs_dir, app_test, tiny_config):
    run_dir = runs.create_run(runs_dir, tiny_config(), "just-started")
    metrics_file.append_rows(run_dir, [{"kind": "eval", "step": 0, "epoch": 0.0, "knn": 26.5, "pixel_knn": 33.3}])
    at = app_test(PAGE).run()
    latest = next(m for m in at.metric if m.label == "Latest kNN")
    assert (latest.value, latest.delta) == ("26.5%", "untrained network")  # not "+0.0 vs random init"
    metrics_file.append_rows(run_dir, [{"kind": "eval", "step": 10, "epoch": 1.0, "knn": 30.0}])
    at.run()
    latest = next(m for m in at.metric if m.label == "Latest kNN")
    assert (latest.value, latest.delta) == ("30.0%", "+3.5 vs random init")


def test_a_run_without_optimiser_state_offers_no_train_further(finished_run, app_test):
    (finished_run / runs.LAST_CHECKPOINT).unlink()  # as the shipped demo run: snapshots and metrics only
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert not [b for b in at.button if b.key == "resume"]
    assert any("cannot continue" in caption.value for caption in at.caption)


def test_query_param_picks_the_run(finished_run, runs_dir, app_test):
    shutil.copytree(finished_run, runs_dir / "another")
    status = json.loads((runs_dir / "another" / "status.json").read_text())
    status["created"] = status["created"] + 10  # newest, so it would be the default
    (runs_dir / "another" / "status.json").write_text(json.dumps(status))
    at = app_test(PAGE)
    at.run()
    assert at.selectbox(key="train_run").value == "another"
    at = app_test(PAGE, query_params={"run": "tiny-finished"})
    at.run()
    assert not at.exception
    assert at.selectbox(key="train_run").value == "tiny-finished"


def test_zero_epochs_is_a_plain_error_and_launch_is_disabled(runs_dir, app_test):
    at = app_test(PAGE)
    at.run()
    use_synthetic(at)
    widget(at, "number_input", "new_epochs_").set_value(0)
    at.run()
    assert not at.exception
    assert "Epochs (epochs) must be from 1 to 10000; got 0." in alerts(at, "error")
    assert at.button(key="launch").disabled
    assert list(runs_dir.iterdir()) == []


def form_with_data_folder(app_test, folder):
    """The Train page with "folder" chosen as the data source and `folder` typed in."""
    at = app_test(PAGE)
    at.run()
    at.radio(key="new_source").set_value("folder")
    at.run()
    at.text_input(key="new_path").input(str(folder))
    at.run()
    return at


def test_missing_data_folder_is_a_plain_error(runs_dir, app_test, tmp_path):
    at = form_with_data_folder(app_test, tmp_path / "no-such-folder")
    assert not at.exception
    errors = alerts(at, "error")
    assert any("no-such-folder" in e and "Data source" in e for e in errors), errors
    assert at.button(key="launch").disabled


def test_folder_that_is_not_a_data_set_is_a_plain_error(runs_dir, app_test, tmp_path):
    (tmp_path / "holiday-photos" / "beach").mkdir(parents=True)
    at = form_with_data_folder(app_test, tmp_path / "holiday-photos")
    assert not at.exception
    assert any("does not look like an image data set" in e for e in alerts(at, "error")), alerts(at, "error")
    assert at.button(key="launch").disabled
    assert list(runs_dir.iterdir()) == []


def launch_named(at, runs_dir, name: str):
    """Type `name` as the run's name, click Launch, wait for the queued run; its saved config."""
    at.text_input(key="new_run_name").input(name)
    at.run()
    at.button(key="launch").click().run()
    assert not at.exception
    assert shared_runner(runs_dir).wait(timeout=10)
    return runs.read_config(runs_dir / name)


def test_launch_queues_a_run_and_shows_it(runs_dir, app_test, fake_train):
    fake_train.auto_release = True
    at = app_test(PAGE)
    at.run()
    use_synthetic(at)
    widget(at, "number_input", "new_epochs_").set_value(2)
    config = launch_named(at, runs_dir, "from-the-page")
    assert fake_train.calls == ["from-the-page"]
    assert (config.data, config.epochs, config.preset) == ("synthetic", 2, at.selectbox(key="new_preset").value)
    at.run()
    assert at.selectbox(key="train_run").value == "from-the-page"


def test_the_form_shows_the_presets_whole_recipe_and_launches_what_it_shows(runs_dir, app_test, fake_train):
    fake_train.auto_release = True
    at = app_test(PAGE)
    at.run()
    use_synthetic(at)
    chosen = preset(at.selectbox(key="new_preset").value)
    share, views = widget(at, "number_input", "new_lr_decay_share_"), widget(at, "number_input", "new_view_resolution_")
    assert (share.value, views.value) == (chosen.lr_decay_share, chosen.view_resolution)
    share.set_value(0.0)
    at.run()
    assert "Learning-rate decay share (lr_decay_share) must be from 0.01 to 1; got 0." in alerts(at, "error")
    assert at.button(key="launch").disabled
    widget(at, "number_input", "new_lr_decay_share_").set_value(0.5)
    widget(at, "number_input", "new_view_resolution_").set_value(1.0)
    widget(at, "number_input", "new_crop_min_scale_").set_value(0.2)
    widget(at, "number_input", "new_jitter_strength_").set_value(0.5)
    widget(at, "number_input", "new_predictor_lr_scale_").set_value(10.0)
    config = launch_named(at, runs_dir, "whole-recipe")
    assert (config.lr_decay_share, config.view_resolution, config.crop_min_scale) == (0.5, 1.0, 0.2)
    assert (config.jitter_strength, config.predictor_lr_scale) == (0.5, 10.0)


def test_a_new_run_can_start_from_a_finished_runs_settings(finished_run, runs_dir, app_test, fake_train):
    """'New run with these settings' fills the form with the run's whole recipe; the launch trains what it shows."""
    fake_train.auto_release = True
    source = runs.read_config(finished_run).replace(
        lr=0.0123, tau_schedule="fixed", precision="fp32", device="cpu", notes="how it was made"
    )
    runs.update_config(finished_run, source)
    at = app_test(PAGE)
    at.run()
    at.button(key="copy_settings").click().run()
    assert not at.exception
    assert not [s for s in at.selectbox if s.key == "new_preset"]  # the run's settings, not a preset's
    form = f"run-{finished_run.name}"
    assert at.number_input(key=f"new_lr_{form}").value == source.lr
    assert at.selectbox(key=f"new_tau_s_{form}").value == "fixed"
    use_synthetic(at)
    at.number_input(key=f"new_epochs_{form}").set_value(source.epochs + 1)
    config = launch_named(at, runs_dir, "again")
    assert config == source.replace(epochs=source.epochs + 1, data="synthetic", notes="")
    at.button(key="new_from_presets").click().run()
    assert not at.exception
    assert at.selectbox(key="new_preset").value in PRESETS


def test_running_run_can_be_stopped(runs_dir, app_test, fake_train, tiny_config):
    runner = shared_runner(runs_dir)
    run = runner.launch(tiny_config(), "live-one")
    assert fake_train.wait_started("live-one")
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert at.selectbox(key="train_run").value == "live-one"
    assert any("Training now" in m.value for m in at.markdown)
    at.button(key="stop").click().run()
    assert not at.exception
    assert runner.wait(timeout=10)
    assert runs.read_status(run)["state"] == runs.STOPPED


def test_delete_needs_confirmation(finished_run, app_test):
    at = app_test(PAGE)
    at.run()
    at.checkbox(key="confirm_delete_tiny-finished").check().run()
    at.button(key="delete").click().run()
    assert not at.exception
    assert not finished_run.exists()
    assert any("No runs yet" in text for text in alerts(at, "info"))


def test_a_shipped_demo_run_offers_no_delete(finished_run, app_test):
    (finished_run / demos.DEMO_RECORD).write_text('{"label": "a demo"}')
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert not [b for b in at.button if b.key == "delete"]
    assert not [c for c in at.checkbox if (c.key or "").startswith("confirm_delete")]
    assert any("cannot be deleted" in caption.value for caption in at.caption)
    assert finished_run.exists()


def test_cached_speed_shows_the_estimate(runs_dir, app_test, session_cache_dir):
    at = app_test(PAGE)
    at.run()
    use_synthetic(at)
    at.run()
    cfg = preset(at.selectbox(key="new_preset").value, data="synthetic")
    device = resolve_device("auto")
    key = speed_key(cfg, device, use_bf16("auto", device))
    speed_file = session_cache_dir / "speed.json"
    table = json.loads(speed_file.read_text()) if speed_file.exists() else {}
    table[key] = {"images_per_s": 1000.0, "batch": cfg.batch_size}
    speed_file.write_text(json.dumps(table))
    at.run()
    assert not at.exception
    assert any("Estimated time" in text for text in alerts(at, "info"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without a GPU")
def test_gpu_preset_on_cpu_warns_in_hours(runs_dir, app_test):
    at = app_test(PAGE)
    at.run()
    use_synthetic(at)
    at.selectbox(key="new_preset").set_value("gpu")
    at.run()
    assert not at.exception
    warnings = alerts(at, "warning")
    assert any("hours" in w and "cpu preset" in w for w in warnings), warnings


def test_estimate_button_measures_real_steps(runs_dir, app_test):
    at = app_test(PAGE)
    at.run()
    use_synthetic(at)
    widget(at, "number_input", "new_width_").set_value(4)
    widget(at, "number_input", "new_batch_").set_value(16)
    widget(at, "number_input", "new_ph_").set_value(32)
    widget(at, "number_input", "new_qh_").set_value(32)
    widget(at, "number_input", "new_k_").set_value(10)
    at.run()
    assert not any("Estimated time" in text for text in alerts(at, "info"))
    at.button(key="estimate").click().run()
    assert not at.exception
    assert any("Estimated time" in text for text in alerts(at, "info"))
    assert any("Measured" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "estimate"]  # the estimate took the button's place


def test_picker_follows_a_new_link_but_keeps_a_choice(finished_run, runs_dir, app_test):
    shutil.copytree(finished_run, runs_dir / "another")
    at = app_test(PAGE, query_params={"run": "another"})
    at.run()
    assert at.selectbox(key="train_run").value == "another"
    at.selectbox(key="train_run").set_value("tiny-finished").run()
    assert at.selectbox(key="train_run").value == "tiny-finished"
    assert at.query_params["run"] == "tiny-finished"  # the URL follows the choice
    at.query_params["run"] = "another"  # arriving again through a link to the other run
    at.run()
    assert at.selectbox(key="train_run").value == "another"


def test_a_finished_run_links_to_the_run_training_after_it(runs_dir, app_test, fake_train, tiny_config):
    """The batch-norm experiment's two runs train one after the other: the page showing the first,
    finished, offers one click to the second."""
    runner = shared_runner(runs_dir)
    first = runner.launch(tiny_config(), "first")
    runner.launch(tiny_config(), "second")
    assert fake_train.wait_started("first")
    fake_train.release("first")
    assert fake_train.wait_started("second")
    at = app_test(PAGE)
    at.query_params["run"] = "first"
    at.run()
    assert not at.exception
    assert at.selectbox(key="train_run").value == "first"
    assert runs.read_status(first)["state"] == runs.FINISHED
    links = [(link.proto.label, link.proto.query_string) for link in at.main.get("page_link")]
    assert ("Watch the run training now: second", "run=second") in links
    fake_train.release("second")
    assert runner.wait(timeout=10)
    at.run()  # nothing trains after it any more: no such link
    assert not [link for link in at.main.get("page_link") if link.proto.label.startswith("Watch the")]
