"""The quality benchmark: complete short schedules of several recipes side by side, and lightly's as a reference.

    python benchmarks/quality.py --mode cpu                # ~15 minutes on 2 idle cores: width 16, 10k images
    python benchmarks/quality.py --mode cpu-full --parallel 3 --threads 1   # the cpu preset itself, all 50k images
    python benchmarks/quality.py --mode gpu --parallel 4   # full width, all 50k images, complete 10-epoch schedules
    python benchmarks/quality.py --mode gpu --dry-run      # every variant and the lightly row, a few steps, tiny sizes
    python benchmarks/quality.py --mode cpu --variant "lr2e-3:lr=2e-3" --variant "tau0.99:tau_base=0.99"

Every variant is the mode's base recipe (a preset cut to the mode's schedule; modes and built-in variants
are in quality_recipes.py) with named overrides (`NAME:FIELD=VALUE,FIELD=VALUE`, any TrainConfig field,
parsed as `python -m byol train --set` does). Each trains with the library's own `train()` into a scratch runs folder (git-ignored
`local/quality/...` by default), on the same data, subset, seed, kNN bank and queries; its kNN
curve is read back from the run's metrics.jsonl. The step-0 evaluation row holds the two baselines:
the random-init network and raw pixels, on the same bank and queries.

The reference row is lightly 1.6.0's BYOL recipe (benchmarks/lightly_byol.py: its heads, loss,
`update_momentum` with lightly's `cosine_schedule` from 0.99 to 1, its BYOLTransform at 32 px without
blur through a DataLoader, SGD with lightly's CIFAR-10 benchmark settings: lr 0.06 per 128 images,
momentum 0.9, wd 5e-4, cosine decay) on OUR backbone at the same width, trained for the same
epochs on the same images in the same precision, and evaluated with our kNN at the same points.
It is skipped with one line when lightly is not installed.

Each variant runs in a fresh process (`--parallel N` runs N at once: on a GPU, which is host-bound
with one run, several share the card; each gets its own runs folder, so the per-device training
lock of a runs folder does not serialise them). `--parallel 0` runs them in this process, one after
another (what the smoke test does). The table is printed and written to `<out>/quality-<mode>.md`
with every number in `<out>/quality-<mode>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_recipes import DRY_RUN, MODES, VARIANTS, base_config, parse_variant, variant_config  # noqa: E402

from byol import cifar10, collapse, metrics_file, runs  # noqa: E402
from byol.cli import CommandError  # noqa: E402
from byol.config import ConfigError, TrainConfig  # noqa: E402
from byol.data import load_dataset, load_for  # noqa: E402
from byol.device import describe_machine, resolve_device, use_bf16  # noqa: E402
from byol.knn import autocast_context, chosen_images, extract_features, knn_accuracy  # noqa: E402
from byol.model import resnet18_cifar  # noqa: E402
from byol.train import train  # noqa: E402

DEFAULT_DATA = cifar10.local_copy()  # the real copy at a documented place, if any
RESULTS_DIR = ROOT / "benchmarks" / "results"
SCRATCH_DIR = ROOT / "local" / "quality"
LIGHTLY = "lightly-1.6.0"


# --- one variant, in its own process or this one --------------------------------------------
def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one variant with the library's train() and read its kNN curve back from metrics.jsonl."""
    config = TrainConfig.from_dict(spec["config"])
    # A runs folder of its own: train()'s device lock lives in the runs folder, and variants may share a GPU.
    run_dir = runs.create_run(Path(spec["scratch"]), config, "run")
    name = spec["name"]

    def on_event(event: dict[str, Any]) -> None:
        if metrics_file.is_eval(event):
            print(f"  [{name}] epoch {event['epoch']:g}: kNN {event['knn']:.1f}%", flush=True)

    started = time.perf_counter()
    state = train(config, run_dir, on_event=on_event)
    minutes = (time.perf_counter() - started) / 60
    rows = metrics_file.read_rows(run_dir)
    evals = metrics_file.eval_rows(rows)
    random_init, pixels = runs.knn_baselines(evals)
    speeds = sorted(r["images_per_s"] for r in metrics_file.step_rows(rows) if r.get("images_per_s"))
    message = runs.read_status(run_dir).get("message", "")
    return {
        "name": name,
        "overrides": spec["overrides"],
        "state": state,
        "message": message,
        "minutes": minutes,
        "curve": [[r["epoch"], r["knn"]] for r in evals],
        "final_knn": evals[-1]["knn"] if evals and state == runs.FINISHED else None,
        "random_init_knn": random_init,
        "pixel_knn": pixels,
        "images_per_s": speeds[len(speeds) // 2] if speeds else None,
        # The Compare page's verdict, so a collapse pair's table says which run collapsed (GPU scratch
        # runs stay on that machine; only the table comes back).
        "collapse": collapse.describe_collapse(collapse.find_collapse(rows, config.projector_dim)),
        "run_dir": str(run_dir),
        "config": config.to_dict(),
    }


def run_lightly(spec: dict[str, Any]) -> dict[str, Any]:
    """lightly's BYOL recipe on our backbone, the same images, schedule, precision and kNN as the base."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.utils.scheduler import cosine_schedule
    from lightly_byol import LightlyBYOL, lightly_loader, lightly_step

    config = TrainConfig.from_dict(spec["config"])
    device = resolve_device(config.device)
    bf16 = use_bf16(config.precision, device)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    data = load_for(config)
    train_idx, bank_idx, query_idx = chosen_images(config, data)  # the images train() would use
    bank_images, bank_labels = data.train_images[bank_idx].to(device), data.train_labels[bank_idx]
    query_images, query_labels = data.test_images[query_idx].to(device), data.test_labels[query_idx]

    model = LightlyBYOL(resnet18_cifar(config.width), 8 * config.width, spec["lightly_hidden"], 256).to(device)
    loader = lightly_loader(data.train_images[train_idx], config.batch_size, spec["lightly_workers"], seed=config.seed)
    criterion = NegativeCosineSimilarity()
    # lightly's CIFAR-10 benchmark: SGD lr 0.06 per 128 images, momentum 0.9, wd 5e-4, cosine decay.
    peak_lr = 0.06 * config.batch_size / 128
    optimizer = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9, weight_decay=5e-4)
    total_steps = len(loader) * config.epochs
    eval_interval = max(1, round(config.eval_every * len(loader)))
    curve: list[list[float]] = []

    def evaluate(step: int) -> None:
        bank = extract_features(model.backbone, bank_images, use_bf16=bf16)
        queries = extract_features(model.backbone, query_images, use_bf16=bf16)
        knn = knn_accuracy(bank, bank_labels, queries, query_labels, len(data.classes), config.knn_k, config.knn_temperature)
        curve.append([round(step / len(loader), 4), knn])
        print(f"  [{spec['name']}] epoch {curve[-1][0]:g}: kNN {knn:.1f}%", flush=True)

    evaluate(0)
    step, trained_images, train_seconds = 0, 0, 0.0
    model.train()
    for _epoch in range(config.epochs):
        for (x0, x1), _ in loader:
            tick = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = peak_lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / total_steps))).item()
            momentum = cosine_schedule(step, total_steps, 0.99, 1.0)
            loss = lightly_step(
                model, criterion, optimizer, x0.to(device), x1.to(device), momentum, autocast_context(device, bf16)
            )
            step += 1
            trained_images += len(x0)
            if step % config.log_every == 0 and not torch.isfinite(loss):
                raise RuntimeError(f"lightly's loss became {float(loss)} at step {step}")
            train_seconds += time.perf_counter() - tick
            if step % eval_interval == 0 or step == total_steps:
                model.train(False)
                evaluate(step)
                model.train()
    return {
        "name": spec["name"],
        "overrides": spec["overrides"],
        "state": runs.FINISHED,
        "message": "",
        "minutes": (time.perf_counter() - started) / 60,
        "curve": curve,
        "final_knn": curve[-1][1],
        "random_init_knn": curve[0][1],
        "pixel_knn": None,
        "images_per_s": trained_images / train_seconds if train_seconds else None,
        "run_dir": "",
        "config": config.to_dict(),
    }


def failed_result(spec: dict[str, Any], message: str) -> dict[str, Any]:
    """The result row of a variant that did not finish: its message instead of figures."""
    return {
        "name": spec["name"],
        "overrides": spec["overrides"],
        "state": "failed",
        "message": message,
        "minutes": None,
        "curve": [],
        "final_knn": None,
        "random_init_knn": None,
        "pixel_knn": None,
        "images_per_s": None,
        "run_dir": "",
        "config": spec["config"],
    }


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant; a failure becomes a result row with its message, never a lost table."""
    try:
        return run_lightly(spec) if spec["kind"] == "lightly" else run_ours(spec)
    except Exception as error:  # noqa: BLE001 - the table must show what went wrong with this row
        return failed_result(spec, f"{type(error).__name__}: {error}")


def worker_main(spec_path: str) -> int:
    """Internal (--worker): run one spec file and write its result beside it."""
    spec = json.loads(Path(spec_path).read_text())
    result = run_spec(spec)
    Path(spec_path).with_name("result.json").write_text(json.dumps(result, indent=1))
    return 0


def previous_result(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The finished result left in the spec's scratch folder by a run of the very same spec, if any."""
    folder = Path(spec["scratch"])
    try:
        same = json.loads((folder / "spec.json").read_text()) == spec
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if same and result.get("state") == runs.FINISHED else None


def run_all(
    specs: list[dict[str, Any]],
    parallel: int,
    threads: int = 0,
    on_result: Callable[[list[dict[str, Any]]], None] = lambda done: None,
    reuse: bool = False,
) -> list[dict[str, Any]]:
    """Run every spec: in this process (parallel 0) or in fresh processes, `parallel` at once.

    `on_result` gets the results so far after each one, so a run cut short still leaves its table.
    """
    threads = ["--threads", str(threads)] if threads else []
    if reuse:  # results of identical specs already in the scratch folder (a benchmark cut short, resumed)
        kept = {spec["name"]: previous_result(spec) for spec in specs}
        kept = {name: result for name, result in kept.items() if result is not None}
        for name in kept:
            print(f"- {name}: reusing the finished run in its scratch folder", flush=True)
        fresh = run_all(
            [spec for spec in specs if spec["name"] not in kept],
            parallel,
            threads and int(threads[1]),
            lambda done: on_result([*kept.values(), *done]),
        )
        by_name = {**kept, **{r["name"]: r for r in fresh}}
        return [by_name[spec["name"]] for spec in specs]
    if parallel <= 0:
        results = []
        for spec in specs:
            print(f"- {spec['name']} ...", flush=True)
            spec_path = Path(spec["scratch"]) / "spec.json"
            spec_path.write_text(json.dumps(spec, indent=1))
            results.append(run_spec(spec))
            spec_path.with_name("result.json").write_text(json.dumps(results[-1], indent=1))
            print_result(results[-1])
            on_result(results)
        return results
    pending, running, done = list(specs), [], {}
    while pending or running:
        while pending and len(running) < parallel:
            spec = pending.pop(0)
            folder = Path(spec["scratch"])
            spec_path = folder / "spec.json"
            spec_path.write_text(json.dumps(spec, indent=1))
            log = open(folder / "log.txt", "w")
            process = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(spec_path), *threads],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
            )
            print(f"- started {spec['name']} (log: {folder / 'log.txt'})", flush=True)
            running.append((spec, process, log))
        time.sleep(1.0)
        for item in list(running):
            spec, process, log = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            result_path = Path(spec["scratch"]) / "result.json"
            if process.returncode == 0 and result_path.is_file():
                done[spec["name"]] = json.loads(result_path.read_text())
            else:
                tail = (Path(spec["scratch"]) / "log.txt").read_text()[-600:]
                done[spec["name"]] = failed_result(spec, f"worker exited with {process.returncode}: {tail}")
            print_result(done[spec["name"]])
            on_result([done[s["name"]] for s in specs if s["name"] in done])
    return [done[spec["name"]] for spec in specs]


