"""precision@10 of a run's checkpoint against raw pixels: the issue's acceptance measure, and the red car.

    python benchmarks/neighbours.py checkpoints/demo-<name> --data ../shared/data/cifar10-jpg.tar.gz
    python benchmarks/neighbours.py <run folder> --step 4875 --queries 500 --example 1016

Over `--queries` fixed test images (`byol.neighbour_score.score_indices`: the same ones every time),
with all training images as the bank, it prints the mean precision@10 (the share of a query's 10
nearest training images, by cosine similarity, that have the query's class) for the checkpoint's
backbone features, for the run's random-init network (its step-0 snapshot, when it has one) and
for raw pixels (mean-centred, L2-normalised, as the Retrieval page's pixel column), and the 10
neighbours' classes of one example test image (#1016, the red car of issue 11, numbered as the
Retrieval page numbers test images: the position in the data set's test split).

Features are the library's (`byol.knn.extract_features`, L2-normalised, in fp32) and the scoring is
the library's (`byol.neighbour_score`), so the figures are what the Retrieval page shows (it keeps
its embeddings in float16, which can move a figure by a tenth of a point).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol import cifar10  # noqa: E402
from byol.checkpoint import load_backbone, random_init_checkpoint  # noqa: E402
from byol.data import load_dataset  # noqa: E402
from byol.knn import extract_features, pixel_features  # noqa: E402
from byol.neighbour_score import QUERIES, QUERY_SEED, K, mean_precision, neighbour_labels, score_indices  # noqa: E402
from byol.retrieval import precision_at_k  # noqa: E402
from byol.runs import list_snapshots  # noqa: E402

DEFAULT_DATA = cifar10.local_copy()  # the real copy at a documented place, if any


def pick_snapshot(run_dir: Path, step: int | None) -> Path:
    """A snapshot (step-*.pt), the last by default: the figures are of what a run keeps, never of a
    last.pt that a later save will replace."""
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise SystemExit(f"neighbours.py: no step-*.pt snapshots in {run_dir}")
    if step is None:
        return snapshots[-1].path
    for snapshot in snapshots:
        if snapshot.step == step:
            return snapshot.path
    raise SystemExit(f"neighbours.py: no snapshot at step {step}; there are {[s.step for s in snapshots]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder (e.g. the shipped demo, checkpoints/demo-*)")
    parser.add_argument("--step", type=int, default=None, help="snapshot step (default: the last one)")
    parser.add_argument("--data", default="", help="the run's data set (default: the real copy, else the run's own)")
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("-k", type=int, default=K)
    parser.add_argument("--example", type=int, default=1016, help="test image whose neighbours are listed")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    checkpoint = pick_snapshot(run_dir, args.step)
    backbone, config, info = load_backbone(checkpoint)
    source = args.data or (str(DEFAULT_DATA) if DEFAULT_DATA else config.data)
    data = load_dataset(source, config.data_root or None, image_size=config.image_size)
    classes = data.classes
    train_labels = data.train_labels.numpy()
    query_idx = score_indices(len(data.test_labels), args.queries)
    query_labels = data.test_labels.numpy()[query_idx]
    if not 0 <= args.example < len(data.test_labels):
        raise SystemExit(
            f"neighbours.py: --example {args.example} is not a test image of {source} (0 to {len(data.test_labels) - 1})"
        )
    example_label = int(data.test_labels[args.example])
    print(
        f"{checkpoint} (step {info['step']}, epoch {info['epoch']}, recorded kNN {info['knn']}); "
        f"bank: all {len(train_labels):,} training images of {source}; {len(query_idx)} test queries "
        f"(seed {QUERY_SEED}), k={args.k}",
        flush=True,
    )

    def network_features(network: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
        return extract_features(network, data.train_images).numpy(), extract_features(network, data.test_images).numpy()

    started = time.perf_counter()
    contenders = {"model": network_features(backbone)}
    untrained = random_init_checkpoint(run_dir)
    if untrained is not None and untrained != checkpoint:
        contenders["random init"] = network_features(load_backbone(untrained)[0])
    pixel_bank, mean = pixel_features(data.train_images)
    contenders["pixels"] = (pixel_bank.numpy(), pixel_features(data.test_images, mean)[0].numpy())
    print(f"features in {time.perf_counter() - started:.0f} s", flush=True)

    results = {
        "checkpoint": str(checkpoint),
        "step": info["step"],
        "data": source,
        "queries": len(query_idx),
        "query_seed": QUERY_SEED,
        "k": args.k,
    }
    for name, (bank_f, test_f) in contenders.items():
        precision = mean_precision(bank_f, train_labels, test_f[query_idx], query_labels, args.k)
        example_labels = neighbour_labels(bank_f, train_labels, test_f[[args.example]], args.k)[0].tolist()
        example_precision = precision_at_k(example_labels, example_label)
        results[name] = {
            "mean_precision": precision,
            "example_labels": [classes[c] for c in example_labels],
            "example_precision": example_precision,
        }
        counts = {c: results[name]["example_labels"].count(c) for c in dict.fromkeys(results[name]["example_labels"])}
        print(
            f"{name:>11}: mean precision@{args.k} {100 * precision:.1f}%   test image #{args.example} "
            f"({classes[example_label]}): {100 * example_precision:.0f}%, " + ", ".join(f"{n} {c}" for c, n in counts.items()),
            flush=True,
        )
    gap = 100 * (results["model"]["mean_precision"] - results["pixels"]["mean_precision"])
    results["gap_points"] = gap
    print(f"model - pixels: {gap:+.1f} points (issue 11 acceptance: at least +30)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
