"""Command line: `python -m byol train | resume | embed | probe | export | list` (or `byol ...` after `pip install .`).

Progress goes to stderr (a tqdm bar with ETA); the run directory is printed to stdout as the last
line of `train` and `resume`, so scripts can capture it. Every expected problem (bad option, bad
data, busy device, untrustworthy checkpoint) exits non-zero with one plain line, no traceback.
Ctrl-C or SIGTERM stops gracefully: the step finishes, last.pt is saved, the status says `stopped`.

`torchrun --nproc_per_node N -m byol train|resume ...` trains with N processes (distributed.py):
the main one (rank 0) creates or checks the run, draws the progress bar and prints the results;
the others take their config and run folder from it and print only their own failures. A signal
to any of them stops them all.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from . import distributed, metrics_file, runs
from .collapse import describe_collapse
from .config import PRECISIONS, PRESETS, ConfigError, TrainConfig, preset, validate, with_epochs
from .dataset import DataError
from .errors import UserError
from .lock import DeviceBusy


class CommandError(UserError):
    """An expected failure with a one-line message for the terminal."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2, like argparse but without usage spam
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(prog: str = "python -m byol") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Train and inspect BYOL self-supervised models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="start a new training run")
    train.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="starting configuration (default: cpu)")
    train.add_argument("--data", help="cifar10, synthetic, or a path to an image folder tree or an archive of one")
    train.add_argument("--data-root", help="where torchvision keeps CIFAR-10")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="peak learning rate for a batch of 256")
    train.add_argument("--width", type=int, help="backbone width (64 = standard ResNet-18)")
    train.add_argument("--subset", type=int, help="train on this many training images (0 = all)")
    train.add_argument("--no-bn", action="store_true", help="remove batch norm from projector and predictor")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--precision", choices=PRECISIONS)
    train.add_argument("--seed", type=int)
    train.add_argument("--eval-every", type=float, help="epochs between kNN evaluations")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override any config field")
    train.add_argument("--name", help="run folder name (default: generated)")
    train.add_argument("--runs-dir", type=Path, default=None, help="where run folders live (default: checkpoints/)")

    resume = sub.add_parser("resume", help="continue a stopped, failed or interrupted run")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--epochs", type=int, help="new total number of epochs (extends the run)")

    embed = sub.add_parser(
        "embed", help="compute the embeddings the dashboard shows for a run's checkpoint (saved in <run>/embeddings/)"
    )
    embed.add_argument("run_dir", type=Path)
    embed.add_argument("--umap", action="store_true", help="also compute the 2-D UMAP map of the test split and the kNN accuracy")
    embed.add_argument(
        "--film",
        action="store_true",
        help="also lay out the film of the map forming: one aligned map per snapshot (what the Embeddings page plays)",
    )

    probe = sub.add_parser(
        "probe", help="linear probe: a logistic regression on a checkpoint's frozen features (saved in <run>/embeddings/)"
    )
    probe.add_argument("run_dir", type=Path)

    export = sub.add_parser("export", help="write a checkpoint's backbone as a plain float32 state dict")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--out", type=Path, required=True, help="the file to write, e.g. backbone.pt")
    for command in (embed, probe, export):
        command.add_argument(
            "--checkpoint",
            metavar="STEP",
            help="a step number or a checkpoint file (default: the newest, as the dashboard picks it)",
        )

    listing = sub.add_parser("list", help="one line per run")
    listing.add_argument("--runs-dir", type=Path, default=None)
    return parser


