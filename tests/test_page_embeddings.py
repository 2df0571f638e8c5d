"""The Embeddings page (AppTest) and its plain helpers: empty state, computing the map, picking a point, errors.

The run is conftest's `finished_run`; the data set it trained on is swapped for a smaller synthetic
one (200 training / 80 test images) and UMAP for a cheap stand-in, so a whole page test takes seconds.
"""

import time

import numpy as np
import pytest

from byol import data as datasets
from byol import embed, retrieval
from helpers import another_computation_under_way
from test_retrieval import install_fake_umap, small_data
from ui import inspection

PAGE = "pages/3_Embeddings.py"


@pytest.fixture
def quick(monkeypatch):
    """Small data and a stand-in UMAP for every page run of the test."""
    data = small_data()
    monkeypatch.setattr(datasets, "load_for", lambda config: data)
    install_fake_umap(monkeypatch)
    retrieval.clear_caches()
    return data


def run_until(at, done, timeout: float = 90.0):
    """Rerun the page (as its self-refreshing progress bar would) until `done(at)` or the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        at.run()
        assert not at.exception, at.exception[0].value if at.exception else ""
        if done(at):
            return at
        assert time.monotonic() < deadline, "the page did not get there in time: " + " | ".join(
            str(e.value) for e in (*at.info, *at.error)
        )
        time.sleep(0.3)


def has_map(at) -> bool:
    return len(at.get("plotly_chart")) == 2  # the map and the per-class accuracy bars


def compute_map(at):
    """The page's map, computed: by itself on a first visit, or through the button the page shows when it
    asks (another computation was under way)."""
    at.run()
    assert not at.exception
    asks = [b for b in at.button if b.key == "compute-emb"]
    if asks:
        asks[0].click()
    return run_until(at, has_map)


# --- plain helpers -------------------------------------------------------------------------------
def test_similarities_that_two_decimals_would_round_up_to_one_get_more_decimals():
    def captions(*similarities):
        found = [retrieval.Neighbour(train_index=i, label=0, similarity=s) for i, s in enumerate(similarities)]
        return [c.split(" (")[1] for c in inspection.neighbour_captions(found, ["cat"])]

    assert captions(0.9674, 0.5) == ["0.97)", "0.50)"]
    assert captions(0.9966, 0.9959) == ["0.997)", "0.996)"]  # an untrained network's neighbours: not "1.00"
    assert captions(0.99996, 0.9) == ["1.0000)", "0.9000)"]  # at most four decimals
    assert captions(1.0, 0.9) == ["1.00)", "0.90)"]  # the same image is 1


def test_selection_event_gives_test_image_numbers_in_order_without_repeats():
    event = {
        "selection": {
            "points": [
                {"curve_number": 2, "point_index": 0, "customdata": [17]},
                {"curve_number": 0, "point_index": 4, "customdata": [3]},
                {"curve_number": 2, "point_index": 0, "customdata": [17]},  # box and lasso can repeat a point
                {"curve_number": 1, "point_index": 1, "customdata": 5},  # a scalar customdata is fine too
                {"curve_number": 1, "point_index": 2},  # no customdata: ignored
            ],
            "point_indices": [0, 4, 0, 1, 2],
            "box": [],
            "lasso": [],
        }
    }
    assert inspection.selected_test_indices(event) == [17, 3, 5]
    assert inspection.selected_test_indices(None) == []
    assert inspection.selected_test_indices({"selection": {"points": []}}) == []


def test_focus_is_the_typed_number_else_the_first_selected_point():
    assert inspection.focus_index([4, 9], None) == 4
    assert inspection.focus_index([4, 9], 12) == 12
    assert inspection.focus_index([], None) is None


def test_map_figure_holds_test_numbers_in_customdata_and_names_classes():
    data = embed.MapData(
        coordinates=np.arange(12, dtype=np.float32).reshape(6, 2),
        labels=np.array([0, 1, 0, 1, 2, 2]),
        indices=np.arange(6) + 100,
        classes=["cat", "dog", "ship"],
    )
    figure = inspection.map_figure(data)
    assert [trace.name for trace in figure.data] == ["cat", "dog", "ship"]
    assert figure.data[0].type == "scattergl"
    assert [int(v[0]) for v in figure.data[1].customdata] == [101, 103]
    assert "dog" in figure.data[1].hovertemplate


# --- the page ------------------------------------------------------------------------------------
def test_empty_runs_folder_says_what_to_do(runs_dir, app_test):
    at = app_test(PAGE).run()
    assert not at.exception
    assert any("no training runs yet" in info.value for info in at.info)


def test_the_first_visit_computes_the_map_by_itself_and_a_point_shows_its_neighbours(finished_run, app_test, quick):
    at = app_test(PAGE).run()
    assert not at.exception
    assert any("computing them now" in caption.value for caption in at.caption)  # with no button to press first
    assert not [b for b in at.button if b.key == "compute-emb"]
    assert not has_map(at)

    run_until(at, has_map)
    assert any(metric.label == "kNN accuracy" for metric in at.metric)
    assert any("Click a dot" in info.value for info in at.info)  # nothing picked yet

    at.number_input(key="emb-test-image").set_value(5)
    at.run()
    assert not at.exception
    neighbour_captions = [c for image in at.image for c in image.captions if c.startswith("neighbour ")]
    assert len(neighbour_captions) == 8
    assert any("query: test image #5" in c for image in at.image for c in image.captions)
    classes = quick.classes
    assert all(any(name in c for name in classes) for c in neighbour_captions)
    # The count under them is the query's class among those 8 neighbours.
    query_class = classes[int(quick.test_labels[5])]
    same = sum(c.split(": ")[1].rsplit(" (", 1)[0] == query_class for c in neighbour_captions)
    assert any(caption.value.startswith(f"{same} of 8 neighbours are {query_class} images") for caption in at.caption)
    assert next(m for m in at.metric if m.label == "Chance level").value == f"{1 / len(classes):.0%}"


def test_while_another_computation_runs_the_map_page_asks_instead_of_queueing(finished_run, app_test, quick):
    # Flicking through checkpoints must not queue minutes of work each: only an idle runner starts by itself.
    with another_computation_under_way():
        at = app_test(PAGE).run()
        assert not at.exception
        assert at.button(key="compute-emb").label == "Compute now"
        assert any("Another computation is under way" in c.value for c in at.caption)
    at.button(key="compute-emb").click()
    run_until(at, has_map)


def test_an_earlier_checkpoint_can_be_mapped_too(finished_run, app_test, quick):
    at = app_test(PAGE).run()
    picker = at.selectbox(key=f"emb-checkpoint-{finished_run.name}")
    assert "random init" in picker.options[0] and picker.value == "step-00000008.pt"  # newest first shown
    picker.set_value("step-00000000.pt")
    at.run()
    compute_map(at)
    assert (finished_run / "embeddings" / "step-00000000-test-umap.npy").is_file()
    assert any("untrained network" in caption.value for caption in at.caption)


def test_damaged_checkpoint_shows_a_plain_error(finished_run, app_test, quick):
    (finished_run / "step-00000008.pt").write_bytes(b"\x00garbage, not a checkpoint")
    at = app_test(PAGE).run()  # the first visit starts the computation by itself
    run_until(at, lambda at: len(at.error) > 0)
    assert "damaged" in at.error[0].value
    for _ in range(3):  # a failure does not start again by itself
        at.run()
    assert at.button(key="compute-emb").label == "Try again"
    assert not at.exception


# --- the training film ---------------------------------------------------------------------------
class _FakeAlignedUMAP:
    """A cheap stand-in for umap.AlignedUMAP: each snapshot's first two feature columns."""

    def __init__(self, **kwargs):
        pass

    def fit_transform(self, features, relations=None):
        return [np.asarray(f, dtype=np.float32)[:, :2] for f in features]


