"""A demo's shipped artefacts (byol/shipped.py): adopted where the local images are the same, never elsewhere."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from byol import cifar10, embed, map_film, probe, run_images, runs, shipped
from helpers import fresh_checkout, shipped_demo

# The embeddings and kNN votes; the map is one more file copied the same way, left out to spare UMAP's time.
SHIPPED = frozenset({embed.Artefact.TRAIN_EMBEDDINGS, embed.Artefact.TEST_EMBEDDINGS, embed.Artefact.KNN})


def _missing(run, checkpoint, data) -> list:
    """What a page would still compute for the checkpoint, at the run's own kNN settings."""
    config = runs.read_config(run)
    return embed.missing_work(run, checkpoint, SHIPPED, data, config.knn_k, config.knn_temperature)


def _ship_last_snapshot(run) -> tuple:
    """Compute the run's last snapshot's artefacts, ship them, and empty the run's artefact store."""
    data = run_images.run_data(run)
    last = runs.list_snapshots(run)[-1].path
    embed.prepare_checkpoint(run, last, data=data, level=SHIPPED)
    shipped.ship(run, data, embed.artefact_paths(run, last))
    shutil.rmtree(run / runs.EMBEDDINGS_FOLDER)
    embed.clear_cache()
    return data, last


def _reordered_test_split(data, order: np.ndarray):
    return dataclasses.replace(data, test_images=data.test_images[order], test_labels=data.test_labels[order])


def test_the_same_images_adopt_the_shipped_artefacts_and_the_pages_need_compute_nothing(finished_run):
    data, last = _ship_last_snapshot(finished_run)
    assert _missing(finished_run, last, data)  # the store is empty
    bank = embed.embedding_path(finished_run, last, "train").name
    assert shipped.ships(finished_run, bank) and not shipped.ships(finished_run, "step-99999999-train.npz")

    # Loading the run's images (what the pages and the command line do) adopts what was shipped.
    reloaded = run_images.run_data(finished_run)
    assert _missing(finished_run, last, reloaded) == []
    shipped_bank = np.load(shipped.shipped_folder(finished_run) / embed.embedding_path(finished_run, last, "train").name)
    np.testing.assert_array_equal(
        np.load(embed.embedding_path(finished_run, last, "train"))["features"], shipped_bank["features"]
    )


def test_pixels_decoded_a_level_or_two_apart_are_the_same_images(finished_run):
    data, last = _ship_last_snapshot(finished_run)
    noise = torch.randint(-2, 3, data.train_images.shape, generator=torch.Generator().manual_seed(0))
    decoded_elsewhere = dataclasses.replace(data, train_images=(data.train_images.int() + noise).clamp(0, 255).to(torch.uint8))
    assert shipped.identity_problem(shipped.read_identity(finished_run), decoded_elsewhere) is None
    assert shipped.adopt(finished_run, decoded_elsewhere)
    assert _missing(finished_run, last, decoded_elsewhere) == []


def test_other_images_or_another_order_adopt_nothing(finished_run):
    data, last = _ship_last_snapshot(finished_run)
    recorded = shipped.read_identity(finished_run)
    labels = data.test_labels.numpy()

    shuffled = _reordered_test_split(data, torch.from_numpy(np.random.default_rng(0).permutation(len(labels))))
    assert "another order" in shipped.identity_problem(recorded, shuffled)

    # Images swapped within each class keep every label in place: the pixels tell them apart.
    order = np.arange(len(labels))
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        order[rows] = np.roll(rows, 1)
    swapped = _reordered_test_split(data, torch.from_numpy(order))
    assert np.array_equal(swapped.test_labels.numpy(), labels)
    assert "pixel by pixel" in shipped.identity_problem(recorded, swapped)

    renamed = dataclasses.replace(data, classes=[f"other-{c}" for c in data.classes])
    assert shipped.identity_problem(recorded, renamed) == "its classes differ"

    for other in (shuffled, swapped, renamed):
        assert shipped.adopt(finished_run, other) == []
    assert not (finished_run / runs.EMBEDDINGS_FOLDER).exists()
    assert _missing(finished_run, last, data)  # computed as for any run


def test_artefacts_computed_here_are_kept_and_a_damaged_record_adopts_nothing(finished_run):
    data, last = _ship_last_snapshot(finished_run)
    knn_file = embed.knn_path(finished_run, last)
    knn_file.parent.mkdir()
    knn_file.write_text("{}")  # computed on this computer: never replaced by the shipped one
    adopted = shipped.adopt(finished_run, data)
    assert knn_file.name not in adopted and knn_file.read_text() == "{}"
    assert embed.embedding_path(finished_run, last, "train").name in adopted

    shutil.rmtree(finished_run / runs.EMBEDDINGS_FOLDER)
    (shipped.shipped_folder(finished_run) / shipped.IDENTITY_FILE).write_bytes(b"not an npz")
    assert shipped.adopt(finished_run, data) == []


def test_a_run_without_a_shipped_folder_adopts_nothing_and_writes_nothing(finished_run):
    data = run_images.run_data(finished_run)
    before = sorted(p.name for p in finished_run.iterdir())
    assert shipped.adopt(finished_run, data) == []
    assert sorted(p.name for p in finished_run.iterdir()) == before


def test_the_shipped_demo_opens_on_the_real_copy_with_nothing_to_compute(tmp_path):
    """Acceptance on the real CIFAR-10 copy (skipped without one): a fresh checkout of the shipped demo
    adopts everything a first visit to Embeddings, the film and Retrieval would compute."""
    if not any(path.exists() for path in cifar10.local_copies()):
        pytest.skip("no real CIFAR-10 copy at a documented place")
    demo = shipped_demo()
    fresh = fresh_checkout(demo, tmp_path / demo.name)
    embed.clear_cache()
    data = run_images.run_data(fresh)
    config = runs.read_config(fresh)
    snapshots = [s.path for s in runs.list_snapshots(fresh)]
    assert embed.missing_work(fresh, snapshots[-1], embed.FULL, data, config.knn_k, config.knn_temperature) == []
    assert embed.missing_work(fresh, snapshots[0], embed.BANK, data) == []
    film = map_film.load_film(fresh)
    assert all(frame is not None for frame in map_film.film_votes(fresh, film, config.knn_k, config.knn_temperature))
    assert probe.saved_probe(fresh, snapshots[-1]) is not None  # the linear probe shows without a click
    # The shipped votes are the demo's own: their accuracy is the kNN its demo.json states.
    stated = json.loads((fresh / "demo.json").read_text())["knn"]
    assert abs(embed.checkpoint_knn(fresh, snapshots[-1], config.knn_k, config.knn_temperature).accuracy - stated) < 1.0
