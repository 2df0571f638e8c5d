"""The training film (byol/map_film.py): the sample, the aligned layout, the saved film and its votes.

One test runs the real umap-learn on a small synthetic film (numba compiles it: tens of seconds);
the others use hand-made embeddings and test sets small enough for the PCA layout.
"""

import shutil

import numpy as np
import pytest
import torch

from byol import embed, map_film, run_images
from byol.knn import knn_predict


# --- the sample ----------------------------------------------------------------------------------
def test_balanced_sample_takes_each_class_evenly_and_gives_a_small_class_share_away():
    labels = np.array([0] * 500 + [1] * 500 + [2] * 30)
    rows = map_film.balanced_sample(labels, 300)
    assert len(rows) == 300 and np.all(np.diff(rows) > 0)
    counts = np.bincount(labels[rows])
    assert counts[2] == 30 and counts[0] == counts[1] == 135
    assert np.array_equal(map_film.balanced_sample(labels, 300), rows)  # fixed: the same images every time
    assert np.array_equal(map_film.balanced_sample(labels[:40], 100), np.arange(40))  # a small split whole


# --- the layout ----------------------------------------------------------------------------------
def _training_like_snapshots(count: int = 240, snapshots: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Features of the same images from networks that separate 6 classes more and more."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 6
    centres = rng.normal(size=(6, 24))
    base = rng.normal(size=(count, 24))
    frames = []
    for s in range(snapshots):
        drift = rng.normal(scale=0.3, size=(count, 24))  # what changes from one network to the next
        features = base + drift + (0.6 + 0.6 * s) * centres[labels]
        frames.append((features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32))
    return frames


def _normalised(coordinates: np.ndarray) -> np.ndarray:
    centred = coordinates - coordinates.mean(axis=0)
    return centred / np.sqrt((centred**2).sum(axis=1).mean())


def _movement(maps: list[np.ndarray]) -> float:
    """Mean distance an image moves between consecutive maps, after the best rigid turn (scale-free)."""
    moves = []
    for before, after in zip(maps, maps[1:]):
        a, b = _normalised(before), _normalised(after)
        moves.append(np.linalg.norm(map_film._rotate_onto(b, a) - a, axis=1).mean())
    return float(np.mean(moves))


def test_aligned_maps_keep_each_image_in_place_better_than_independent_umaps():
    import umap

    frames = _training_like_snapshots()
    aligned, method = map_film.aligned_layout(frames)
    assert method == "aligned UMAP" and aligned.shape == (4, 240, 2)
    independent = [
        umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=s).fit_transform(f) for s, f in enumerate(frames)
    ]
    # Independent maps are even given the best rotation or reflection onto the previous one.
    assert _movement(list(aligned)) < 0.6 * _movement(independent), (_movement(list(aligned)), _movement(independent))


def test_a_tiny_test_set_gets_pca_maps_turned_onto_each_other():
    frames = _training_like_snapshots(count=12, snapshots=2)
    frames[1] = -frames[0]  # the same picture, mirrored through the origin
    maps, method = map_film.aligned_layout(frames)
    assert method == "PCA" and maps.shape == (2, 12, 2)
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-4)  # turned back, not drawn mirrored


# --- the saved film ------------------------------------------------------------------------------
def _hand_run(tmp_path, snapshots=(0, 4, 8), count=12):
    """A run folder with placeholder snapshot files and hand-made test embeddings for each."""
    run = tmp_path / "run"
    run.mkdir()
    frames = _training_like_snapshots(count=count, snapshots=len(snapshots))
    for step, features in zip(snapshots, frames):
        checkpoint = run / f"step-{step:08d}.pt"
        checkpoint.write_bytes(b"placeholder")  # never loaded: its embeddings are there already
        embed.save_embeddings(run, checkpoint, "test", features, np.arange(count) % 6, [f"c{i}" for i in range(6)])
    return run


