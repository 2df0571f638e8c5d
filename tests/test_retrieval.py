"""embed.py and retrieval.py: checkpoint choices, preparing checkpoints, neighbours (never the query itself), precision@k, uploads of every kind."""

import io
import os
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byol import embed, images, retrieval
from byol.augment import plain_view
from byol.checkpoint import CheckpointError, checkpoint_choices, random_init_checkpoint, save_checkpoint, snapshot_state
from byol.metrics_file import append_rows
from byol.model import resnet18_cifar
from byol.runs import FINISHED, create_run, write_status
from byol.synthetic import synthetic_dataset
from helpers import tiny_config


# --- fixtures and builders -----------------------------------------------------------------------
def make_run(runs_dir: Path, name: str = "tiny", last_step: int | None = 6) -> Path:
    """A finished-looking run without training: random width-4 networks saved as step 0 and step 4
    snapshots (and last.pt at `last_step`), with matching eval rows. Takes well under a second."""
    config = tiny_config()
    run_dir = create_run(runs_dir, config, name)
    for seed, step in ((0, 0), (1, 4)):
        torch.manual_seed(seed)
        save_checkpoint(
            run_dir / f"step-{step:08d}.pt", snapshot_state(resnet18_cifar(config.width), config, step, step / 4, 20.0)
        )
    if last_step is not None:
        torch.manual_seed(2)
        save_checkpoint(run_dir / "last.pt", snapshot_state(resnet18_cifar(config.width), config, last_step, last_step / 4, None))
    append_rows(
        run_dir,
        [
            {"kind": "eval", "step": 0, "epoch": 0.0, "knn": 20.0},
            {"kind": "step", "step": 4, "epoch": 1.0, "loss": 3.0},
            {"kind": "eval", "step": 4, "epoch": 1.0, "knn": 25.0},
        ],
    )
    write_status(run_dir, FINISHED, "Finished.")
    return run_dir


def small_data(train_per_class: int = 20, test_per_class: int = 8):
    return synthetic_dataset(train_per_class=train_per_class, test_per_class=test_per_class)


class _FakeUMAP:
    """A cheap stand-in for umap.UMAP (numba compiles the real one: tens of seconds)."""

    def __init__(self, **kwargs):
        pass

    def fit_transform(self, features):
        features = np.asarray(features, dtype=np.float32)
        return features[:, :2] - features[:, :2].mean(axis=0)


def install_fake_umap(monkeypatch) -> None:
    module = types.ModuleType("umap")
    module.UMAP = _FakeUMAP
    monkeypatch.setitem(sys.modules, "umap", module)


@pytest.fixture
def fake_umap(monkeypatch):
    install_fake_umap(monkeypatch)


@pytest.fixture
def run_dir(tmp_path):
    retrieval.clear_caches()
    return make_run(tmp_path / "runs")


@pytest.fixture(scope="module")
def data():
    return small_data()


