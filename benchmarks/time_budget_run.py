"""Train one configuration for a fixed wall-clock budget and print its kNN curve.

This is how the `cpu` preset was chosen: short runs of a few candidates, then the winner for the
full 15 minutes, on the real CIFAR-10 copy, with the machine otherwise idle. The run stops
gracefully when the budget is spent (status `stopped`, resumable), so the curve is what a user
would see after that long.

    python benchmarks/time_budget_run.py --minutes 15 --data ../shared/data/cifar10-jpg.tar.gz
    python benchmarks/time_budget_run.py --minutes 4 --set width=24 --set lr=0.001 --runs-dir /tmp/tune
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol import cifar10, metrics_file, runs  # noqa: E402
from byol.cli import apply_overrides  # noqa: E402
from byol.config import preset, validate  # noqa: E402
from byol.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    copy = cifar10.local_copy()
    parser.add_argument(
        "--data",
        default=str(copy) if copy else None,
        required=copy is None,
        help="the data source (default: the real CIFAR-10 copy at a documented place, byol/cifar10.py)",
    )
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument(
        "--max-images",
        type=int,
        default=0,
        help="stop at the first evaluation after this many training images instead of after a time "
        "(compares candidates fairly on a busy machine)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/byol-budget-runs"))
    parser.add_argument("--name")
    args = parser.parse_args()

    config = preset(args.preset, data=args.data)
    config = validate(apply_overrides(config, args.set))
    run_dir = runs.create_run(args.runs_dir, config, args.name)

    stop = threading.Event()
    started = {}

    def on_event(event: dict) -> None:
        # The budget counts from the first training step, after data loading and the step-0 baseline.
        if metrics_file.is_eval(event) and args.max_images and event["step"] * config.batch_size >= args.max_images:
            stop.set()  # right after an evaluation, so the curve ends on a measured point
        if event.get("kind") == metrics_file.STEP and "t0" not in started:
            started["t0"] = time.monotonic() - event["step"] * config.batch_size / max(event["images_per_s"], 1e-9)
            if not args.max_images:
                timer = threading.Timer(args.minutes * 60 - (time.monotonic() - started["t0"]), stop.set)
                timer.daemon = True
                timer.start()
        if metrics_file.is_eval(event):
            elapsed = time.monotonic() - started.get("t0", time.monotonic())
            print(
                f"  {elapsed / 60:5.1f} min  step {event['step']:6d}  epoch {event['epoch']:6.2f}  "
                f"kNN {event['knn']:5.1f}%  (raw pixels {event['pixel_knn']:.1f}%)",
                flush=True,
            )

    print(
        f"{run_dir.name}: {json.dumps({k: v for k, v in config.to_dict().items() if v != preset(args.preset).to_dict().get(k)})}"
    )
    state = train(config, run_dir, stop, on_event)
    rows = metrics_file.read_rows(run_dir)
    evals, steps = metrics_file.eval_rows(rows), metrics_file.step_rows(rows)
    speeds = sorted(r["images_per_s"] for r in steps[2:]) or [0]
    print(
        f"{state}: final kNN {evals[-1]['knn']:.1f}% (step-0 {evals[0]['knn']:.1f}%, raw pixels "
        f"{evals[-1]['pixel_knn']:.1f}%, bank {evals[-1]['bank_size']}, queries {evals[-1]['query_size']}, "
        f"k {evals[-1]['k']}), median {speeds[len(speeds) // 2]:.0f} images/s, last loss {steps[-1]['loss']:.3f}"
    )
    print(run_dir)


if __name__ == "__main__":
    main()
