"""The Retrieval page (AppTest): empty state, the search bank computing by itself (and a failure that
waits for "Try again"), a picked query's k neighbours in the results window, the random-init /
raw-pixel comparison computing what it needs, uploads good and bad, a damaged checkpoint, and the
note above a collapsed run's pictures (the run picker Embeddings shares, so checked on both pages).

AppTest cannot run the picture grid's script, so a click is what the grid's callback does: the page's
`ret-query` set to the picture's number. What the grid shows is read from the data the page sends it.
"""

import base64
import io
import json
import shutil
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from byol import cifar10, embed, images, neighbour_score, retrieval, runs
from byol import data as datasets
from byol.checkpoint import checkpoint_choices
from byol.errors import UserError
from helpers import another_computation_under_way, run_cli, shipped_pair, write_image_folder
from test_page_embeddings import run_until
from test_retrieval import small_data
from ui import picture_grid

PAGE = "pages/4_Retrieval.py"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def quick(monkeypatch):
    data = small_data()
    monkeypatch.setattr(datasets, "load_for", lambda config: data)
    retrieval.clear_caches()
    neighbour_score.clear_cache()
    return data


def captions(at, prefix: str) -> list[str]:
    return [c for image in at.image for c in image.captions if c.startswith(prefix)]


def gallery(at) -> list[dict]:
    """The pictures the page's grid shows (number, alt text, caption), as the page sends them."""
    grids = [e for e in at.get("bidi_component") if e.proto.component_name == picture_grid.NAME]
    return json.loads(grids[0].proto.json)["pictures"] if grids else []


def shown(at) -> list[int]:
    return [picture["index"] for picture in gallery(at)]


def click_picture(at, index: int):
    """What clicking picture `index` does: the grid's callback makes it the query."""
    at.session_state["ret-query"] = index
    return at.run()


def ready_page(app_test):
    """The page for the finished run, after its first visit has computed the search bank by itself."""
    at = app_test(PAGE).run()
    assert not at.exception
    assert not [b for b in at.button if (b.key or "").startswith("compute-")]  # nothing to click first
    return run_until(at, lambda at: len(shown(at)) > 0)