@pytest.fixture
def quick_film(quick, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["umap"], "AlignedUMAP", _FakeAlignedUMAP, raising=False)
    return quick


def _film_spec(at) -> dict:
    """The film's plotly figure as sent to the browser (its title names the snapshot: "step 8 ...")."""
    import json

    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    films = [spec for spec in specs if str(spec["layout"].get("title", {}).get("text", "")).startswith("step ")]
    assert len(films) == 1, "expected one film on the page"
    return films[0]


def has_film(at) -> bool:
    return len(at.get("plotly_chart")) == 3  # the film, the map and the per-class accuracy bars


def test_film_is_computed_then_its_slider_and_colours_redraw_the_map(finished_run, app_test, quick_film):
    at = app_test(PAGE).run()
    compute_map(at)  # the checkpoint shown (the newest) gets its map and kNN votes first
    assert at.button(key="compute-film").label == "Compute the film"
    at.button(key="compute-film").click()
    run_until(at, has_film)
    assert (finished_run / "embeddings" / "film-test.npz").is_file()

    slider = at.select_slider(key=f"film-frame-{finished_run.name}")
    assert slider.options == ["step 0", "step 4", "step 8"] and slider.value == "step 8"  # the trained map first
    last = _film_spec(at)
    assert last["layout"]["title"]["text"].startswith("step 8")
    assert [trace["name"] for trace in last["data"]] == quick_film.classes

    slider.set_value("step 0")
    at.run()
    assert not at.exception
    first = _film_spec(at)
    assert first["layout"]["title"]["text"].startswith("step 0")
    assert first["data"][0]["x"] != last["data"][0]["x"]  # another network, another map

    # kNN votes: known for the checkpoint computed above, not (yet) for the untrained one.
    at.radio(key=f"film-colour-{finished_run.name}").set_value("kNN vote right or wrong")
    at.run()
    assert [trace["name"] for trace in _film_spec(at)["data"]] == ["kNN vote not computed for this snapshot"]
    assert any("kNN votes have not been computed" in caption.value for caption in at.caption)
    at.select_slider(key=f"film-frame-{finished_run.name}").set_value("step 8")
    at.run()
    assert {trace["name"] for trace in _film_spec(at)["data"]} <= {"kNN vote right", "kNN vote wrong"}
    assert any("Click a dot on the map to see its picture" in info.value for info in at.info)


