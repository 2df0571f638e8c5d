"""Turn a finished run into a shipped demo run: snapshots only, a size limit, and demo.json.

    python benchmarks/make_demo.py RUN_DIR --out checkpoints/demo-NAME --machine "one NVIDIA H200" --data cifar10

The demo keeps what the dashboard reads (config.json, status.json, metrics.jsonl), the half-precision
backbone snapshots of about `--snapshots` evaluation points spread over training, or of the steps
`--steps` names (always the first, the untrained network, and the last), and no optimiser state, so it cannot be resumed and costs
little in the repository. When the chosen snapshots would pass `--max-mb`, snapshots in the middle
are dropped until they fit. demo.json records the machine, the minutes, and the kNN of the last
evaluation beside the random-init and raw-pixel figures of the same run, all read from the run.

With `--ship-artefacts` it also computes what the pages would otherwise compute on a visitor's first
visit, from the demo's own images: the last snapshot's embeddings, map, kNN votes and linear probe, every other
snapshot's kNN votes (the film colours each frame's dots by them), the film, and the untrained
network's search bank (Retrieval compares against it). They go to the
demo's `shipped/` folder, which the app adopts wherever the local copy holds the same images
(byol/shipped.py). `--ship-into DEMO` does the same for a demo made without them (on a GPU machine,
whose device calls bring back too little for them), and restates its label. A demo that would pass
`--max-mb` with its artefacts ships none.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol import demos, embed, map_film, metrics_file, probe, run_images, runs, shipped  # noqa: E402
from byol.cifar10 import CLASS_NAMES_CIFAR10  # noqa: E402
from byol.collapse import Collapse, collapse_story, describe_collapse, find_collapse  # noqa: E402


def spread(items: list, count: int) -> list:
    """About `count` items evenly spread over `items`, always the first and the last."""
    if count >= len(items):
        return list(items)
    if count <= 1:
        return [items[-1]]
    picks = {round(i * (len(items) - 1) / (count - 1)) for i in range(count)}
    return [items[i] for i in sorted(picks)]


def fit_size(files: list[Path], max_bytes: int) -> list[Path]:
    """Drop files from the middle (never the first or last) until their total fits `max_bytes`."""
    files = list(files)
    while len(files) > 2 and sum(f.stat().st_size for f in files) > max_bytes:
        del files[len(files) // 2]
    return files


PAUSE_SECONDS = 300.0


def training_minutes(rows: list[dict], pause_seconds: float = PAUSE_SECONDS) -> float:
    """Minutes spent training, over every sitting of the run: the gaps between consecutive metric
    rows, leaving out each gap longer than `pause_seconds`.

    A run resumed across sittings restarts status.json's clock at each resume, and a run paused for
    other work leaves a long silence in its metrics; neither is training time. A row is written every
    `log_every` steps and after each evaluation, seconds to a minute or two apart, so a gap of five
    minutes is a pause.
    """
    times = sorted(float(row["time"]) for row in rows if "time" in row)
    return sum(later - earlier for earlier, later in zip(times, times[1:]) if later - earlier <= pause_seconds) / 60


def duration_words(minutes: float) -> str:
    """'40 minutes', 'about 7 hours': how long, as a person would say it."""
    return f"{minutes:.0f} minutes" if minutes < 90 else f"about {minutes / 60:.0f} hours"


def plain_summary(
    epochs: int,
    minutes: float,
    machine: str,
    k: int,
    queries: int,
    knn: float,
    random_init: float,
    pixels: float | None,
    collapse: Collapse | None = None,
) -> str:
    """What Home shows first: the demo's result in words a visitor who does not code can follow (the
    label, beside it, keeps the recipe). `machine`'s first clause names the computer ("a 2-core Intel
    Xeon, both cores, bf16 ..." -> "a 2-core Intel Xeon"). A run that collapsed (`collapse`, the
    Compare page's verdict) says so before its figures: they are those of a failure."""
    computer = machine.split(",")[0]
    floor = f", comparing raw pixels {pixels:.0f}%" if pixels is not None else ""
    training = f"{epochs} passes over them, {duration_words(minutes)} of training on {computer}."
    if collapse is None:
        story = f"This network learned from CIFAR-10's training pictures without ever seeing their labels: {training}"
    else:
        story = (
            f"This network trained on CIFAR-10's training pictures without ever seeing their labels: {training} "
            f"It {collapse_story(collapse)}."
        )
    return (
        f"{story} Asked to name the class of {queries:,} new pictures by a vote of their {k} most similar "
        f"training pictures, it is right {knn:.0f}% of the time: the same network untrained {random_init:.0f}%{floor}, "
        f"guessing {100 / len(CLASS_NAMES_CIFAR10):.0f}%."
    )