def bank_run(tmp_path, features: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """A run folder whose step-1 'checkpoint' has hand-made training-set embeddings."""
    run = tmp_path / "hand"
    checkpoint = run / "step-00000001.pt"
    embed.save_embeddings(run, checkpoint, "train", features, labels, [f"c{i}" for i in range(int(labels.max()) + 1)])
    return run, checkpoint


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_choices_name_random_init_and_a_newer_last_pt(run_dir):
    choices = checkpoint_choices(run_dir)
    assert [c.path.name for c in choices] == ["step-00000000.pt", "step-00000004.pt", "last.pt"]
    assert choices[0].random_init and "random init" in choices[0].label
    assert choices[2].step == 6 and "latest save (last.pt)" in choices[2].label
    assert random_init_checkpoint(run_dir) == run_dir / "step-00000000.pt"


def test_last_pt_is_left_out_when_it_is_the_newest_snapshot_again(tmp_path):
    run = make_run(tmp_path, last_step=4)
    assert [c.path.name for c in checkpoint_choices(run)] == ["step-00000000.pt", "step-00000004.pt"]


# --- preparing -----------------------------------------------------------------------------------
def test_prepare_computes_everything_once_with_progress(run_dir, data, fake_umap):
    checkpoint = run_dir / "step-00000004.pt"
    assert embed.missing_work(run_dir, checkpoint, embed.FULL, data, 20, 0.1) == list(embed.Artefact)
    reports = []
    embed.prepare_checkpoint(
        run_dir, checkpoint, lambda message=None, fraction=None: reports.append((message, fraction)), data, k=20, temperature=0.1
    )
    fractions = [f for _, f in reports if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("training-set embeddings" in m for m, _ in reports) and any("UMAP" in m for m, _ in reports)
    assert embed.missing_work(run_dir, checkpoint, embed.FULL, data, 20, 0.1) == []

    map_data = embed.load_map(run_dir, checkpoint)
    assert map_data.coordinates.shape == (len(data.test_labels), 2)
    assert (map_data.labels == data.test_labels.numpy()).all() and map_data.classes == data.classes
    knn = embed.checkpoint_knn(run_dir, checkpoint, 20, 0.1)
    assert 0 <= knn.accuracy <= 100 and len(knn.per_class) == len(data.classes)
    assert (knn.bank_size, knn.query_size) == (len(data.train_labels), len(data.test_labels))

    stamps = {p.name: p.stat().st_mtime_ns for p in (run_dir / "embeddings").iterdir()}
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, k=20, temperature=0.1)  # nothing left to do
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "embeddings").iterdir()} == stamps


def test_bank_level_computes_only_the_training_split(run_dir, data):
    checkpoint = run_dir / "step-00000000.pt"
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, level=embed.BANK)
    assert embed.missing_work(run_dir, checkpoint, embed.BANK, data) == []
    assert embed.Artefact.TEST_EMBEDDINGS in embed.missing_work(run_dir, checkpoint, embed.FULL, data)
    with pytest.raises(embed.NotPrepared, match="compute"):
        embed.load_map(run_dir, checkpoint)


def test_results_of_a_replaced_last_pt_are_stale(run_dir, data):
    last = run_dir / "last.pt"
    embed.prepare_checkpoint(run_dir, last, None, data, level=embed.BANK)
    assert embed.missing_work(run_dir, last, embed.BANK, data) == []
    later = last.stat().st_mtime + 60
    os.utime(last, (later, later))  # training saved over it
    assert embed.missing_work(run_dir, last, embed.BANK, data) == [embed.Artefact.TRAIN_EMBEDDINGS]


def test_embeddings_of_another_data_set_size_count_as_missing(run_dir, data):
    checkpoint = run_dir / "step-00000004.pt"
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, level=embed.BANK)
    assert embed.missing_work(run_dir, checkpoint, embed.BANK, small_data(train_per_class=21)) == [
        embed.Artefact.TRAIN_EMBEDDINGS
    ]


def test_damaged_saved_results_count_as_missing(run_dir, data, fake_umap):
    checkpoint = run_dir / "step-00000004.pt"
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, k=20)
    retrieval.clear_caches()
    embed.embedding_path(run_dir, checkpoint, "test").write_bytes(b"PK\x03\x04 cut short")
    embed.umap_path(run_dir, checkpoint, "test").write_bytes(b"\x93NUMPY")
    assert embed.missing_work(run_dir, checkpoint, embed.FULL, data, 20) == [embed.Artefact.TEST_EMBEDDINGS, embed.Artefact.MAP]
    with pytest.raises(embed.NotPrepared, match="unreadable"):
        embed.load_map(run_dir, checkpoint)
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, k=20)
    assert embed.missing_work(run_dir, checkpoint, embed.FULL, data, 20) == []


def test_damaged_checkpoint_gives_a_plain_error(run_dir, data):
    checkpoint = run_dir / "step-00000004.pt"
    checkpoint.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged"):
        embed.prepare_checkpoint(run_dir, checkpoint, None, data)
    with pytest.raises(CheckpointError, match="damaged"):
        retrieval.embed_query(checkpoint, data.test_images[0])


