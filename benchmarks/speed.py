"""The speed benchmark suite: this engine against byol-pytorch and lightly, on one machine, in one run.

    pip install -r requirements.txt -r benchmarks/requirements.txt
    python benchmarks/speed.py                 # everything, ~10 minutes on a 2-core CPU
    python benchmarks/speed.py --quick         # tiny sizes, a smoke test of the script itself

What it measures (same backbone: ResNet-18 with the CIFAR stem at `--width`, same batch size):
- **Training step**, augmentation included, in images/s:
  - this engine (`byol.step.training_step`: batched views on the device, channels-last, fused EMA),
    in fp32 and in the best precision the hardware offers (bf16 autocast where it exists);
  - lucidrains' byol-pytorch 0.9.1, used as its README shows (`BYOL(net, image_size,
    hidden_layer="avgpool")`, Adam, `learner.update_moving_average()`), fed float batches;
  - lightly 1.6.0's BYOL recipe (its example: `BYOLProjectionHead`/`BYOLPredictionHead`,
    `update_momentum`, `NegativeCosineSimilarity`, `BYOLTransform` on PIL images through a DataLoader);
  - a compute-only floor: this engine's network, loss, optimiser and EMA in fp32, on a fixed
    pre-normalised batch (no augmentation at all).
  On a CPU each contender runs in a fresh process of its own (see `step_race.run_in_fresh_process`: glibc
  carries state from one to the next); on a GPU they share one. Peak memory of each step is measured
  alongside: on a GPU `torch.cuda.max_memory_allocated`; on a CPU the resident set size above its
  level before the first step. lightly's DataLoader workers are separate processes, so their memory
  is not in its figure.
- **Augmentation**: our batched two views against torchvision's per-image PIL pipeline with the same
  settings, in view pairs per second.
- **kNN evaluation**: a 50,000-image bank and 10,000 queries of precomputed 512-d features against
  scikit-learn's brute-force cosine `KNeighborsClassifier` (k=200), time and accuracy of both.
- **Retrieval**: latency p50/p95 of one query against 50,000 stored embeddings, and **UMAP** time for
  10,000 points after a warm-up fit (numba compiles on first use).

Images come from the real CIFAR-10 copy when `--data` points at one (default: ../shared/data/
cifar10-jpg.tar.gz when present), else from the synthetic data set; throughput does not depend on
the pictures, but the kNN accuracies do. The table is printed and written to
`benchmarks/results/speed-<device>.md` (plus a .json with every number).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightly_byol import PILImages  # noqa: E402
from step_race import bench_steps, run_one_contender, synchronize  # noqa: E402

from byol import cifar10  # noqa: E402
from byol.allocator import keep_freed_memory  # noqa: E402
from byol.augment import byol_views_batch, plain_view  # noqa: E402
from byol.config import KNN_K, KNN_TEMPERATURE  # noqa: E402
from byol.data import load_dataset  # noqa: E402
from byol.device import describe_machine, resolve_device  # noqa: E402
from byol.knn import knn_predict  # noqa: E402
from byol.maps import map_2d  # noqa: E402
from byol.model import resnet18_cifar  # noqa: E402
from byol.retrieval import nearest_neighbours  # noqa: E402
from byol.synthetic import synthetic_dataset  # noqa: E402

DEFAULT_DATA = cifar10.local_copy()  # the real copy at a documented place, if any
RESULTS_DIR = ROOT / "benchmarks" / "results"


def bench_augment(images, device, args) -> dict:
    import torchvision.transforms as T

    n = args.augment_images

    def view(solarize_p: float):
        return T.Compose(
            [
                T.RandomResizedCrop(32, scale=(0.08, 1.0)),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomSolarize(threshold=128, p=solarize_p),
                T.ToTensor(),
                T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            ]
        )

    # torchvision's first, while glibc still has its defaults (our allocator setting below changes them).
    view1, view2 = view(0.0), view(0.2)
    pil = PILImages(images[:n], lambda img: (view1(img), view2(img)))
    started = time.perf_counter()
    pairs = [pil[i][0] for i in range(n)]
    torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    pil_rate = n / (time.perf_counter() - started)

    on_device = images[:n].to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    # As training makes them: a batch of the benchmark's size at a time, inside the allocator setting
    # train() uses on a CPU (one batch of thousands would measure page faults, not augmentation).
    with keep_freed_memory() if device.type == "cpu" else contextlib.nullcontext():
        byol_views_batch(on_device[: args.batch], generator=generator)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for first in range(0, n, args.batch):
            byol_views_batch(on_device[first : first + args.batch], generator=generator)
        synchronize(device)
        ours_rate = n / (time.perf_counter() - started)

    print(
        f"Augmentation ({n} images, two views each): ours {ours_rate:,.0f} pairs/s on {device.type} in batches of {args.batch}, "
        f"torchvision PIL {pil_rate:,.0f} pairs/s on one CPU process ({ours_rate / pil_rate:.1f}x)",
        flush=True,
    )
    return {"images": n, "batch": args.batch, "ours_pairs_per_s": ours_rate, "torchvision_pil_pairs_per_s": pil_rate}


def knn_features(data, bank_size: int, query_size: int, dim: int = 512) -> tuple:
    """Precomputed 512-d features with some meaning: mean-centred pixels through a fixed random projection."""
    generator = torch.Generator().manual_seed(0)
    projection = torch.randn(3 * 32 * 32, dim, generator=generator) / dim**0.5

    def features(images: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(images), 5000):
            x = plain_view(images[start : start + 5000]).flatten(1)
            out.append(torch.relu(x @ projection))
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    repeat_bank = -(-bank_size // len(data.train_labels))  # tile a small data set up to the bank size
    repeat_query = -(-query_size // len(data.test_labels))
    bank = features(data.train_images.repeat(repeat_bank, 1, 1, 1)[:bank_size])
    queries = features(data.test_images.repeat(repeat_query, 1, 1, 1)[:query_size])
    return bank, data.train_labels.repeat(repeat_bank)[:bank_size], queries, data.test_labels.repeat(repeat_query)[:query_size]


def bench_knn(bank, bank_labels, queries, query_labels, args) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    k = KNN_K
    knn_predict(bank[:1000], bank_labels[:1000], queries[:100], 10, k)  # warm-up
    started = time.perf_counter()
    predicted = knn_predict(bank, bank_labels, queries, 10, k, KNN_TEMPERATURE)
    ours_s = time.perf_counter() - started
    ours_acc = 100 * float((predicted == query_labels).float().mean())
    started = time.perf_counter()
    predicted_fp32 = knn_predict(bank, bank_labels, queries, 10, k, KNN_TEMPERATURE, fast=False)
    fp32_s = time.perf_counter() - started
    fp32_acc = 100 * float((predicted_fp32 == query_labels).float().mean())
    same = 100 * float((predicted_fp32 == predicted).float().mean())

    sk_results = {}
    for weights in ("uniform", "distance"):
        classifier = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine", weights=weights)
        started = time.perf_counter()
        classifier.fit(bank.numpy(), bank_labels.numpy())
        sk_pred = classifier.predict(queries.numpy())
        sk_results[weights] = (time.perf_counter() - started, 100 * float((sk_pred == query_labels.numpy()).mean()))
    sk_s, sk_acc = sk_results["uniform"]
    print(
        f"kNN ({len(bank):,} bank x {len(queries):,} queries, {bank.shape[1]}-d, k={k}): ours {ours_s:.2f} s ({ours_acc:.1f}%), "
        f"scikit-learn brute cosine {sk_s:.2f} s ({sk_acc:.1f}%), distance-weighted {sk_results['distance'][0]:.2f} s "
        f"({sk_results['distance'][1]:.1f}%) -> {sk_s / ours_s:.1f}x",
        flush=True,
    )
    print(
        f"  ours with an all-fp32 search: {fp32_s:.2f} s ({fp32_acc:.1f}%); same prediction for {same:.2f}% of queries",
        flush=True,
    )
    return {
        "bank": len(bank),
        "queries": len(queries),
        "dim": int(bank.shape[1]),
        "k": k,
        "ours_s": ours_s,
        "ours_accuracy": ours_acc,
        "ours_fp32_s": fp32_s,
        "ours_fp32_accuracy": fp32_acc,
        "same_prediction_percent": same,
        "sklearn_s": sk_s,
        "sklearn_accuracy": sk_acc,
        "sklearn_distance_s": sk_results["distance"][0],
        "sklearn_distance_accuracy": sk_results["distance"][1],
    }


def bench_retrieval(bank, args, device) -> dict:
    bank_np = bank.numpy().astype(np.float32)
    rng = np.random.default_rng(0)
    search_ms = []
    for _ in range(args.retrieval_queries):
        query = bank_np[rng.integers(len(bank_np))]
        started = time.perf_counter()
        nearest_neighbours(bank_np, query, 16)
        search_ms.append(1000 * (time.perf_counter() - started))
    # End to end for an uploaded image: embed it, then search. The backbone's features have the bank's
    # width (a ResNet-18 of width w gives 8w features): 64, the standard width, for the 512-d bank.
    backbone = resnet18_cifar(bank_np.shape[1] // 8).eval()
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    end_to_end_ms = []
    with torch.no_grad():
        for i in range(args.retrieval_queries // 4 + 3):
            started = time.perf_counter()
            feature = torch.nn.functional.normalize(backbone(plain_view(image)), dim=1)[0].numpy()
            nearest_neighbours(bank_np, feature, 16)
            if i >= 3:  # the first calls pay one-off set-up costs
                end_to_end_ms.append(1000 * (time.perf_counter() - started))

    def pct(values, q):
        return float(np.percentile(values, q))

    result = {
        "bank": len(bank_np),
        "search_p50_ms": pct(search_ms, 50),
        "search_p95_ms": pct(search_ms, 95),
        "embed_and_search_p50_ms": pct(end_to_end_ms, 50),
        "embed_and_search_p95_ms": pct(end_to_end_ms, 95),
    }
    print(
        f"Retrieval (1 query vs {len(bank_np):,}): search p50 {result['search_p50_ms']:.1f} ms, p95 {result['search_p95_ms']:.1f} ms; "
        f"embed + search p50 {result['embed_and_search_p50_ms']:.1f} ms, p95 {result['embed_and_search_p95_ms']:.1f} ms",
        flush=True,
    )
    return result


def bench_umap(features: torch.Tensor, args) -> dict:
    points = features[: args.umap_points].numpy()
    map_2d(points[:1000])  # warm-up: numba compiles UMAP's kernels here
    started = time.perf_counter()
    map_2d(points)  # the app's map: UMAP laid out from the exact neighbour graph
    seconds = time.perf_counter() - started
    print(f"UMAP ({len(points):,} points, {points.shape[1]}-d, after warm-up): {seconds:.1f} s", flush=True)
    return {"points": len(points), "seconds": seconds}


# --- report --------------------------------------------------------------------------------
def report(results: dict) -> str:
    lines = [
        f"# Speed benchmark ({results['date']})",
        "",
        f"Machine: {results['machine']}",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    steps = results.get("steps")
    if steps:
        by_name = {r["name"]: r for r in steps}
        lines += [
            f"## Training step (ResNet-18 width {results['width']}, batch {results['batch']}, augmentation included)",
            "",
            "| Contender | images/s | peak memory of the steps (MB; CPU: each in a fresh process) | note |",
            "|---|---:|---:|---|",
        ]
        busy = any(r.get("gpu_busy_percent") is not None for r in steps)
        if busy:  # on a GPU: the share of the timed steps' time in which the card ran a kernel
            lines[-2:] = [lines[-2].replace(" | note |", " | GPU busy | note |"), "|---|---:|---:|---:|---|"]

        def busy_cell(r: dict) -> str:
            if not busy:
                return ""
            return f" {r['gpu_busy_percent']:.0f}% |" if r.get("gpu_busy_percent") is not None else " – |"

        lines += [
            f"| {r['name']} | {r['images_per_s']:.1f} | {r['peak_memory_mb']:.0f} |{busy_cell(r)} {r['note']} |" for r in steps
        ]
        peer = by_name.get("byol-pytorch 0.9.1 fp32")
        ratios = []
        for ours_name in ("ours fp32", "ours bf16", "ours fp32, cuda_fast + CUDA graph", "ours bf16, cuda_fast + CUDA graph"):
            if ours_name in by_name:
                for other in steps:
                    if not other["name"].startswith("ours") and "our malloc" not in other["name"]:
                        ratios.append(
                            f"- {ours_name} / {other['name']}: **{by_name[ours_name]['images_per_s'] / other['images_per_s']:.2f}x**"
                        )
        if ratios:
            lines += ["", "Ratios (same run):", ""] + ratios
        if peer is None:
            lines += ["", "byol-pytorch was not measured (install benchmarks/requirements.txt)."]
    if "augment" in results:
        a = results["augment"]
        lines += [
            "",
            "## Augmentation (two views per image)",
            "",
            f"Ours, batched on the device ({a.get('batch', '?')} images a batch): {a['ours_pairs_per_s']:,.0f} pairs/s; torchvision per-image PIL pipeline, "
            f"one process: {a['torchvision_pil_pairs_per_s']:,.0f} pairs/s "
            f"(**{a['ours_pairs_per_s'] / a['torchvision_pil_pairs_per_s']:.1f}x**), {a['images']:,} images.",
        ]
    if "knn" in results:
        k = results["knn"]
        lines += [
            "",
            f"## kNN evaluation ({k['bank']:,} bank, {k['queries']:,} queries, {k['dim']}-d precomputed features, k={k['k']})",
            "",
            "| Method | seconds | accuracy |",
            "|---|---:|---:|",
            f"| ours (cosine, weighted vote exp(s/0.1); bf16 search on the mean-removed bank where fast) | {k['ours_s']:.2f} | {k['ours_accuracy']:.2f}% |",
            f"| ours, all-fp32 search | {k['ours_fp32_s']:.2f} | {k['ours_fp32_accuracy']:.2f}% |",
            f"| scikit-learn KNeighborsClassifier brute cosine, uniform | {k['sklearn_s']:.2f} | {k['sklearn_accuracy']:.2f}% |",
            f"| scikit-learn, weights=distance | {k['sklearn_distance_s']:.2f} | {k['sklearn_distance_accuracy']:.2f}% |",
            "",
            f"Speed-up against scikit-learn (uniform): **{k['sklearn_s'] / k['ours_s']:.1f}x** "
            f"(all-fp32 search: {k['sklearn_s'] / k['ours_fp32_s']:.1f}x). The two searches of ours agree on "
            f"{k['same_prediction_percent']:.2f}% of the predictions.",
        ]
    if "retrieval" in results:
        r = results["retrieval"]
        lines += [
            "",
            "## Retrieval and map",
            "",
            f"- One query against {r['bank']:,} stored embeddings: p50 {r['search_p50_ms']:.1f} ms, "
            f"p95 **{r['search_p95_ms']:.1f} ms**; embedding an uploaded image first: p50 "
            f"{r['embed_and_search_p50_ms']:.1f} ms, p95 {r['embed_and_search_p95_ms']:.1f} ms.",
        ]
    if "umap" in results:
        u = results["umap"]
        lines += [f"- UMAP of {u['points']:,} points after warm-up: **{u['seconds']:.1f} s**."]
    return "\n".join(lines) + "\n"


def load_images(data_arg: str, quick: bool):
    if data_arg == "synthetic" or (not data_arg and not DEFAULT_DATA) or quick:
        return synthetic_dataset(), "synthetic"
    source = data_arg or str(DEFAULT_DATA)
    return load_dataset(source), source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing useful")
    parser.add_argument("--data", default="", help="image folder/archive or 'synthetic' (default: the real copy when present)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lightly-workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to try for lightly")
    parser.add_argument("--no-peers", action="store_true", help="skip byol-pytorch and lightly")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["steps", "augment", "knn", "retrieval", "umap"],
        default=["steps", "augment", "knn", "retrieval", "umap"],
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the table (.md) and numbers (.json)")
    parser.add_argument("--contender", default="", help=argparse.SUPPRESS)  # internal: see step_race.run_in_fresh_process
    args = parser.parse_args(argv)
    args.argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    args.augment_images, args.retrieval_queries, args.umap_points = 4096, 400, 10_000
    args.bank_size, args.query_size = 50_000, 10_000
    if args.quick:
        # The peers only exist at width 64; without them a tiny width keeps the smoke test fast.
        args.width, args.batch, args.warmup, args.steps = (8 if args.no_peers else 64), 8, 1, 1
        args.augment_images, args.retrieval_queries, args.umap_points = 64, 20, 500
        args.bank_size, args.query_size = 2_000, 500
        args.lightly_workers = [0]

    device = resolve_device(args.device)
    data, source = load_images(args.data, args.quick)
    if args.contender:
        return run_one_contender(args.contender, data.train_images, device, args)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe_machine(device),
        "data": source,
        "command": " ".join(["python benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "width": args.width,
        "batch": args.batch,
    }
    print(results["machine"], flush=True)
    if "steps" in args.only:
        results["steps"] = [r.__dict__ for r in bench_steps(data.train_images, device, args)]
    if "augment" in args.only:
        results["augment"] = bench_augment(data.train_images, device, args)
    if {"knn", "retrieval", "umap"} & set(args.only):
        bank, bank_labels, queries, query_labels = knn_features(data, args.bank_size, args.query_size)
        if "knn" in args.only:
            results["knn"] = bench_knn(bank, bank_labels, queries, query_labels, args)
        if "retrieval" in args.only:
            results["retrieval"] = bench_retrieval(bank, args, device)
        if "umap" in args.only:
            results["umap"] = bench_umap(bank, args)

    table = report(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "speed-quick" if args.quick else f"speed-{device.type}"
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    print("\n" + table)
    print(f"Written to {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
