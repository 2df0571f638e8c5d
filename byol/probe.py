"""The linear probe: a logistic regression on a checkpoint's frozen features, the field's standard figure beside kNN.

The features are the artefact store's embeddings (byol/embed.py): when they are missing the probe
computes them through `embed.prepare_checkpoint`, the one feature-extraction path, so the probe, kNN,
the map and retrieval all read the same numbers. A multinomial logistic regression (scikit-learn,
L-BFGS) is fitted on the training split's features, standardised with that split's mean and std,
and scored on the test split. The regularisation is fixed (C = `PROBE_C`), not searched per
checkpoint: the figure compares checkpoints and runs under one rule, and there is no validation
split to search on without touching the test images.

The result is kept as `<run>/embeddings/<checkpoint stem>-probe.json` (written atomically, fresh by
the store's rule), so the dashboard shows it on the next visit without fitting again.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import embed
from .dataset import Dataset
from .errors import UserError
from .files import read_json, write_json_atomic
from .knn import accuracy_percent, per_class_accuracy, per_class_from_json, per_class_to_json

PROBE_C = 1.0  # inverse L2 strength; weak for 50k images, which is what a linear probe wants
MAX_ITERATIONS = 1000
EMBEDDING_SHARE = 0.8  # of the progress bar, when the embeddings have to be computed first


class ProbeError(UserError):
    """The probe cannot be measured on these embeddings (an empty split, a single class)."""


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # percent of test images classified right
    per_class: list[float]  # percent per class (NaN for a class without test images)
    classes: list[str]
    train_size: int
    test_size: int
    c: float
    iterations: int
    converged: bool
    seconds: float  # the fit and the scoring, not the embeddings


def fit_probe(train: embed.Embeddings, test: embed.Embeddings, c: float = PROBE_C) -> ProbeResult:
    """Fit the logistic regression on `train`'s features and score it on `test`'s."""
    if len(train.labels) == 0 or len(test.labels) == 0:
        raise ProbeError("The linear probe needs both training and test images; this data set lacks one of them.")
    if len(np.unique(train.labels)) < 2:
        raise ProbeError("The linear probe needs training images of at least two classes.")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    scaler = StandardScaler().fit(train.features)
    model = LogisticRegression(C=c, max_iter=MAX_ITERATIONS)
    # One thread: each L-BFGS step is small (50k × 128 features), and OpenMP/BLAS threads that wait for
    # each other on a busy machine cost far more than they save (30 steps on the demo's features, 2 cores
    # under load 5: 1.6 s on one thread, 10.5 s on two).
    with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(scaler.transform(train.features), train.labels)
        predicted = model.predict(scaler.transform(test.features))
    predicted, labels = torch.from_numpy(predicted), torch.from_numpy(test.labels)
    accuracy = accuracy_percent(predicted, labels)
    per_class = per_class_accuracy(predicted, labels, len(train.classes))
    return ProbeResult(
        accuracy,
        per_class,
        list(train.classes),
        len(train.labels),
        len(test.labels),
        float(c),
        int(np.max(model.n_iter_)),
        not any(issubclass(w.category, ConvergenceWarning) for w in caught),
        time.perf_counter() - started,
    )


def saved_probe(run_dir: Path, checkpoint: Path) -> ProbeResult | None:
    """The checkpoint's saved probe result, or None when it is missing, stale or unreadable."""
    path = embed.probe_path(run_dir, checkpoint)
    if not embed.is_fresh(path, checkpoint):  # the store's one freshness rule (only last.pt's results go stale)
        return None
    row = read_json(path, None)
    try:
        return ProbeResult(
            float(row["accuracy"]),
            per_class_from_json(row["per_class"]),
            [str(name) for name in row["classes"]],
            int(row["train_size"]),
            int(row["test_size"]),
            float(row["c"]),
            int(row["iterations"]),
            bool(row["converged"]),
            float(row["seconds"]),
        )
    except (KeyError, TypeError, ValueError):  # damaged or foreign file: measure again
        return None


def run_probe(
    run_dir: Path,
    checkpoint: Path,
    progress: embed.Report | None = None,
    data: Dataset | None = None,
    again: bool = False,
) -> ProbeResult:
    """The checkpoint's linear probe: the saved result, or computed (embeddings first when missing) and saved.

    `data` is the run's data set when the caller has it loaded (the dashboard); without it the
    embeddings on disk are used as they are, and the data set is loaded only if they must be computed.
    Raises CheckpointError / DataError / ProbeError with plain messages.
    """
    report = progress or (lambda message=None, fraction=None: None)
    run_dir, checkpoint = Path(run_dir), Path(checkpoint)
    saved = None if again else saved_probe(run_dir, checkpoint)
    if saved is not None:
        report("Done.", 1.0)
        return saved
    start = 0.0
    if embed.missing_work(run_dir, checkpoint, embed.EMBEDDINGS, data):

        def embedding_progress(message: str | None = None, fraction: float | None = None) -> None:
            report(message, None if fraction is None else EMBEDDING_SHARE * fraction)

        embed.prepare_checkpoint(run_dir, checkpoint, embedding_progress, data, embed.EMBEDDINGS)
        start = EMBEDDING_SHARE
    train = embed.load_split(run_dir, checkpoint, "train")
    test = embed.load_split(run_dir, checkpoint, "test")
    report(
        f"Fitting the linear probe (logistic regression) on {len(train.labels):,} training-set embeddings of "
        f"{checkpoint.name}; it reports no progress of its own...",
        start,
    )
    result = fit_probe(train, test)
    row = asdict(result)
    row["per_class"] = per_class_to_json(result.per_class)
    path = embed.probe_path(run_dir, checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, row)
    report("Done.", 1.0)
    return result