def demo_record(run_dir: Path, machine: str, trained_on: str, ships_artefacts: bool = False) -> dict:
    """demo.json's fields, every figure read from the run's status and metrics."""
    config = runs.read_config(run_dir)
    status = runs.read_status(run_dir)
    rows = metrics_file.read_rows(run_dir)
    evals = metrics_file.eval_rows(rows)
    if status.get("state") != runs.FINISHED or not evals:
        raise SystemExit(f"{run_dir} is not a finished run with kNN evaluations (state: {status.get('state')}).")
    last = evals[-1]
    minutes = training_minutes(rows)
    knn, (random_init, pixels) = last["knn"], runs.knn_baselines(evals)
    if random_init is None:
        raise SystemExit(f"{run_dir} has no kNN evaluation at step 0 (the untrained network) to compare with.")
    k, queries = last.get("k", config.knn_k), last["query_size"]
    tau = f"τ {config.tau_base:g}" if config.tau_schedule == "fixed" else f"τ from {config.tau_base:g}"
    predictor = f" ({config.predictor_lr_scale:g}× for the predictor)" if config.predictor_lr_scale != 1 else ""
    label = (
        f"Trained by the BYOL Studio team on the real CIFAR-10 ({trained_on}): a width-{config.width} ResNet-18 "
        f"({config.preset or 'custom'} recipe: {config.optimizer}, lr {config.lr:g}{predictor}, "
        f"weight decay {config.weight_decay:g}, {tau}) for "
        f"{config.epochs} epochs, {minutes:.0f} minutes of training on {machine}. kNN accuracy {knn:.1f}% "
        f"(k={k}, {last.get('bank_size', '?'):,} training images as the bank, "
        f"{queries:,} test images as queries) against {random_init:.1f}% for the untrained network"
        + (f" and {pixels:.1f}% for raw pixels." if pixels is not None else ".")
        + " Its images come from your own CIFAR-10: the Embeddings and Retrieval pages use a local copy at a "
        "documented place (or ask where one is)"
        + (
            ". Its embeddings, map and training film, and the untrained network's embeddings to compare with, come "
            "with it, ready wherever that copy holds the same images in the same order (any copy of the archive it "
            "was trained on does); other copies compute them on first use."
            if ships_artefacts
            else " and compute the embeddings on first use."
        )
    )
    collapse = find_collapse(rows, config.projector_dim)
    return {
        "summary": plain_summary(config.epochs, minutes, machine, k, queries, knn, random_init, pixels, collapse),
        "label": label,
        "machine": machine,
        "minutes": round(minutes, 1),
        "epochs": config.epochs,
        "knn": knn,
        "random_init_knn": random_init,
        "pixel_knn": pixels,
        "trained_on": trained_on,
        "collapsed": describe_collapse(collapse),  # the Compare page's verdict: "no", "at step 10", ...
    }


def pick_snapshots(run_dir: Path, count: int, steps: list[int] | None = None) -> list[Path]:
    """The snapshots to keep: those at `steps` when given (the first and last always), else `count`
    spread evenly. A run's map changes most early on, so a hand-picked list can show more of it."""
    found = {snapshot.step: snapshot.path for snapshot in runs.list_snapshots(run_dir)}
    if not found:
        raise SystemExit(f"{run_dir} has no snapshots ({runs.SNAPSHOT_GLOB}).")
    ordered = [found[step] for step in sorted(found)]
    if steps is None:
        return spread(ordered, count)
    missing = sorted(set(steps) - set(found))
    if missing:
        raise SystemExit(f"{run_dir} has no snapshot at step(s) {missing}; it has {sorted(found)}.")
    return sorted({ordered[0], ordered[-1], *(found[step] for step in steps)})


def ship_artefacts(demo: Path, say=print) -> list[Path]:
    """Compute the demo's first-visit artefacts from its own images and copy them into `demo/shipped/`."""
    data = run_images.run_data(demo)
    snapshots = [snapshot.path for snapshot in runs.list_snapshots(demo)]
    last = snapshots[-1]
    votes_only = frozenset({embed.Artefact.TRAIN_EMBEDDINGS, embed.Artefact.TEST_EMBEDDINGS, embed.Artefact.KNN})
    for snapshot in snapshots:
        say(f"Computing the artefacts of {snapshot.name}...")
        embed.prepare_checkpoint(demo, snapshot, data=data, level=embed.FULL if snapshot == last else votes_only)
    say("Laying out the training film...")
    map_film.prepare_film(demo, data=data)
    say("Fitting the linear probe...")
    probe.run_probe(demo, last, data=data)
    files = embed.artefact_paths(demo, last) + [embed.probe_path(demo, last)]
    files += [embed.knn_path(demo, s) for s in snapshots[:-1]] + [map_film.film_path(demo)]
    # The untrained network's search bank: Retrieval's "untrained network" figure and comparison need it.
    files.append(embed.embedding_path(demo, snapshots[0], "train"))
    return shipped.ship(demo, data, files)