# --- report --------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


def print_result(result: dict[str, Any]) -> None:
    curve = "  ".join(f"e{epoch:g} {knn:.1f}" for epoch, knn in result["curve"])
    minutes = "?" if result["minutes"] is None else f"{result['minutes']:.1f} min"
    if result["state"] != runs.FINISHED:
        print(f"  {result['name']}: {result['state']} - {result['message']}  [{curve}]", flush=True)
    else:
        print(f"  {result['name']}: final kNN {_pct(result['final_knn'])} in {minutes}   curve: {curve}", flush=True)


def report(results: dict[str, Any]) -> str:
    rows = results["variants"]
    epochs = sorted({e for r in rows for e, _ in r["curve"]})
    lines = [
        f"# Quality benchmark, {results['mode']} mode ({results['date']})",
        "",
        f"Machine: {results['machine']}",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Data: {results['data']}; {results['setting']}",
        "",
        f"Baselines on the same bank and queries: random-init network {_pct(results['random_init_knn'])}, "
        f"raw pixels {_pct(results['pixel_knn'])}.",
        "",
    ]
    if not results.get("complete", True):
        lines += [f"**Partial table**: {len(rows)} runs finished so far; the others were still running or cut short.", ""]
    if results.get("lightly_skipped"):
        lines += [f"Reference row skipped: {results['lightly_skipped']}", ""]
    lines += [
        "| variant | overrides | " + " | ".join(f"ep {e:g}" for e in epochs) + " | final kNN | collapse | minutes | images/s |",
        "|---|---|" + "---:|" * len(epochs) + "---:|---|---:|---:|",
    ]
    for r in rows:
        by_epoch = {e: k for e, k in r["curve"]}
        cells = [_pct(by_epoch.get(e)) for e in epochs]
        final = f"**{r['final_knn']:.1f}%**" if r["final_knn"] is not None else f"{r['state']}: {r['message'][:80]}"
        minutes = "–" if r["minutes"] is None else f"{r['minutes']:.1f}"
        speed = "–" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
        overrides = ", ".join(r["overrides"]) or "(base)"
        lines.append(
            f"| {r['name']} | {overrides} | "
            + " | ".join(cells)
            + f" | {final} | {r.get('collapse') or '–'} | {minutes} | {speed} |"
        )
    lines += [
        "",
        "Minutes: the whole train() call (data from the cache, every evaluation included); images/s: the "
        "median logged training speed. Variants that ran at once shared the machine. Collapse: the Compare "
        "page's criterion on the run's projection spread (lightly's row logs none).",
    ]
    return "\n".join(lines) + "\n"


