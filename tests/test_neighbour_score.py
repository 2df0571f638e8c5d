"""neighbour_score.py: mean precision@k over a fixed sample of test images, for a checkpoint and for raw pixels."""

import numpy as np
import pytest
import torch

from byol import embed, neighbour_score, retrieval
from byol.dataset import Dataset
from test_retrieval import make_run, small_data, unit_rows


@pytest.fixture(autouse=True)
def fresh_caches():
    retrieval.clear_caches()
    neighbour_score.clear_cache()


def clustered(rng: np.random.Generator, labels: np.ndarray, classes: int, spread: float) -> np.ndarray:
    """Unit rows near one direction per class: `spread` 0 = exactly on it."""
    centres = unit_rows(rng, classes, 16)
    rows = centres[labels] + spread * rng.standard_normal((len(labels), 16)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def colour_data(per_class: int = 30) -> Dataset:
    """Three classes that raw pixels tell apart: a red, a green and a blue picture, with noise."""
    rng = np.random.default_rng(0)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = np.arange(count * 3) % 3
        images = rng.integers(0, 60, (len(labels), 3, 8, 8))
        images[np.arange(len(labels)), labels] += 180  # the class's own channel lit
        return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels)

    train_images, train_labels = split(per_class)
    test_images, test_labels = split(per_class // 3)
    return Dataset("colours", ["red", "green", "blue"], train_images, train_labels, test_images, test_labels, "colours-test")


def test_a_hand_made_example_scores_the_share_of_right_neighbours():
    # Bank: four rows along x (class 0), four along y (class 1); the query leans to x, so its 5 nearest
    # are the four x rows then one y row: precision@5 = 4/5.
    bank = np.array([[1, 0]] * 4 + [[0, 1]] * 4, dtype=np.float32)
    query = np.array([[0.8, 0.6]], dtype=np.float32)
    labels = np.array([0] * 4 + [1] * 4)
    assert neighbour_score.mean_precision(bank, labels, query, np.array([0]), k=5) == pytest.approx(0.8)
    assert neighbour_score.mean_precision(bank, labels, query, np.array([1]), k=5) == pytest.approx(0.2)
    assert neighbour_score.neighbour_labels(bank, labels, query, 5)[0].tolist() == [0, 0, 0, 0, 1]


def test_separated_classes_score_perfectly_and_shuffled_labels_near_chance():
    rng = np.random.default_rng(1)
    labels = np.arange(2000) % 10
    features = clustered(rng, labels, 10, spread=0.05)
    bank, queries = features[:1500], features[1500:]
    assert neighbour_score.mean_precision(bank, labels[:1500], queries, labels[1500:], k=10) == 1.0
    shuffled = rng.permutation(labels[:1500])
    assert neighbour_score.mean_precision(bank, shuffled, queries, labels[1500:], k=10) == pytest.approx(0.1, abs=0.04)


def test_chunked_search_and_a_float16_bank_find_the_same_neighbours(monkeypatch):
    rng = np.random.default_rng(2)
    labels = np.arange(600) % 10
    features = clustered(rng, labels, 10, spread=0.6)
    bank, queries = features[:500], features[500:]
    whole = neighbour_score.neighbour_labels(bank, labels[:500], queries, 10)
    monkeypatch.setattr(neighbour_score, "QUERY_CHUNK", 7)
    monkeypatch.setattr(retrieval, "BANK_CHUNK", 33)
    assert (neighbour_score.neighbour_labels(bank, labels[:500], queries, 10) == whole).all()
    half = neighbour_score.neighbour_labels(bank.astype(np.float16), labels[:500], queries, 10)
    assert (half == whole).mean() > 0.98  # float16 rounding may swap near-ties, nothing more


def test_bad_k_and_no_queries_are_refused():
    bank = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="at least 1"):
        neighbour_score.neighbour_labels(bank, np.arange(3), bank, 0)
    with pytest.raises(ValueError, match="at least one query"):
        neighbour_score.mean_precision(bank, np.arange(3), bank[:0], np.arange(0), 2)


def test_the_scored_test_images_are_fixed_and_all_of_a_small_test_set():
    first = neighbour_score.score_indices(10_000)
    assert len(first) == 500 and len(set(first.tolist())) == 500 and first.max() < 10_000
    assert (neighbour_score.score_indices(10_000) == first).all()
    assert neighbour_score.score_indices(80).tolist() == list(range(80))


def test_raw_pixels_score_well_on_colour_classes_and_chance_is_one_in_the_classes():
    data = colour_data()
    assert neighbour_score.pixel_score(data, k=5) > 0.9
    assert neighbour_score.chance(data) == pytest.approx(1 / 3)


def test_a_checkpoint_score_uses_its_saved_bank_and_needs_it(tmp_path):
    data = small_data()
    run_dir = make_run(tmp_path / "runs")
    checkpoint = run_dir / "step-00000004.pt"
    with pytest.raises(embed.NotPrepared, match="compute"):
        neighbour_score.checkpoint_score(run_dir, checkpoint, data)
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, level=embed.BANK)
    score = neighbour_score.checkpoint_score(run_dir, checkpoint, data, k=5)

    # The same figure by hand: every test image of this small set, embedded one by one.
    bank = embed.load_split(run_dir, checkpoint, "train")
    queries = np.stack([retrieval.embed_query(checkpoint, image) for image in data.test_images])
    found = [[bank.labels[r] for r in retrieval.nearest_neighbours(bank.features, q, 5)[0]] for q in queries]
    expected = np.mean([retrieval.precision_at_k(f, int(label)) for f, label in zip(found, data.test_labels)])
    assert score == pytest.approx(expected, abs=0.01)  # batch and single forward passes round differently


def test_a_score_outlives_the_server_process_that_computed_it(monkeypatch):
    data = colour_data()
    first = neighbour_score.pixel_score(data, k=5)
    neighbour_score._scores.clear()  # what a restarted server has: nothing in memory

    def no_computing(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(neighbour_score, "mean_precision", no_computing)
    assert neighbour_score.pixel_score(data, k=5) == first  # read from the project cache
    neighbour_score.clear_cache()
    with pytest.raises(AssertionError, match="computed again"):
        neighbour_score.pixel_score(data, k=5)
