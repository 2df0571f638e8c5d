"""The Retrieval page (AppTest): empty state, search bank computing, clicking a query, k neighbours,
the random-init / raw-pixel comparison, uploads good and bad, and a damaged checkpoint."""

import io
import json

import pytest
from PIL import Image

from byol import cifar10, retrieval, runs
from byol import data as datasets
from helpers import run_cli, write_image_folder
from test_page_embeddings import run_until
from test_retrieval import small_data

PAGE = "pages/4_Retrieval.py"


@pytest.fixture
def quick(monkeypatch):
    data = small_data()
    monkeypatch.setattr(datasets, "load_for", lambda config: data)
    retrieval.clear_caches()
    return data


def captions(at, prefix: str) -> list[str]:
    return [c for image in at.image for c in image.captions if c.startswith(prefix)]


def query_buttons(at) -> list:
    return [b for b in at.button if (b.key or "").startswith("query-")]


def ready_page(app_test):
    """The page for the finished run with its search bank computed through the page's own button."""
    at = app_test(PAGE).run()
    assert not at.exception
    assert any("have not been computed yet" in info.value for info in at.info)
    at.button(key="compute-ret").click()
    return run_until(at, lambda at: len(query_buttons(at)) > 0)


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
    assert not any("have not been computed yet" in info.value for info in at.info)
    assert query_buttons(at)


def test_clicking_a_test_image_shows_k_neighbours_with_precision(finished_run, app_test, quick):
    at = ready_page(app_test)
    buttons = query_buttons(at)
    assert len(buttons) == 3 * len(quick.classes)  # three per class
    assert any("Click **Search**" in info.value for info in at.info)

    at.slider(key="ret-k").set_value(6)
    index = int(buttons[4].key.split("-")[1])
    buttons[4].click()
    at.run()
    assert not at.exception and not at.error
    found = captions(at, "neighbour ")
    assert len(found) == 6 and found[0].startswith("neighbour 1: ")
    label = quick.classes[int(quick.test_labels[index])]
    assert captions(at, "query: ") == [f"query: test image #{index} ({label})"]
    assert any(metric.label == "precision@6" for metric in at.metric)


def test_class_filter_and_reshuffle_change_the_gallery(finished_run, app_test, quick):
    at = ready_page(app_test)
    first = [b.key for b in query_buttons(at)]
    at.button(key="ret-reshuffle").click()
    at.run()
    assert [b.key for b in query_buttons(at)] != first
    at.selectbox(key="ret-class").set_value("square")
    at.run()
    shown = [int(b.key.split("-")[1]) for b in query_buttons(at)]
    assert shown and all(quick.classes[int(quick.test_labels[i])] == "square" for i in shown)


def test_comparison_shows_random_init_and_raw_pixel_neighbours_side_by_side(finished_run, app_test, quick):
    at = ready_page(app_test)
    at.slider(key="ret-k").set_value(4)
    query_buttons(at)[0].click()
    at.toggle(key="ret-compare").set_value(True)
    at.run()
    assert not at.exception
    assert len(captions(at, "neighbour ")) == 4 and len(captions(at, "pixels ")) == 4
    at.button(key="compute-ret-random").click()  # the untrained network's search bank
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


def test_clicking_a_gallery_picture_replaces_an_upload(finished_run, app_test, quick):
    at = ready_page(app_test)
    at.file_uploader[0].set_value(("red.png", png_bytes(), "image/png"))
    at.run()
    button = query_buttons(at)[2]
    button.click()
    at.run()
    assert captions(at, "query: ")[0].startswith(f"query: test image #{button.key.split('-')[1]} ")


def test_damaged_checkpoint_shows_a_plain_error(finished_run, app_test, quick):
    at = ready_page(app_test)
    (finished_run / "step-00000008.pt").write_bytes(b"PK\x03\x04 damaged zip")
    retrieval.clear_caches()
    query_buttons(at)[0].click()
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "damaged" in at.error[0].value


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
