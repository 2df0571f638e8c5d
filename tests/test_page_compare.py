"""Compare page: the runs overlaid with their collapse marked, the verdict, and the batch-norm experiment."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from byol import runs
from byol.config import PRESETS, preset
from byol.device import resolve_device, use_bf16
from byol.estimate import estimate_time, speed_key
from byol.jobs import shared_runner
from byol.pairs import pair_configs
from helpers import shipped_pair
from ui.common import collapse_sentences, fmt_duration, shared_value

PAGE = "pages/2_Compare.py"


# --- the page --------------------------------------------------------------------------------
def test_empty_state_says_what_to_do(runs_dir, app_test):
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert any("No runs to compare yet" in str(e.value) for e in at.info)
    assert "collapse" in at.markdown[0].value.lower()


def test_two_runs_overlay_and_differences(finished_run, runs_dir, app_test):
    other = runs_dir / "seed-1"
    shutil.copytree(finished_run, other)
    config = json.loads((other / "config.json").read_text())
    config["seed"] = 1
    (other / "config.json").write_text(json.dumps(config))

    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert sorted(at.multiselect(key="compare_runs").value) == ["seed-1", "tiny-finished"]
    assert len(at.get("plotly_chart")) == 4  # loss, kNN, spread, effective rank
    verdict = at.dataframe[0].value
    assert set(verdict["Collapsed"]) == {"no"}
    differences = at.dataframe[1].value
    assert list(differences["setting"]) == ["Seed (seed)"]

    at.slider(key="compare_smoothing").set_value(0.0).run()
    assert not at.exception
    at.multiselect(key="compare_runs").set_value([]).run()
    assert not at.exception
    assert any("Pick one or more runs" in str(e.value) for e in at.info)


def test_a_fresh_checkout_opens_on_the_shipped_pair_and_shows_its_collapse(runs_dir, app_test):
    """The batch-norm pair ships already trained (the cpu preset, with and without batch norm in the
    heads): the page opens on it, and what it shows is the collapse the experiment is about."""
    pair = shipped_pair()
    for run_dir in pair:
        shutil.copytree(run_dir, runs_dir / run_dir.name)
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert at.multiselect(key="compare_runs").value == [p.name for p in pair]
    verdict = at.dataframe[0].value.set_index("Run")
    with_bn, without_bn = (verdict.loc[p.name] for p in pair)
    assert with_bn["BN in heads"] == "yes" and with_bn["Collapsed"] == "no"
    assert without_bn["BN in heads"] == "no" and without_bn["Collapsed"].startswith("at step")
    assert "spread back" not in without_bn["Collapsed"]  # plain SGD keeps it collapsed
    assert with_bn["Best kNN %"] - without_bn["Best kNN %"] >= 15  # issue 11's gap, in kNN accuracy
    assert with_bn["Raw pixels %"] == without_bn["Raw pixels %"]  # one bank and queries: one floor
    assert without_bn["Best kNN %"] - without_bn["Raw pixels %"] < 2  # it learned no more than pixels hold
    # The same verdict in plain words, for the collapsed run alone, as it ended.
    (told,) = [w.value for w in at.warning]
    assert told.startswith(f"**{pair[1].name}** collapsed at step ") and "never recovered" in told
    assert f"ended at {without_bn['Best kNN %']:.1f}%, against {without_bn['Raw pixels %']:.1f}% for raw pixels" in told
    # ...with one click to what its neighbours look like.
    (to_pictures,) = [link.proto for link in at.main.get("page_link") if link.proto.page == "Retrieval"]
    assert to_pictures.query_string == f"run={pair[1].name}"
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    (knn_chart,) = [c for c in charts if "kNN accuracy" in json.dumps(c["layout"].get("title"))]
    lines = [a["text"] for a in knn_chart["layout"]["annotations"]]
    assert f"raw pixels {with_bn['Raw pixels %']:.1f}%" in lines and f"random init {with_bn['Random init %']:.1f}%" in lines
    assert list(at.dataframe[1].value["setting"]) == ["Batch norm in the heads (head_bn)"]  # the one difference
    assert any(e.label.startswith("These runs came with BYOL Studio") for e in at.expander)


def test_bn_experiment_launches_a_pair(runs_dir, app_test, fake_train):
    fake_train.auto_release = True
    at = app_test(PAGE)
    at.run()
    at.radio(key="pair_source").set_value("synthetic")
    at.run()
    at.number_input(key="pair_epochs_cpu").set_value(1)
    at.run()
    at.button(key="launch_pair").click().run()
    assert not at.exception
    assert shared_runner(runs_dir).wait(timeout=10)
    names = sorted(p.name for p in runs_dir.iterdir() if not p.name.startswith("."))
    assert len(names) == 2 and names[0].endswith("-bn") and names[1].endswith("-no-bn")
    configs = [runs.read_config(runs_dir / n) for n in names]
    assert [c.head_bn for c in configs] == [True, False]
    # One epoch is shorter than the preset's warm-up: the pair keeps the warm-up's share of the schedule.
    assert [c.warmup_epochs for c in configs] == [PRESETS["cpu"].warmup_epochs / PRESETS["cpu"].epochs] * 2
    at.run()
    assert not at.exception
    assert sorted(at.multiselect(key="compare_runs").value) == names


def test_bn_experiment_bad_input_is_a_plain_error(runs_dir, app_test):
    at = app_test(PAGE)
    at.run()
    at.radio(key="pair_source").set_value("synthetic")
    at.run()
    at.number_input(key="pair_epochs_cpu").set_value(0)
    at.run()
    assert not at.exception
    assert "Epochs (epochs) must be from 1 to 10000; got 0." in [str(e.value) for e in at.error]
    assert at.button(key="launch_pair").disabled


def test_bn_experiment_says_how_long_both_runs_take(runs_dir, app_test, session_cache_dir):
    with_bn, without_bn = pair_configs(preset("cpu", data="synthetic"))
    device = resolve_device("auto")
    keys = [speed_key(config, device, use_bf16("auto", device)) for config in (with_bn, without_bn)]
    speed_file = session_cache_dir / "speed.json"
    before = speed_file.read_text() if speed_file.exists() else None
    table = {k: v for k, v in (json.loads(before) if before else {}).items() if k not in keys}
    try:
        speed_file.write_text(json.dumps(table))
        at = app_test(PAGE).run()
        at.radio(key="pair_source").set_value("synthetic").run()
        assert not at.exception
        assert at.button(key="pair_estimate") is not None  # not measured here yet: one click measures
        assert not [i for i in at.info if "Estimated time" in i.value]

        for key, images_per_s in zip(keys, (1000.0, 500.0)):  # as if measured: the run without BN twice as slow
            table[key] = {"images_per_s": images_per_s, "batch": with_bn.batch_size}
        speed_file.write_text(json.dumps(table))
        at.run()
        assert not at.exception
        shown = [i.value for i in at.info if "Estimated time" in i.value]
        first, second = (estimate_time(config, measure=False) for config in (with_bn, without_bn))
        assert second.seconds == pytest.approx(2 * first.seconds, rel=0.01)
        assert len(shown) == 1 and f"**Estimated time: {fmt_duration(first.seconds + second.seconds)}**" in shown[0]
        # In the order they train: the run without batch norm first.
        assert f"without batch norm {fmt_duration(second.seconds)}, with {fmt_duration(first.seconds)}" in shown[0]
        (why,) = [c.value for c in at.caption if "Without batch norm: Measured" in c.value]
        assert "With: Measured" in why and why.count("Training:") == 1  # each speed, and the shared schedule once
    finally:
        if before is None:
            speed_file.unlink(missing_ok=True)
        else:
            speed_file.write_text(before)


def test_a_reference_line_is_drawn_only_for_a_value_every_measured_run_shares():
    assert shared_value([33.3, 33.3]) == 33.3
    assert shared_value(iter([33.3, 33.3])) == 33.3  # a generator, as the page passes
    assert shared_value([33.3, 41.1]) is None  # different banks: no one floor
    assert shared_value([33.3, None]) == 33.3  # one run has not measured it yet (queued)
    assert shared_value([None, None]) is None
    assert shared_value([]) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without a GPU")
def test_the_gpu_pair_on_a_cpu_warns_in_hours_for_both_runs(runs_dir, app_test):
    at = app_test(PAGE).run()
    at.radio(key="pair_source").set_value("synthetic").run()
    at.selectbox(key="pair_preset").set_value("gpu").run()
    assert not at.exception
    warnings = [w.value for w in at.warning]
    assert any("hours for the 2 runs" in w and "cpu preset" in w for w in warnings), warnings


def test_a_collapse_told_while_the_run_trains_says_where_it_is_not_where_it_ended():
    collapsed = shipped_pair()[1]
    finished = runs.summarize_run(collapsed)
    training = dataclasses.replace(finished, state=runs.RUNNING)
    assert "Its kNN accuracy ended at 34.0%" in collapse_sentences(finished, "The network")
    assert "Its kNN accuracy is now 34.0%" in collapse_sentences(training, "The network")
    assert "never recovered" in collapse_sentences(finished, "The network")
    assert "has not recovered so far" in collapse_sentences(training, "The network")  # it still may
    # Before its first evaluation after step 0, the only figure is the untrained network's: said as such.
    just_started = dataclasses.replace(training, latest_knn=26.5, best_knn=None, baseline_knn=26.5)
    told = collapse_sentences(just_started, "The network")
    assert "is now" not in told and "not measured yet; untrained, the network scored 26.5%, against 33.3%" in told