# --- config from options ---------------------------------------------------------------------
def _parse_value(field_type: Any, text: str) -> Any:
    if field_type in (bool, "bool"):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise CommandError(f"expected true or false, got {text!r}")
    for kind in (int, float):
        if field_type in (kind, kind.__name__):
            try:
                return kind(text)
            except ValueError:
                raise CommandError(f"expected a {kind.__name__}, got {text!r}") from None
    return text


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = preset(args.preset)
    if args.epochs is not None:  # as on the Compare page: a short run keeps the warm-up's share (--set can still name one)
        config = with_epochs(config, args.epochs)
    overrides = {
        "data": args.data,
        "data_root": args.data_root,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "width": args.width,
        "subset": args.subset,
        "device": args.device,
        "precision": args.precision,
        "seed": args.seed,
        "eval_every": args.eval_every,
    }
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    if args.no_bn:
        config = config.replace(head_bn=False)
    return validate(apply_overrides(config, args.set))


def apply_overrides(config: TrainConfig, items: list[str]) -> TrainConfig:
    """The config with each "FIELD=VALUE" of `--set` applied (not yet validated)."""
    fields = {f.name: f.type for f in config.__dataclass_fields__.values()}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise CommandError(f"--set expects FIELD=VALUE with a known field; got {item!r}")
        try:
            config = config.replace(**{key: _parse_value(fields[key], value)})
        except CommandError as error:
            raise CommandError(f"--set {key}: {error}") from None
    return config


# --- commands --------------------------------------------------------------------------------
class _Progress:
    """A tqdm bar over training steps, fed by the training loop's events."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == metrics_file.STEP:
            if self.bar is None:
                # A resumed run's bar starts at its step, so the rate and ETA count only this sitting's steps.
                self.bar = self._tqdm(
                    total=event.get("total_steps"),
                    initial=event["step"],
                    unit="step",
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            self.bar.total = event.get("total_steps") or self.bar.total
            self.bar.n = event["step"]
            self.bar.set_postfix(loss=f"{event['loss']:.3f}", img_s=event["images_per_s"], refresh=False)
            self.bar.refresh()
        elif kind == metrics_file.EVAL:
            message = f"step {event['step']}: kNN {event['knn']:.1f}% (raw pixels {event['pixel_knn']:.1f}%)"
            if self.bar is not None:
                self.bar.write(message, file=sys.stderr)  # tqdm writes to stdout unless told: keep stdout for the run folder
            else:
                print(message, file=sys.stderr)
        elif kind == metrics_file.STATUS and event.get("message"):
            print(f"[{event['state']}] {event['message']}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _FailureReporter:
    """The events callback of a process other than the main one: it prints only why this process failed."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("kind") == metrics_file.STATUS and event.get("state") == runs.FAILED:
            print(f"[process {self.rank}] {event['state']}: {event.get('message', '')}", file=sys.stderr)

    def close(self) -> None:
        pass


def _run_training(config: TrainConfig, run_dir: Path, world: distributed.World = distributed.ALONE) -> int:
    from .train import train

    stop = threading.Event()

    def request_stop(signum, frame):  # finish the step, checkpoint, exit as "stopped"
        if world.is_main:
            print("\nStopping after this step (press again to wait)...", file=sys.stderr)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = _Progress() if world.is_main else _FailureReporter(world.rank)
    try:
        state = train(config, run_dir, stop, progress, world=world)
    finally:
        progress.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    exit_code = 0 if state in (runs.FINISHED, runs.STOPPED) else 1  # stopped on request is no failure
    if not world.is_main:  # the main process reports the run
        return exit_code
    status = runs.read_status(run_dir)
    print(f"{state}: {status.get('message', '')}", file=sys.stderr)
    print(run_dir)
    return exit_code


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    runs_dir = args.runs_dir or runs.default_runs_dir()
    with distributed.join() as world:
        run_dir = world.from_main(lambda: runs.create_run(runs_dir, config, args.name))
        try:
            return _run_training(config, run_dir, world)
        except (ConfigError, DataError, DeviceBusy):
            # Refused before anything was trained (bad config, unusable data, busy device): do not
            # leave an empty run behind.
            if world.is_main:
                runs.delete_run(run_dir, force=True)
            raise