def test_a_tiny_test_set_gets_a_plain_projection_instead_of_umap(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # importing umap now fails: it must not be needed
    run = make_run(tmp_path / "runs")
    data = small_data(train_per_class=3, test_per_class=1)  # 10 test images
    embed.prepare_checkpoint(run, run / "step-00000004.pt", None, data, k=5)
    coordinates = embed.load_map(run, run / "step-00000004.pt").coordinates
    assert coordinates.shape == (10, 2) and np.isfinite(coordinates).all() and coordinates.std() > 0


def test_real_umap_draws_a_map_of_200_points(tmp_path):
    """The one test that runs umap-learn itself (numba compiles on first use: 15-60 s)."""
    pytest.importorskip("umap")
    run = make_run(tmp_path / "runs")
    data = small_data(train_per_class=5, test_per_class=20)
    embed.prepare_checkpoint(run, run / "step-00000004.pt", None, data, k=5, temperature=0.1)
    coordinates = embed.load_map(run, run / "step-00000004.pt").coordinates
    assert coordinates.shape == (200, 2) and np.isfinite(coordinates).all()


# --- neighbours ----------------------------------------------------------------------------------
def test_neighbours_never_include_the_query_itself_when_it_comes_from_the_bank(tmp_path):
    rng = np.random.default_rng(0)
    features = unit_rows(rng, 50, 8)
    features[17] = features[5]  # an exact duplicate elsewhere in the bank is still a fair answer
    labels = np.arange(50) % 5
    run, checkpoint = bank_run(tmp_path, features, labels)
    found = retrieval.neighbours(run, checkpoint, features[5], k=49, exclude_train_index=5)
    assert len(found) == 49 and 5 not in [n.train_index for n in found]
    assert found[0].train_index == 17 and found[0].similarity == pytest.approx(1.0, abs=1e-3)
    sims = [n.similarity for n in found]
    assert sims == sorted(sims, reverse=True)
    assert all(n.label == labels[n.train_index] for n in found)
    with_self = retrieval.neighbours(run, checkpoint, features[5], k=3)
    assert with_self[0].train_index in (5, 17)  # without the exclusion the query finds itself
    assert len(retrieval.neighbours(run, checkpoint, features[5], k=500, exclude_train_index=5)) == 49


def test_image_and_pixel_neighbours_skip_a_training_image_used_as_query(run_dir, data):
    checkpoint = run_dir / "step-00000004.pt"
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, level=embed.BANK)
    query = data.train_images[7]
    assert retrieval.image_neighbours(run_dir, checkpoint, query, 3)[0].train_index == 7
    found = retrieval.image_neighbours(run_dir, checkpoint, query, 5, exclude_train_index=7)
    assert len(found) == 5 and 7 not in [n.train_index for n in found]
    pixels = retrieval.pixel_neighbours(data, query, 5, exclude_train_index=7)
    assert len(pixels) == 5 and 7 not in [n.train_index for n in pixels]
    assert retrieval.pixel_neighbours(data, query, 1)[0].train_index == 7
    assert retrieval.pixel_neighbours(data, query, 1)[0].similarity == pytest.approx(1.0, abs=1e-2)


def test_neighbours_of_a_test_image_use_its_saved_embedding(run_dir, data, fake_umap):
    checkpoint = run_dir / "step-00000004.pt"
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, k=20)
    from_map = retrieval.neighbours_of_test_image(run_dir, checkpoint, 3, 4)
    fresh = retrieval.image_neighbours(run_dir, checkpoint, data.test_images[3], 4)
    assert [n.train_index for n in from_map] == [n.train_index for n in fresh]
    with pytest.raises(ValueError, match="no test image"):
        retrieval.neighbours_of_test_image(run_dir, checkpoint, 10_000, 4)