def test_film_is_saved_reused_and_goes_stale_when_a_snapshot_changes(tmp_path, monkeypatch):
    run = _hand_run(tmp_path)
    with pytest.raises(embed.NotPrepared, match="not been computed"):
        map_film.load_film(run)
    map_film.prepare_film(run)
    film = map_film.load_film(run)
    assert film.snapshots == ["step-00000000.pt", "step-00000004.pt", "step-00000008.pt"] and film.steps == [0, 4, 8]
    assert film.coordinates.shape == (3, 12, 2) and not film.sampled
    assert film.frame(2).coordinates.shape == (12, 2)

    # Reused: reading it again lays nothing out.
    monkeypatch.setattr(map_film, "aligned_layout", lambda *a: pytest.fail("laid out again"))
    assert map_film.film_ready(run)
    np.testing.assert_array_equal(map_film.load_film(run).coordinates, film.coordinates)

    copied = tmp_path / "copied"  # a copy of the run (new modification times) keeps its film
    shutil.copytree(run, copied, copy_function=shutil.copyfile)
    assert map_film.film_ready(copied)

    (run / "step-00000004.pt").write_bytes(b"another network")  # a snapshot rewritten
    with pytest.raises(embed.NotPrepared, match="snapshots changed"):
        map_film.load_film(run)
    monkeypatch.undo()
    map_film.prepare_film(run)
    assert map_film.film_ready(run)
    (run / "step-00000012.pt").write_bytes(b"a new snapshot")  # training went on
    assert not map_film.film_ready(run)


def test_film_draws_a_class_balanced_sample_of_a_large_test_set(tmp_path):
    run = _hand_run(tmp_path, count=60)
    map_film.prepare_film(run, sample_size=18)
    film = map_film.load_film(run)
    assert film.sampled and film.test_size == 60 and len(film.indices) == 18
    assert np.all(np.bincount(film.labels) == 3)


def test_missing_embeddings_come_from_the_one_prepare_path(tmp_path, monkeypatch):
    run = _hand_run(tmp_path)
    embed.embedding_path(run, run / "step-00000004.pt", "test").unlink()
    calls = []
    saved = embed.load_embeddings(embed.embedding_path(run, run / "step-00000000.pt", "test"))

    def prepare(run_dir, checkpoint, progress, data, level):
        calls.append((checkpoint.name, level))
        progress("Computing...", 0.5)
        embed.save_embeddings(run_dir, checkpoint, "test", saved.features, saved.labels, saved.classes)

    monkeypatch.setattr(embed, "prepare_checkpoint", prepare)
    monkeypatch.setattr(run_images, "run_data", lambda run_dir: object())
    reports = []
    map_film.prepare_film(run, lambda message=None, fraction=None: reports.append((message, fraction)))
    assert calls == [("step-00000004.pt", frozenset({embed.Artefact.TEST_EMBEDDINGS}))]
    assert ("Snapshot 1 of 1: Computing...", 0.5 * map_film.FEATURE_SHARE) in reports
    assert reports[-1] == ("Done.", 1.0)


def test_a_damaged_film_asks_to_be_computed_again(tmp_path):
    run = _hand_run(tmp_path)
    map_film.prepare_film(run)
    map_film.film_path(run).write_bytes(b"\x00not a zip")
    with pytest.raises(embed.NotPrepared, match="unreadable"):
        map_film.load_film(run)


def test_a_run_without_snapshots_says_so(tmp_path):
    with pytest.raises(embed.NotPrepared, match="no snapshots"):
        map_film.prepare_film(tmp_path)


# --- kNN votes -----------------------------------------------------------------------------------
def test_knn_votes_are_saved_with_the_knn_accuracy_and_read_per_frame(tmp_path):
    run = _hand_run(tmp_path, count=12)
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(30, 24)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    bank_labels = np.arange(30) % 6
    last = run / "step-00000008.pt"
    embed.save_embeddings(run, last, "train", bank, bank_labels, [f"c{i}" for i in range(6)])
    assert embed.saved_knn_votes(run, last, 5, 0.1) is None
    assert embed.Artefact.KNN in embed.missing_work(run, last, embed.FULL, k=5, temperature=0.1)

    result = embed.checkpoint_knn(run, last, 5, 0.1)
    votes = embed.saved_knn_votes(run, last, 5, 0.1)
    test = embed.load_split(run, last, "test")
    train = embed.load_split(run, last, "train")
    expected = knn_predict(
        torch.from_numpy(train.features), torch.from_numpy(train.labels), torch.from_numpy(test.features), 6, 5, 0.1
    )
    np.testing.assert_array_equal(votes, expected.numpy())
    assert result.accuracy == pytest.approx(100 * np.mean(votes == test.labels))
    assert embed.Artefact.KNN not in embed.missing_work(run, last, embed.FULL, k=5, temperature=0.1)
    assert embed.saved_knn_votes(run, last, 7, 0.1) is None  # another k: not measured

    map_film.prepare_film(run)
    film = map_film.load_film(run)
    frames = map_film.film_votes(run, film, 5, 0.1)
    assert frames[0] is None and frames[1] is None
    np.testing.assert_array_equal(frames[2], votes[film.indices])
