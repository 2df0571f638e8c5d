"""The training film: one 2-D map of the test images per snapshot of a run, laid out together.

The maps come from umap-learn's `AlignedUMAP`, fitted on every snapshot's test embeddings at once
and told that row i of one snapshot is row i of the next (the same test image), so each image keeps
its place from one checkpoint to the next unless the network really moved it. Played in order, the
maps show the classes separating as training goes on.

- The embeddings come from the checkpoint-artefact store (`embed.prepare_checkpoint` with the test
  level), never from a feature extraction of this module's own.
- AlignedUMAP on 2 CPU cores is slow for all 10,000 CIFAR-10 test images, so the film draws a fixed,
  class-balanced sample (`SAMPLE_SIZE`); a smaller test split is drawn whole. Test sets too small for
  UMAP's neighbour graph get each snapshot's two main directions (PCA), each rotated onto the
  previous one.
- The result, `<run>/embeddings/film-test.npz`, is written atomically and names the snapshots it was
  made from (name, size, modification time): a new, removed or rewritten snapshot makes it stale.

`prepare_film` computes (run it in a `tasks.TaskRunner`), `load_film` reads (`NotPrepared` when
missing or stale), `film_votes` gives each frame's kNN votes where the store has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import embed, run_images
from .dataset import Dataset
from .files import write_npz_atomic
from .maps import MIN_UMAP_POINTS, UMAP_FIRST_TIME, UMAP_SETTINGS, cosine_distances, map_2d, pca_2d, umap_quietly
from .runs import EMBEDDINGS_FOLDER, list_snapshots

FILM_FILE = "film-test.npz"
SAMPLE_SIZE = 2500  # test images drawn in the film (AlignedUMAP time grows with snapshots x images)
SAMPLE_SEED = 0
TEST_LEVEL = frozenset({embed.Artefact.TEST_EMBEDDINGS})  # all the film needs from each snapshot
FEATURE_SHARE = 0.6  # of the progress bar, when embeddings are still to be computed (the layout reports none)


@dataclass
class Film:
    coordinates: np.ndarray  # float32 [snapshots, N, 2]: row n of every frame is the same test image
    indices: np.ndarray  # int64 [N], test-split numbers of the drawn images
    labels: np.ndarray  # int64 [N]
    classes: list[str]
    snapshots: list[str]  # snapshot file names, in training order
    steps: list[int]
    test_size: int  # images in the test split the sample was drawn from
    method: str  # "aligned UMAP" or "PCA" (test set too small for UMAP)

    @property
    def sampled(self) -> bool:
        return len(self.indices) < self.test_size

    def frame(self, i: int) -> embed.MapData:
        """Snapshot i's map, in the shape the single-checkpoint map has."""
        return embed.MapData(self.coordinates[i], self.labels, self.indices, self.classes)


def film_path(run_dir: Path) -> Path:
    return Path(run_dir) / EMBEDDINGS_FOLDER / FILM_FILE


def snapshot_signature(run_dir: Path) -> list[str]:
    """What the film depends on: each snapshot's name and size, in training order.

    Not modification times: snapshots are written once (embed.is_fresh's rule), and copies of a run (a
    git checkout of the demo, an rsync, a copied folder) change their times but not their contents.
    """
    signature = []
    for snapshot in list_snapshots(run_dir):
        try:
            size = snapshot.path.stat().st_size
        except OSError:
            continue
        signature.append(f"{snapshot.path.name}:{size}")
    return signature


# --- the sample and the layout ---------------------------------------------------------------------