def test_knn_of_well_separated_embeddings_is_perfect(tmp_path):
    rng = np.random.default_rng(1)
    centres = np.eye(4, 16, dtype=np.float32)
    run = tmp_path / "hand"
    checkpoint = run / "step-00000001.pt"
    for split, n in (("train", 40), ("test", 12)):
        labels = np.arange(n) % 4
        features = centres[labels] + 0.05 * rng.standard_normal((n, 16)).astype(np.float32)
        embed.save_embeddings(
            run, checkpoint, split, features / np.linalg.norm(features, axis=1, keepdims=True), labels, list("abcd")
        )
    result = embed.checkpoint_knn(run, checkpoint, k=5, temperature=0.1)
    assert result.accuracy == pytest.approx(100.0) and result.per_class == pytest.approx([100.0] * 4)
    assert (run / "embeddings" / "step-00000001-knn.json").is_file()
    assert embed.checkpoint_knn(run, checkpoint, k=5, temperature=0.1) == result  # read back from the cache


def test_missing_embeddings_say_what_to_do(tmp_path):
    with pytest.raises(embed.NotPrepared, match="compute them first"):
        retrieval.neighbours(tmp_path, tmp_path / "step-00000001.pt", np.ones(8, np.float32), 3)


def test_bad_k_and_wrong_feature_size_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    run, checkpoint = bank_run(tmp_path, unit_rows(rng, 10, 8), np.arange(10) % 2)
    with pytest.raises(ValueError, match="at least 1"):
        retrieval.neighbours(run, checkpoint, unit_rows(rng, 1, 8)[0], 0)
    with pytest.raises(ValueError, match="features"):
        retrieval.neighbours(run, checkpoint, np.ones(5, np.float32), 3)


@pytest.mark.parametrize(
    "labels, query, expected",
    [
        ([1, 1, 1, 1], 1, 1.0),
        ([1, 2, 1, 3], 1, 0.5),
        ([2, 3], 1, 0.0),
        ([4], 4, 1.0),
    ],
)
def test_precision_at_k(labels, query, expected):
    assert retrieval.precision_at_k(labels, query) == expected


def test_precision_at_k_needs_neighbours():
    with pytest.raises(ValueError):
        retrieval.precision_at_k([], 1)


def test_gallery_picks_a_few_per_class_reproducibly():
    labels = np.arange(100) % 10
    picks = retrieval.gallery_indices(labels, 3, seed=4)
    assert len(picks) == 30 and len(set(picks)) == 30
    assert [int(labels[i]) for i in picks] == [c for c in range(10) for _ in range(3)]
    assert picks == retrieval.gallery_indices(labels, 3, seed=4)
    assert picks != retrieval.gallery_indices(labels, 3, seed=5)
    only = retrieval.gallery_indices(labels, 20, seed=0, only_class=2)
    assert len(only) == 10 and all(labels[i] == 2 for i in only)


def test_sampled_queries_are_of_different_classes_and_reproducible():
    labels = np.arange(100) % 10
    picks = retrieval.sample_queries(labels, 3, seed=4)
    classes = [int(labels[i]) for i in picks]
    assert len(picks) == 3 and len(set(classes)) == 3 and classes == sorted(classes)
    assert picks == retrieval.sample_queries(labels, 3, seed=4)
    draws = {tuple(retrieval.sample_queries(labels, 3, seed=seed)) for seed in range(10)}
    assert len(draws) > 5  # another seed, another draw
    everything = retrieval.sample_queries(labels, 25, seed=0)  # more than there are classes
    assert sorted(int(labels[i]) for i in everything) == list(range(10))


def test_thumbnail_upscales_with_sharp_pixels():
    image = torch.tensor([[[0, 255], [255, 0]]] * 3, dtype=torch.uint8)  # a 2x2 checkerboard
    picture = retrieval.thumbnail(image, scale=4)
    assert picture.size == (8, 8) and picture.mode == "RGB"
    pixels = np.asarray(picture)[..., 0]
    assert set(np.unique(pixels)) == {0, 255}  # no blended greys at the edges
    assert (pixels[:4, :4] == 0).all() and (pixels[:4, 4:] == 255).all()