def test_film_plays_to_the_last_snapshot_and_stops(finished_run, app_test, quick_film, monkeypatch):
    from ui import film

    monkeypatch.setattr(film, "FRAME_SECONDS", 2.0)
    at = app_test(PAGE).run()
    compute_map(at)
    at.button(key="compute-film").click()
    run_until(at, has_film)
    at.select_slider(key=f"film-frame-{finished_run.name}").set_value("step 0")
    at.run()
    at.button(key=f"film-play-{finished_run.name}").click()
    at.run()
    assert at.button(key=f"film-play-{finished_run.name}").label == "Pause"
    seen = [at.select_slider(key=f"film-frame-{finished_run.name}").value]
    assert seen == ["step 0"]  # the first frame shows for a whole tick
    at.run()  # a rerun sooner than a tick (a click elsewhere on the page) does not advance the film
    assert at.select_slider(key=f"film-frame-{finished_run.name}").value == "step 0"
    for _ in range(4):  # AppTest does not fire the timer: a run after a tick's wait stands for one tick
        time.sleep(film.FRAME_SECONDS)
        at.run()
        seen.append(at.select_slider(key=f"film-frame-{finished_run.name}").value)
    assert seen[-1] == "step 8" and "step 4" in seen
    assert at.button(key=f"film-play-{finished_run.name}").label == "Play"