def tracked_bytes(demo: Path) -> int:
    """What the demo adds to the repository: every file but its ignored artefact store and local settings."""
    ignored = demo / runs.EMBEDDINGS_FOLDER
    return sum(
        f.stat().st_size for f in demo.rglob("*") if f.is_file() and ignored not in f.parents and f.name != runs.LOCAL_SETTINGS
    )


def ship_into(demo: Path, max_mb: float) -> list[Path]:
    """Add the first-visit artefacts to a demo folder and say so in its label; returns the shipped files.

    Also for a demo made without them elsewhere (on a GPU machine, say: with them it would not fit what
    a device call brings back). When the demo would then pass `max_mb` in the repository, nothing is
    shipped and the label is left as it was.
    """
    record = json.loads((demo / demos.DEMO_RECORD).read_text())
    files = ship_artefacts(demo)
    size_mb = tracked_bytes(demo) / 2**20
    if size_mb > max_mb:
        shutil.rmtree(shipped.shipped_folder(demo))
        raise SystemExit(
            f"With its artefacts {demo} would take {size_mb:.1f} MB, over the {max_mb:g} MB limit: nothing was "
            "shipped. Keep fewer snapshots (--steps), or ship none."
        )
    record.update(demo_record(demo, record["machine"], record["trained_on"], ships_artefacts=True))
    (demo / demos.DEMO_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return files


def make_demo(
    run_dir: Path,
    out: Path,
    machine: str,
    trained_on: str,
    snapshots: int,
    max_mb: float,
    data: str | None = None,
    steps: list[int] | None = None,
    ships_artefacts: bool = False,
) -> list[Path]:
    """Write the demo folder `out` from `run_dir`; returns the files it kept (snapshots, then shipped artefacts).

    `data` replaces the config's data source: a run trained from a local copy names a path on the
    training machine, meaningless elsewhere, while a demo naming "cifar10" opens on any local copy at
    a documented place (`byol.cifar10.local_copies`).
    """
    record = demo_record(run_dir, machine, trained_on)
    kept = fit_size(pick_snapshots(run_dir, snapshots, steps), int(max_mb * 2**20))
    if out.exists():
        raise SystemExit(f"{out} exists already: remove it first (a demo is written whole, never merged).")
    out.mkdir(parents=True)
    for name in (runs.STATUS_FILE, metrics_file.NAME):
        shutil.copy2(run_dir / name, out / name)
    config = runs.read_json(run_dir / runs.CONFIG_FILE)  # as saved: this computer's local settings stay out
    if data is not None:
        config.update(data=data, data_root="")
    (out / runs.CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for snapshot in kept:
        shutil.copy2(snapshot, out / snapshot.name)
    (out / demos.DEMO_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return kept + (ship_into(out, max_mb) if ships_artefacts else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="the finished run to make a demo of")
    parser.add_argument("--out", type=Path, help="the demo folder to write, e.g. checkpoints/demo-NAME")
    parser.add_argument("--machine", help="where it was trained, in words (with the card for a GPU)")
    parser.add_argument("--trained-on", default="cifar10-jpg.tar.gz, a JPEG copy at quality 75")
    parser.add_argument("--snapshots", type=int, default=5, help="evaluation points to keep, first and last included")
    parser.add_argument("--steps", type=int, nargs="+", help="keep the snapshots of these steps (and the first and last) instead")
    parser.add_argument("--max-mb", type=float, default=80.0, help="the demo's size limit in the repository, artefacts included")
    parser.add_argument(
        "--data", help='the demo config\'s data source, e.g. "cifar10" for a run trained from a local CIFAR-10 copy'
    )
    parser.add_argument(
        "--ship-artefacts",
        action="store_true",
        help="also compute the embeddings, map, kNN votes, probe and film from the demo's images and ship them",
    )
    parser.add_argument("--ship-into", type=Path, metavar="DEMO", help="instead: ship the artefacts of a demo made without them")
    args = parser.parse_args()
    if args.ship_into is not None:
        files = ship_into(args.ship_into, args.max_mb)
        print(f"Shipped {len(files)} files into {args.ship_into}: {tracked_bytes(args.ship_into) / 2**20:.1f} MB in all")
        print(json.loads((args.ship_into / demos.DEMO_RECORD).read_text())["label"])
        return
    if args.run_dir is None or args.out is None or args.machine is None:
        parser.error("making a demo needs RUN_DIR, --out and --machine (or --ship-into DEMO)")
    kept = make_demo(
        args.run_dir,
        args.out,
        args.machine,
        args.trained_on,
        args.snapshots,
        args.max_mb,
        args.data,
        args.steps,
        args.ship_artefacts,
    )
    size = sum(f.stat().st_size for f in kept) / 2**20
    print(f"Wrote {args.out}: {len(kept)} files ({', '.join(f.name for f in kept)}), {size:.1f} MB")
    print(json.loads((args.out / demos.DEMO_RECORD).read_text())["label"])


if __name__ == "__main__":
    main()
