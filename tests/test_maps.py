"""The maps (byol/maps.py): the exact neighbour graph and distances, and real umap-learn laid out from them keeping apart
what the features separate (numba compiles UMAP the first time: tens of seconds)."""

import numpy as np
import pytest

from byol import maps


def test_neighbour_graph_is_the_exact_cosine_search_with_each_row_first():
    features = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32) * 3  # not normalised
    features[7] = features[3]  # an exact duplicate: both must still come first in their own row
    indices, distances = maps.neighbour_graph(features, 5, chunk_size=16)  # rows found across chunk borders
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert indices.shape == distances.shape == (50, 5)
    assert np.array_equal(indices[:, 0], np.arange(50)) and np.all(distances[:, 0] == 0)
    assert indices[3, 1] == 7 and indices[7, 1] == 3 and distances[3, 1] == pytest.approx(0, abs=1e-6)
    for row in range(50):
        others = np.argsort(-np.where(np.arange(50) == row, -np.inf, cosine[row]), kind="stable")[:4]
        assert set(indices[row, 1:]) == set(others)
        np.testing.assert_allclose(distances[row, 1:], 1 - cosine[row, indices[row, 1:]], atol=1e-5)
    assert np.all(np.diff(distances, axis=1) >= 0)  # nearest first
    assert maps.neighbour_graph(features[:3], 5)[0].shape == (3, 3)  # never more neighbours than rows


def _nearest_on_map_share_the_class(coordinates: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    distance = ((coordinates[:, None, :] - coordinates[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def test_the_map_keeps_classes_the_features_separate_apart():
    rng = np.random.default_rng(0)
    labels = np.arange(600) % 6
    features = rng.normal(size=(6, 64))[labels] * 1.5 + rng.normal(size=(600, 64))
    features = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    coordinates = maps.map_2d(features)
    assert coordinates.shape == (600, 2) and coordinates.dtype == np.float32 and np.isfinite(coordinates).all()
    assert _nearest_on_map_share_the_class(coordinates, labels) > 0.95
    shuffled = rng.permutation(labels)  # the same map read against labels it does not follow
    assert _nearest_on_map_share_the_class(coordinates, shuffled) < 0.4


def test_a_test_set_too_small_for_umap_gets_its_two_main_directions():
    features = np.zeros((maps.MIN_UMAP_POINTS - 1, 5), dtype=np.float32)
    features[:, 0] = np.arange(len(features))  # all the variation along one axis
    coordinates = maps.map_2d(features)
    assert coordinates.shape == (len(features), 2) and coordinates.dtype == np.float32
    np.testing.assert_allclose(np.abs(coordinates[:, 0]), np.abs(features[:, 0] - features[:, 0].mean()), atol=1e-4)
    np.testing.assert_allclose(coordinates[:, 1], 0, atol=1e-4)


def test_cosine_distances_are_every_pairs_and_zero_on_the_diagonal():
    features = np.random.default_rng(1).normal(size=(30, 6)).astype(np.float32) * 5  # not normalised
    features[4] = features[2]
    distances = maps.cosine_distances(features)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    assert distances.shape == (30, 30) and distances.dtype == np.float32
    np.testing.assert_allclose(distances, np.clip(1 - unit @ unit.T, 0, None), atol=1e-5)
    assert np.all(np.diag(distances) == 0) and distances[2, 4] == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(distances, distances.T, atol=1e-6)


def test_a_collapsed_networks_map_is_still_drawn():
    """A run without batch norm gives every image nearly the same vector, many exactly the same: the map
    must still come out finite (the Embeddings page draws collapsed runs too)."""
    rng = np.random.default_rng(2)
    features = np.repeat(np.ones((1, 16), np.float32), 300, axis=0)
    features[:100] += rng.normal(scale=1e-3, size=(100, 16)).astype(np.float32)
    coordinates = maps.map_2d(features)
    assert coordinates.shape == (300, 2) and np.isfinite(coordinates).all()