def balanced_sample(labels: np.ndarray, size: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """Sorted positions of up to `size` images, as even across classes as the classes allow (all when fewer)."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[np.ndarray] = []
    left = size
    # Smallest class first: a class with fewer images than its share gives the rest to the others.
    for n, pool in enumerate(sorted(pools, key=len)):
        take = min(len(pool), left // (len(pools) - n))
        chosen.append(pool[:take])
        left -= take
    return np.sort(np.concatenate(chosen))


def _rotate_onto(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """`moving` rotated (or reflected) to lie as close to `fixed` as a rigid turn allows (Procrustes)."""
    u, _s, vt = np.linalg.svd(moving.T @ fixed)
    return moving @ (u @ vt)


def aligned_layout(features: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D maps [len(features), N, 2] of the same N images seen by several networks, and the method's name.

    Row n of every array is the same image. AlignedUMAP ties each image to itself in the next map;
    below MIN_UMAP_POINTS images, each map is a PCA turned onto the previous one instead.
    """
    if not features:
        return np.zeros((0, 0, 2), np.float32), "PCA"
    count = len(features[0])
    if count < MIN_UMAP_POINTS:
        maps = [pca_2d(features[0])]
        for later in features[1:]:
            maps.append(_rotate_onto(pca_2d(later), maps[-1]))
        return np.stack(maps).astype(np.float32), "PCA"
    if len(features) == 1:
        return map_2d(features[0], seed)[None], "UMAP"
    import umap  # slow import (numba): only when a film is actually drawn

    identity = {i: i for i in range(count)}
    # Each snapshot's distances handed over whole (at most SAMPLE_SIZE² of them): for fewer than 4,096 points
    # UMAP would compute them itself, one Python call per pair: the demo's film of 6 x 2,500 images took 94 s
    # that way on a 2-core AMD EPYC, 69 s so, with the same maps (the same-class share of each dot's 10 nearest).
    reducer = umap.AlignedUMAP(random_state=seed, **dict(UMAP_SETTINGS, metric="precomputed"))
    with umap_quietly():
        maps = reducer.fit_transform([cosine_distances(f) for f in features], relations=[identity] * (len(features) - 1))
    maps = np.stack([np.asarray(m) for m in maps]).astype(np.float32)
    # AlignedUMAP leaves an image without neighbours (exact duplicates) at NaN: put it in the map's centre.
    centres = np.nanmean(maps, axis=1, keepdims=True) if np.isnan(maps).any() else None
    if centres is not None:
        maps = np.where(np.isnan(maps), np.nan_to_num(centres), maps)
    return maps, "aligned UMAP"


# --- computing, saving, reading --------------------------------------------------------------------


def prepare_film(
    run_dir: Path, progress: embed.Report | None = None, data: Dataset | None = None, sample_size: int = SAMPLE_SIZE
) -> None:
    """Compute each snapshot's missing test embeddings (through embed's one prepare path), then the film."""
    report = progress or (lambda message=None, fraction=None: None)
    run_dir = Path(run_dir)
    found = list_snapshots(run_dir)
    snapshots, steps = [s.path for s in found], [int(s.step) for s in found]
    if not snapshots:
        raise embed.NotPrepared(f"The run {run_dir.name} has no snapshots yet, so there is nothing to film.")
    signature = snapshot_signature(run_dir)
    todo = [p for p in snapshots if embed.missing_work(run_dir, p, TEST_LEVEL, data)]
    feature_share = FEATURE_SHARE if todo else 0.0
    if todo and data is None:
        report("Loading the data set...", 0.0)
        data = run_images.run_data(run_dir)
    for n, snapshot in enumerate(todo):

        def part(message: str | None = None, fraction: float | None = None, n: int = n) -> None:
            report(
                None if message is None else f"Snapshot {n + 1} of {len(todo)}: {message}",
                None if fraction is None else feature_share * (n + fraction) / len(todo),
            )

        embed.prepare_checkpoint(run_dir, snapshot, part, data, TEST_LEVEL)
    tests = [embed.load_split(run_dir, p, "test") for p in snapshots]
    labels = tests[0].labels
    if any(len(t.labels) != len(labels) for t in tests):
        raise embed.NotPrepared("The snapshots' saved test embeddings differ in size; compute them again.")
    rows = balanced_sample(labels, sample_size)
    report(
        f"Laying out {len(snapshots)} maps of {len(rows):,} test images together (aligned UMAP). {UMAP_FIRST_TIME}",
        feature_share,
    )
    coordinates, method = aligned_layout([t.features[rows] for t in tests])
    film = {
        "coordinates": coordinates,
        "indices": tests[0].indices[rows],
        "labels": labels[rows],
        "classes": np.array(tests[0].classes),
        "snapshots": np.array([p.name for p in snapshots]),
        "steps": np.array(steps, dtype=np.int64),
        "signature": np.array(signature),
        "test_size": np.array(len(labels)),
        "method": np.array(method),
    }
    path = film_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz_atomic(path, film)
    report("Done.", 1.0)


def load_film(run_dir: Path) -> Film:
    """The run's saved film; NotPrepared when it is missing, unreadable or made from other snapshots."""
    path = film_path(run_dir)
    if not path.is_file():
        raise embed.NotPrepared(f"The training film of {Path(run_dir).name} has not been computed yet; compute it first.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            signature = [str(s) for s in archive["signature"]]
            film = Film(
                archive["coordinates"].astype(np.float32),
                archive["indices"].astype(np.int64),
                archive["labels"].astype(np.int64),
                [str(c) for c in archive["classes"]],
                [str(s) for s in archive["snapshots"]],
                [int(s) for s in archive["steps"]],
                int(archive["test_size"]),
                str(archive["method"]),
            )
    except Exception as error:  # a damaged .npz raises BadZipFile, EOFError, KeyError...
        raise embed.NotPrepared(f"The saved training film is unreadable ({type(error).__name__}); compute it again.") from None
    if signature != snapshot_signature(run_dir):
        raise embed.NotPrepared("The run's snapshots changed since its training film was drawn; compute it again.")
    return film


def film_ready(run_dir: Path) -> bool:
    try:
        load_film(run_dir)
    except embed.NotPrepared:
        return False
    return True


def film_votes(run_dir: Path, film: Film, k: int, temperature: float) -> list[np.ndarray | None]:
    """Per frame, each drawn image's kNN-voted class, or None for a snapshot whose kNN is not computed.

    Read from the kNN artefact of each snapshot (the Embeddings page computes it for the checkpoint
    it shows); nothing is computed here.
    """
    votes: list[np.ndarray | None] = []
    for name in film.snapshots:
        predicted = embed.saved_knn_votes(run_dir, Path(run_dir) / name, k, temperature)
        votes.append(None if predicted is None or len(predicted) != film.test_size else predicted[film.indices])
    return votes