def png_bytes(colour=(200, 30, 30), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_empty_runs_folder_says_what_to_do(runs_dir, app_test):
    at = app_test(PAGE).run()
    assert not at.exception
    assert any("no training runs yet" in info.value for info in at.info)


def test_after_the_embed_command_the_page_shows_its_gallery_without_asking(finished_run, app_test):
    embedded = run_cli("embed", str(finished_run))
    assert embedded.returncode == 0, embedded.stderr
    at = app_test(PAGE).run()
    assert not at.exception
    assert not at.get("progress") and not any("computing them now" in c.value for c in at.caption)
    assert shown(at)


def test_the_first_visit_computes_the_search_bank_by_itself_with_progress(finished_run, app_test, quick):
    at = app_test(PAGE).run()
    assert not at.exception
    assert any("training-set embeddings" in c.value and "computing them now" in c.value for c in at.caption)
    assert not shown(at)  # the gallery waits for the bank
    run_until(at, lambda at: len(shown(at)) == 3 * len(quick.classes))  # three per class
    assert not at.error


def test_a_failed_computation_shows_its_error_and_waits_for_try_again(finished_run, app_test, quick, monkeypatch):
    real, calls = embed.prepare_checkpoint, []

    def broken(*args, **kwargs):
        calls.append(1)
        raise UserError("The disk is full: the embeddings could not be saved.")

    monkeypatch.setattr(embed, "prepare_checkpoint", broken)
    at = app_test(PAGE).run()
    run_until(at, lambda at: any("disk is full" in e.value for e in at.error))
    for _ in range(3):  # it does not start again by itself
        at.run()
    assert len(calls) == 1 and not at.exception
    retry = at.button(key="compute-ret")
    assert retry.label == "Try again"
    monkeypatch.setattr(embed, "prepare_checkpoint", real)
    retry.click()
    run_until(at, lambda at: len(shown(at)) > 0)
    assert not at.error


def test_while_another_computation_runs_the_page_asks_instead_of_queueing(finished_run, app_test, quick):
    # Flicking through checkpoints must not queue minutes of work each: only an idle runner starts by itself.
    with another_computation_under_way():
        at = app_test(PAGE).run()
        assert not at.exception
        assert at.button(key="compute-ret").label == "Compute now"
        assert any("Another computation is under way" in c.value for c in at.caption)
    at.button(key="compute-ret").click()
    run_until(at, lambda at: len(shown(at)) > 0)


def test_clicking_a_test_image_shows_k_neighbours_with_precision(finished_run, app_test, quick):
    at = ready_page(app_test)
    pictures = gallery(at)
    index = pictures[4]["index"]
    label = quick.classes[int(quick.test_labels[index])]
    assert pictures[4]["alt"] == f"test image #{index} ({label})" and pictures[4]["caption"] == f"#{index} {label}"
    assert not captions(at, "neighbour ")  # nothing chosen yet: no results

    click_picture(at, index)
    assert not at.exception and not at.error
    assert len(captions(at, "neighbour ")) == 10  # the default k
    at.slider(key="ret-k").set_value(6).run()
    found = captions(at, "neighbour ")
    assert len(found) == 6 and found[0].startswith("neighbour 1: ")
    assert captions(at, "query: ") == [f"query: test image #{index} ({label})"]
    assert any(metric.label == "precision@6" for metric in at.metric)


def test_the_results_settings_are_kept_for_the_next_query(finished_run, app_test, quick):
    at = ready_page(app_test)
    first, second = shown(at)[:2]
    click_picture(at, first)
    at.slider(key="ret-k").set_value(3).run()
    at.session_state["ret-query"] = None  # the results window closed: its slider is not drawn
    at.run()
    assert not captions(at, "neighbour ")
    click_picture(at, second)
    assert at.slider(key="ret-k").value == 3 and len(captions(at, "neighbour ")) == 3


def test_class_filter_and_reshuffle_change_the_gallery(finished_run, app_test, quick):
    at = ready_page(app_test)
    first = shown(at)
    at.button(key="ret-reshuffle").click()
    at.run()
    assert shown(at) != first
    at.selectbox(key="ret-class").set_value("square")
    at.run()
    assert shown(at) and all(quick.classes[int(quick.test_labels[i])] == "square" for i in shown(at))


def test_the_headline_scores_the_checkpoint_against_raw_pixels_guessing_and_on_request_the_untrained_network(
    finished_run, app_test, quick
):
    at = ready_page(app_test)
    metrics = {metric.label: metric.value for metric in at.metric}
    checkpoint = checkpoint_choices(finished_run)[-1].path  # the page opens on the newest checkpoint
    assert metrics["This checkpoint"] == f"{neighbour_score.checkpoint_score(finished_run, checkpoint, quick):.0%}"
    assert metrics["Raw pixels"] == f"{neighbour_score.pixel_score(quick):.0%}"
    assert metrics["Guessing"] == "10%"
    assert "Untrained network" not in metrics  # its search bank is not there yet: a button offers it
    at.button(key="score-untrained").click()
    run_until(at, lambda at: any(metric.label == "Untrained network" for metric in at.metric))
    untrained = next(metric.value for metric in at.metric if metric.label == "Untrained network")
    assert untrained == f"{neighbour_score.checkpoint_score(finished_run, finished_run / 'step-00000000.pt', quick):.0%}"
    assert not at.error


def test_comparison_computes_random_init_by_itself_beside_raw_pixels(finished_run, app_test, quick):
    at = ready_page(app_test)
    click_picture(at, shown(at)[0])
    at.slider(key="ret-k").set_value(4)
    at.toggle(key="ret-compare").set_value(True)
    at.run()
    assert not at.exception
    assert len(captions(at, "neighbour ")) == 4 and len(captions(at, "pixels ")) == 4
    assert any("step-00000000.pt" in c.value and "computing them now" in c.value for c in at.caption)
    assert not [b for b in at.button if (b.key or "").startswith("compute-")]  # no button to press
    run_until(at, lambda at: len(captions(at, "random init ")) == 4)
    assert len(captions(at, "neighbour ")) == 4 and not at.error


def test_an_uploaded_picture_is_searched_and_a_non_image_gets_a_plain_error(finished_run, app_test, quick):
    at = ready_page(app_test)
    at.file_uploader[0].set_value(("notes.txt", b"this is not a picture", "text/plain"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "notes.txt" in at.error[0].value and "not an image" in at.error[0].value
    assert captions(at, "neighbour ") == []

    at.file_uploader[0].set_value(("red.png", png_bytes(), "image/png"))
    at.run()
    assert not at.exception and not at.error
    assert captions(at, "query: ") == ["query: your picture (red.png)"]
    assert len(captions(at, "neighbour ")) == 10  # the default k
    assert not any(metric.label.startswith("precision@") for metric in at.metric)  # an upload has no class


def test_the_upload_box_takes_what_the_server_accepts(finished_run, app_test, quick):
    # The server refuses uploads above its own `server.maxUploadSize`, whatever the box says: a box that
    # promised more would let a picture through only to fail in transit, without a plain message.
    at = ready_page(app_test)
    server_limit = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert at.file_uploader[0].proto.max_upload_size_mb == images.MAX_UPLOAD_MB == server_limit
    assert f"up to {images.MAX_UPLOAD_MB} MB" in at.file_uploader[0].help


def test_clicking_a_gallery_picture_replaces_an_upload(finished_run, app_test, quick):
    at = ready_page(app_test)
    at.file_uploader[0].set_value(("red.png", png_bytes(), "image/png"))
    at.run()
    index = shown(at)[2]
    click_picture(at, index)
    assert captions(at, "query: ")[0].startswith(f"query: test image #{index} ")


def test_damaged_checkpoint_shows_a_plain_error(finished_run, app_test, quick):
    at = ready_page(app_test)
    (finished_run / "step-00000008.pt").write_bytes(b"PK\x03\x04 damaged zip")
    retrieval.clear_caches()
    click_picture(at, shown(at)[0])
    assert not at.exception
    # Said plainly where the person looks: in the headline above the pictures, and in the results window.
    assert len(at.error) == 2 and all("damaged" in error.value for error in at.error)


def test_the_grid_describes_each_picture_and_reads_only_picture_numbers_from_a_click(quick):
    pictures = picture_grid.tiles(quick.test_images, [3, 0], quick.test_labels, quick.classes)
    name = quick.classes[int(quick.test_labels[3])]
    assert [p["index"] for p in pictures] == [3, 0]
    assert pictures[0]["alt"] == f"test image #3 ({name})" and pictures[0]["caption"] == f"#3 {name}"
    assert pictures[0]["src"].startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(pictures[0]["src"].split(",", 1)[1])))
    assert png.size == tuple(quick.test_images.shape[-1:-3:-1])  # sent at its own size; the browser upscales
    assert [picture_grid.clicked_index(v) for v in (7, 7.0, "12", None, "x", 2.5, True, [1])] == [
        7,
        7,
        12,
        None,
        None,
        None,
        None,
        None,
    ]


def test_a_collapsed_run_is_said_to_have_collapsed_before_its_pictures(runs_dir, app_test, quick):
    collapsed = shutil.copytree(shipped_pair()[1], runs_dir / "collapsed-run")
    for page in (PAGE, "pages/3_Embeddings.py"):
        at = app_test(page, query_params={"run": collapsed.name}).run()
        assert not at.exception
        told = [w.value for w in at.warning]
        assert any("The run **collapsed-run** collapsed at step" in w and "never recovered" in w for w in told), told
    # Its untrained network, saved before the collapse, is not what the collapse left: no warning there.
    at = app_test(PAGE, query_params={"run": collapsed.name}).run()
    at.selectbox(key=f"ret-checkpoint-{collapsed.name}").set_value("step-00000000.pt").run()
    assert not any("collapsed at step" in w.value for w in at.warning)
    healthy = shutil.copytree(shipped_pair()[0], runs_dir / "healthy-run")
    at = app_test(PAGE, query_params={"run": healthy.name}).run()
    assert not at.exception
    assert not any("collapsed at step" in w.value for w in at.warning)  # a healthy run gets no such warning


def test_a_run_whose_images_are_missing_can_be_pointed_at_a_copy(finished_run, app_test):
    # A shipped demo run names "cifar10", which may be neither downloaded nor downloadable here.
    good = runs.read_config(finished_run)
    runs.update_config(finished_run, good.replace(data="/nowhere/cifar"))
    at = app_test(PAGE)
    at.run()
    assert not at.exception
    assert at.error and "/nowhere" in at.error[0].value
    at.text_input[0].set_value("/still/nowhere").run()
    at.button(key=f"ret-relocate-button-{finished_run.name}").click().run()
    assert not at.exception and at.error
    assert runs.read_config(finished_run).data == "/nowhere/cifar"  # a wrong path changes nothing on disk
    at.text_input[0].set_value(good.data).run()
    at.button(key=f"ret-relocate-button-{finished_run.name}").click().run()
    assert not at.exception
    assert runs.read_config(finished_run).data == good.data
    # The choice lives in the run's local settings, which git ignores; config.json is left as it was.
    assert json.loads((finished_run / "config.json").read_text())["data"] == "/nowhere/cifar"
    assert json.loads((finished_run / runs.LOCAL_SETTINGS).read_text())["data"] == good.data


def test_a_run_naming_cifar10_opens_on_a_local_copy_without_asking(finished_run, app_test, monkeypatch, tmp_path):
    # The shipped demo names "cifar10"; where torchvision cannot download it but a copy lies at a
    # documented place, the page loads that copy, remembers it for the run and asks nothing.
    def no_download(*args, **kwargs):
        raise datasets.DataError("CIFAR-10 could not be downloaded (no internet?).")

    monkeypatch.setattr(cifar10, "load", no_download)
    copy = write_image_folder(tmp_path / "cifar-copy", train_per_class=6, test_per_class=3)
    monkeypatch.setenv("BYOL_CIFAR10_COPY", str(copy))
    runs.update_config(finished_run, runs.read_config(finished_run).replace(data="cifar10"))
    at = app_test(PAGE).run()
    assert not at.exception and not at.error
    assert not [t for t in at.text_input if (t.key or "").startswith("ret-relocate")]
    assert runs.read_config(finished_run).data == str(copy)
    assert json.loads((finished_run / "config.json").read_text())["data"] == "cifar10"  # the tracked file is untouched

    monkeypatch.setenv("BYOL_CIFAR10_COPY", "")  # no copy anywhere: the page asks, as before
    runs.set_data_source(finished_run, "cifar10")
    at = app_test(PAGE).run()
    assert at.error and [t for t in at.text_input if (t.key or "").startswith("ret-relocate")]
