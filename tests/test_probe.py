"""byol/probe.py and the Embeddings page's probe metric: it learns from features, is saved once, goes stale with last.pt."""

import json
import os

import numpy as np
import pytest

from byol import data as datasets
from byol import embed, probe, retrieval
from byol.cli import main
from test_page_embeddings import compute_map, run_until
from test_retrieval import install_fake_umap, make_run, small_data

PAGE = "pages/3_Embeddings.py"


def split(features: np.ndarray, labels: np.ndarray, classes: int = 4) -> embed.Embeddings:
    features = features / np.linalg.norm(features, axis=1, keepdims=True)
    return embed.Embeddings(features.astype(np.float32), labels, np.arange(len(labels)), [f"c{i}" for i in range(classes)])


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + 0.8 * rng.standard_normal((n, centres.shape[1])), labels


# --- the fit -------------------------------------------------------------------------------------
def test_probe_reads_classes_from_informative_features_and_only_chance_from_noise():
    rng = np.random.default_rng(0)
    centres = 2.0 * rng.standard_normal((4, 16))
    train, test = clustered(rng, 400, centres), clustered(rng, 200, centres)
    learned = probe.fit_probe(split(*train), split(*test))
    assert learned.accuracy > 90 and learned.train_size == 400 and learned.test_size == 200
    assert len(learned.per_class) == 4 and min(learned.per_class) > 70

    noise = probe.fit_probe(split(rng.standard_normal((400, 16)), train[1]), split(rng.standard_normal((200, 16)), test[1]))
    assert noise.accuracy < 40  # chance is 25%


def test_a_single_class_is_refused_plainly():
    rng = np.random.default_rng(1)
    one = split(rng.standard_normal((20, 8)), np.zeros(20, dtype=np.int64))
    with pytest.raises(probe.ProbeError, match="at least two classes"):
        probe.fit_probe(one, one)


# --- saved beside the other artefacts --------------------------------------------------------------
@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """make_run's random width-4 run, its images a small synthetic set (no real data set is loaded)."""
    data = small_data()
    monkeypatch.setattr(datasets, "load_for", lambda config: data)
    retrieval.clear_caches()
    return make_run(tmp_path / "runs"), data


def test_probe_computes_missing_embeddings_through_the_store_and_saves_its_result(tiny_run, monkeypatch):
    run_dir, data = tiny_run
    checkpoint = run_dir / "step-00000004.pt"
    reports = []
    result = probe.run_probe(run_dir, checkpoint, lambda message=None, fraction=None: reports.append((message, fraction)))

    assert not embed.missing_work(run_dir, checkpoint, embed.EMBEDDINGS, data)  # the store's own files
    fractions = [f for _, f in reports if f is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("embeddings" in (m or "") for m, _ in reports) and any("logistic regression" in (m or "") for m, _ in reports)
    saved = json.loads(embed.probe_path(run_dir, checkpoint).read_text())
    assert saved["accuracy"] == pytest.approx(result.accuracy) and saved["train_size"] == len(data.train_labels)
    assert result.accuracy > 100 / len(data.classes)  # even random-init features carry some class information

    def no_refit(*args, **kwargs):
        raise AssertionError("fitted again although the result was saved")

    monkeypatch.setattr(probe, "fit_probe", no_refit)
    assert probe.run_probe(run_dir, checkpoint).accuracy == pytest.approx(result.accuracy)


def test_a_replaced_last_pt_makes_its_probe_stale_and_new_embeddings_drop_it(tiny_run):
    run_dir, data = tiny_run
    last = run_dir / "last.pt"
    probe.run_probe(run_dir, last, data=data)
    assert probe.saved_probe(run_dir, last) is not None

    later = os.stat(embed.probe_path(run_dir, last)).st_mtime_ns + 10**9
    os.utime(last, ns=(later, later))  # training saved over last.pt since
    assert probe.saved_probe(run_dir, last) is None

    embed.prepare_checkpoint(run_dir, last, data=data, level=embed.EMBEDDINGS)  # measured anew: the old probe goes
    assert not embed.probe_path(run_dir, last).exists()


def test_cli_probe_prints_its_figure_last_and_refuses_a_step_the_run_lacks(tiny_run, capsys):
    run_dir, _ = tiny_run
    assert main(["probe", str(run_dir), "--checkpoint", "4"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("linear probe: ") and out[-1].endswith("%")

    assert main(["probe", str(run_dir), "--checkpoint", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: The run {run_dir.name} has no checkpoint at step 3; its steps: 0, 4, 6."]


# --- the page ------------------------------------------------------------------------------------
def test_page_measures_the_probe_in_the_background_and_shows_it_beside_knn(finished_run, app_test, monkeypatch):
    data = small_data()
    monkeypatch.setattr(datasets, "load_for", lambda config: data)
    install_fake_umap(monkeypatch)
    retrieval.clear_caches()
    at = compute_map(app_test(PAGE))
    assert not any(metric.label == "Linear probe accuracy" for metric in at.metric)

    at.button(key="probe-measure").click()
    at = run_until(at, lambda at: any(metric.label == "Linear probe accuracy" for metric in at.metric))
    labels = [metric.label for metric in at.metric]
    assert labels.index("Linear probe accuracy") == labels.index("kNN accuracy") + 1
    assert embed.probe_path(finished_run, finished_run / "step-00000008.pt").is_file()