# --- uploads -------------------------------------------------------------------------------------
def encode(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise_rgb(size: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


def huge_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid all-black 10000x10000 PNG built row by row: 100 megapixels in about 100 KB."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    compressor = zlib.compressobj(1)
    row = b"\x00" * (width + 1)  # filter byte + one grey byte per pixel
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_upload_of_an_ordinary_photo_becomes_a_32x32_rgb_tensor():
    image = images.query_from_upload(encode(noise_rgb(300), "JPEG", quality=90))
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 32, 32)
    assert tuple(images.query_from_upload(encode(noise_rgb(300), "PNG"), image_size=24).shape) == (3, 24, 24)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"name,age\nAda,36\n", "not an image"),
        (b"%PDF-1.4 not really", "not an image"),
        (encode(noise_rgb(), "PNG")[:900], "truncated"),
        (encode(noise_rgb(), "JPEG", quality=95)[:1200], "truncated"),
    ],
    ids=["zero-bytes", "csv", "pdf", "truncated-png", "truncated-jpeg"],
)
def test_bad_uploads_get_a_plain_message(payload, message):
    with pytest.raises(ValueError, match=message):
        images.query_from_upload(payload)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_10000_by_10000_image_is_refused_from_its_header():
    payload = huge_png()
    assert len(payload) < 1_000_000
    with pytest.raises(ValueError, match="100 megapixels.*limit is 50"):
        images.query_from_upload(payload)


def test_an_oversized_file_is_refused_before_opening():
    with pytest.raises(ValueError, match="MB"):
        images.query_from_upload(b"\x00" * (images.MAX_UPLOAD_BYTES + 1))


def test_grayscale_upload_becomes_three_equal_channels():
    image = images.query_from_upload(encode(Image.new("L", (40, 40), 100), "PNG"))
    assert (image == 100).all()


def test_transparent_rgba_upload_is_shown_on_white():
    picture = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # invisible black
    picture.paste((255, 0, 0, 255), (0, 0, 32, 16))  # opaque red top half
    image = images.query_from_upload(encode(picture, "PNG"))
    assert image[:, 0, 0].tolist() == [255, 0, 0]
    assert image[:, 31, 0].tolist() == [255, 255, 255]


def test_16_bit_upload_is_scaled_not_clipped():
    values = np.full((32, 32), 65535, np.uint16)
    values[16:] = 32896  # mid grey in 16 bits
    image = images.query_from_upload(encode(Image.fromarray(values), "PNG"))
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert abs(int(image[0, 31, 0]) - 128) <= 1  # clipping would have made this 255


def test_palette_upload_keeps_its_colours():
    picture = Image.new("RGB", (32, 32), (0, 0, 255)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert picture.mode == "P"
    for fmt in ("PNG", "GIF"):
        image = images.query_from_upload(encode(picture, fmt))
        assert image[:, 10, 10].tolist() == [0, 0, 255]


def test_animated_gif_upload_uses_its_first_frame():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    payload = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(payload)).n_frames == 3
    image = images.query_from_upload(payload)
    assert image[:, 5, 5].tolist() == [255, 0, 0]


def test_a_query_from_an_upload_can_be_searched(run_dir, data):
    checkpoint = run_dir / "step-00000004.pt"
    embed.prepare_checkpoint(run_dir, checkpoint, None, data, level=embed.BANK)
    image = images.query_from_upload(encode(noise_rgb(64), "PNG"))
    found = retrieval.image_neighbours(run_dir, checkpoint, image, 6)
    assert len(found) == 6 and all(-1.0001 <= n.similarity <= 1.0001 for n in found)


def test_embeddings_in_the_fast_layout_are_the_default_layouts_features():
    torch.manual_seed(0)
    backbone = resnet18_cifar(width=8).eval()
    pictures = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(backbone(plain_view(pictures)), dim=1).numpy()
    features = embed.compute_features(backbone, pictures)
    assert features.dtype == np.float32 and features.shape == expected.shape
    np.testing.assert_allclose(features, expected, atol=1e-5)
    assert not np.allclose(features[0], features[1], atol=1e-3)  # the pictures are told apart