def lightly_available() -> bool:
    try:
        import lightly  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="cpu")
    parser.add_argument(
        "--data", default="", help="image folder/archive, 'synthetic' (default: the real copy; synthetic for --dry-run)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE,...",
        help="a variant of the base recipe (repeat; default: the mode's built-in set)",
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these built-in variants")
    parser.add_argument("--list", action="store_true", help="print the built-in variants of the mode and exit")
    parser.add_argument("--epochs", type=int, default=None, help="schedule length (default: the mode's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--parallel", type=int, default=1, help="variants at once, each in a fresh process (0: one after another in this process)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads per variant (0: torch's default); "
        "1 on a CPU shared with other work, where threads that wait for each other lose most of their time",
    )
    parser.add_argument("--no-lightly", action="store_true", help="skip the lightly reference row")
    parser.add_argument("--lightly-workers", type=int, default=None, help="DataLoader workers of the lightly row")
    parser.add_argument("--dry-run", action="store_true", help="every variant and the lightly row for a few steps at tiny size")
    parser.add_argument("--scratch", default="", help=f"runs folder for the variants (default: {SCRATCH_DIR}/<mode>-<time>)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --scratch: keep the finished runs of identical "
        "variants found there instead of training them again (resume a benchmark cut short)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for the table (.md) and numbers (.json)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: one spec in a fresh process
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the worker processes
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker_main(args.worker)

    if args.list:
        print("\n".join(VARIANTS[args.mode]))
        return 0
    data = args.data or ("synthetic" if args.dry_run or not DEFAULT_DATA else str(DEFAULT_DATA))
    try:
        variants = [parse_variant(v) for v in (args.variant or VARIANTS[args.mode])]
        if args.only:
            unknown = set(args.only) - {name for name, _ in variants}
            if unknown:
                raise ValueError(f"no built-in variant named {', '.join(sorted(unknown))} (see --list)")
            variants = [v for v in variants if v[0] in args.only]
        if len({name for name, _ in variants}) != len(variants):
            raise ValueError("two variants have the same name")
        base = base_config(args.mode, data, args.epochs, args.device, args.seed)
        configs = [(name, overrides, variant_config(base, name, overrides, args.dry_run)) for name, overrides in variants]
        reference = variant_config(base, LIGHTLY, [], args.dry_run)
    except (ValueError, ConfigError, CommandError, runs.RunError) as error:
        print(f"quality.py: {error}", file=sys.stderr)
        return 2

    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(args.scratch) if args.scratch else SCRATCH_DIR / f"{args.mode}{'-dry' if args.dry_run else ''}-{stamp}"
    specs = []
    for name, overrides, config in configs:
        specs.append(
            {"kind": "ours", "name": name, "overrides": overrides, "config": config.to_dict(), "scratch": str(scratch / name)}
        )
    lightly_skipped = ""
    if args.no_lightly:
        lightly_skipped = "--no-lightly was given."
    elif not lightly_available():
        lightly_skipped = "lightly is not installed (pip install -r benchmarks/requirements.txt)."
    else:
        workers = MODES[args.mode]["lightly_workers"] if args.lightly_workers is None else args.lightly_workers
        specs.append(
            {
                "kind": "lightly",
                "name": LIGHTLY,
                "overrides": ["lightly's recipe on our backbone"],
                "config": reference.to_dict(),
                "scratch": str(scratch / LIGHTLY),
                "lightly_workers": 0 if args.dry_run else workers,
                "lightly_hidden": MODES[args.mode]["lightly_hidden"],
            }
        )
    if lightly_skipped:
        print(f"Reference row skipped: {lightly_skipped}", flush=True)
    for spec in specs:
        Path(spec["scratch"]).mkdir(parents=True, exist_ok=True)

    device = resolve_device(args.device)
    setting = (
        f"width {base.width if not args.dry_run else DRY_RUN['width']}, "
        f"{'all' if not configs[0][2].subset else configs[0][2].subset} training images, "
        f"{configs[0][2].epochs}-epoch complete schedules, kNN k={configs[0][2].knn_k} on "
        f"{configs[0][2].eval_bank_size or 'all'} bank / {configs[0][2].eval_query_size or 'all'} queries, "
        f"seed {args.seed}{', DRY RUN (tiny sizes, measures nothing)' if args.dry_run else ''}"
    )
    print(describe_machine(device), flush=True)
    print(f"{len(specs)} runs ({setting}) into {scratch}, {max(args.parallel, 1)} at a time", flush=True)
    load_dataset(data)  # decode once into the cache before anything is timed (the variants read the cache)
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"quality-{args.mode}{'-dry' if args.dry_run else ''}"

    def write(results_list: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
        """The table and numbers of the results so far, written to --out."""
        ours_rows = [r for r in results_list if r["name"] != LIGHTLY and r["random_init_knn"] is not None]
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "mode": args.mode,
            "dry_run": args.dry_run,
            "machine": describe_machine(device),
            "data": data,
            "setting": setting,
            "command": " ".join(["python benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])]),
            "random_init_knn": ours_rows[0]["random_init_knn"] if ours_rows else None,
            "pixel_knn": ours_rows[0]["pixel_knn"] if ours_rows else None,
            "lightly_skipped": lightly_skipped,
            "total_minutes": (time.perf_counter() - started) / 60,
            "complete": len(results_list) == len(specs),
            "scratch": str(scratch),
            "variants": results_list,
        }
        table = report(results)
        (out / f"{stem}.md").write_text(table)
        (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
        return results, table

    results_list = run_all(specs, args.parallel, args.threads, on_result=write, reuse=args.reuse)
    results, table = write(results_list)
    print("\n" + table)
    print(f"Written to {out / (stem + '.md')} ({results['total_minutes']:.1f} minutes in all)")
    return 0 if all(r["state"] == runs.FINISHED for r in results_list) else 1


if __name__ == "__main__":
    raise SystemExit(main())