def cmd_resume(args: argparse.Namespace) -> int:
    with distributed.join() as world:
        # The main process checks the run and extends its config; the others take both from it.
        config, run_dir = world.from_main(lambda: _prepare_resume(args))
        return _run_training(config, run_dir, world)


def _prepare_resume(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The config to resume `args.run_dir` with (extended to `--epochs`), or CommandError saying why not."""
    run_dir = runs.existing_run(args.run_dir)
    status = runs.read_status(run_dir)
    problem = runs.resume_problem(run_dir, status["state"])
    if problem:
        raise CommandError(problem)
    config = validate(runs.extended_config(run_dir, status["state"], args.epochs))
    if args.epochs is not None:
        runs.update_config(run_dir, config)
    return config, run_dir


def _run_and_checkpoint(args: argparse.Namespace) -> tuple[Path, Path]:
    """The run folder and the checkpoint that `--checkpoint` names (the newest by default)."""
    from .checkpoint import pick_checkpoint

    run_dir = runs.existing_run(args.run_dir)
    return run_dir, pick_checkpoint(run_dir, args.checkpoint)


def _say_once() -> Callable[..., None]:
    """A progress report for the terminal: each new message once, on stderr."""
    said = []

    def report(message: str | None = None, fraction: float | None = None) -> None:
        if message and message not in said:
            said.append(message)
            print(message, file=sys.stderr)

    return report


def cmd_embed(args: argparse.Namespace) -> int:
    from . import embed

    run_dir, checkpoint = _run_and_checkpoint(args)
    # The dashboard's own prepare path, so the pages find what this command computed.
    embed.prepare_checkpoint(run_dir, checkpoint, _say_once(), level=embed.FULL if args.umap else embed.EMBEDDINGS)
    for path in embed.artefact_paths(run_dir, checkpoint):
        print(path)
    if args.film:
        from . import map_film

        map_film.prepare_film(run_dir, _say_once())
        print(map_film.film_path(run_dir))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from . import probe

    run_dir, checkpoint = _run_and_checkpoint(args)
    result = probe.run_probe(run_dir, checkpoint, _say_once())
    print(
        f"{checkpoint.name}: logistic regression on {result.train_size:,} training-set embeddings, "
        f"{result.test_size:,} test images, C={result.c:g}, {result.iterations} iterations",
        file=sys.stderr,
    )
    print(f"linear probe: {result.accuracy:.1f}%")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_backbone

    run_dir, checkpoint = _run_and_checkpoint(args)
    written = export_backbone(run_dir, checkpoint, args.out)
    print(f"{checkpoint.name} (step {written['step']}, width {written['width']}): backbone in float32", file=sys.stderr)
    print(written["path"])
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    runs_dir = args.runs_dir or runs.default_runs_dir()
    summaries = runs.list_runs(runs_dir)
    if not summaries:
        print(f"No runs in {runs_dir}.")
        return 0
    for s in summaries:
        knn = "kNN -" if s.latest_knn is None else f"kNN {s.latest_knn:.1f}%"
        if s.best_knn is not None:
            knn += f" (best {s.best_knn:.1f}%)"
        collapsed = f"  collapsed {describe_collapse(s.collapse)}" if s.collapse else ""  # Compare's verdict, in table words
        print(f"{s.name}  {s.state:<11} epoch {s.epochs_done:g}/{s.epochs_total}  {knn}  {s.disk_bytes / 1e6:.1f} MB{collapsed}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "resume": cmd_resume,
    "embed": cmd_embed,
    "probe": cmd_probe,
    "export": cmd_export,
    "list": cmd_list,
}


def main(argv: list[str] | None = None, prog: str = "python -m byol") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UserError, FileNotFoundError) as error:  # a missing path the user typed is plain too
        if distributed.env_rank() == 0:  # under torchrun every process has the same error: say it once
            print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def script() -> int:
    """The `byol` command that `pip install .` puts on the PATH (pyproject.toml's [project.scripts])."""
    return main(prog="byol")
