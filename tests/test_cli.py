"""The command line contract: train, resume, embed, probe, export, list; one plain line and non-zero exit on bad input."""

import json
import shutil

import pytest

from byol import metrics_file, runs
from byol.checkpoint import default_checkpoint
from helpers import run_cli, shipped_pair, tiny_cli_settings

TINY = [
    *tiny_cli_settings(),
    "--batch-size",
    "64",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("runs")
    result = run_cli("train", "--preset", "cpu", "--data", "synthetic", "--epochs", "1", "--runs-dir", str(runs_dir), *TINY)
    assert result.returncode == 0, result.stderr
    return runs_dir, result


def test_train_prints_the_run_directory_last(trained):
    runs_dir, result = trained
    run_dir = result.stdout.strip().splitlines()[-1]
    assert runs.read_status(run_dir)["state"] == runs.FINISHED
    assert run_dir.startswith(str(runs_dir))
    assert "Traceback" not in result.stderr


def test_no_bn_and_overrides_reach_the_config(tmp_path):
    result = run_cli("train", "--data", "synthetic", "--epochs", "1", "--no-bn", "--runs-dir", str(tmp_path), *TINY)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / result.stdout.strip().splitlines()[-1].split("/")[-1] / "config.json").read_text())
    assert config["head_bn"] is False and config["batch_size"] == 64 and config["epochs"] == 1


def test_resume_extends_a_finished_run_and_list_shows_it(trained):
    runs_dir, result = trained
    run_dir = result.stdout.strip().splitlines()[-1]
    resumed = run_cli("resume", run_dir, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == run_dir
    steps = [r["step"] for r in metrics_file.read_rows(run_dir) if r["kind"] == "step"]
    assert steps == [4, 5, 8]  # logged every 5 steps and at each epoch's end, never twice
    listing = run_cli("list", "--runs-dir", str(runs_dir))
    assert listing.returncode == 0 and "finished" in listing.stdout and "epoch 2/2" in listing.stdout


def test_list_says_which_run_collapsed(tmp_path):
    for run_dir in shipped_pair():
        shutil.copytree(run_dir, tmp_path / run_dir.name)
    listing = run_cli("list", "--runs-dir", str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    with_bn, without_bn = (
        next(line for line in listing.stdout.splitlines() if line.startswith(p.name + " ")) for p in shipped_pair()
    )
    assert without_bn.endswith("collapsed at step 15") and "collapsed" not in with_bn


def test_embed_writes_bank_and_queries_of_the_checkpoint_the_dashboard_shows(trained):
    _, result = trained
    run_dir = result.stdout.strip().splitlines()[-1]
    embedded = run_cli("embed", run_dir)
    assert embedded.returncode == 0, embedded.stderr
    names = sorted(line.rsplit("/", 1)[-1] for line in embedded.stdout.split())
    newest = default_checkpoint(run_dir).stem
    assert newest.startswith("step-")  # a finished run's last.pt is no newer than its last snapshot
    assert names == [f"{newest}-test.npz", f"{newest}-train.npz"]


def test_embed_film_lays_out_one_map_per_snapshot_for_the_embeddings_page(trained):
    from byol import map_film

    _, result = trained
    run_dir = result.stdout.strip().splitlines()[-1]
    embedded = run_cli("embed", run_dir, "--film")
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout.split()[-1] == str(map_film.film_path(run_dir))
    film = map_film.load_film(run_dir)  # raises when missing or made from other snapshots
    assert film.snapshots == [s.path.name for s in runs.list_snapshots(run_dir)]
    assert film.coordinates.shape == (len(film.snapshots), len(film.indices), 2)


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--epochs", "0", "--data", "synthetic"], "Epochs (epochs) must be from 1"),
        (["train", "--batch-size", "abc"], "invalid int value"),
        (["train", "--data", "/no/such/folder", "--epochs", "1"], "/no/such/folder"),
        (["train", "--set", "nonsense=1"], "--set expects FIELD=VALUE with a known field"),
        (["train", "--set", "lr=fast"], "--set lr: expected a float"),
        (["train", "--data", "synthetic", "--batch-size", "100000", "--epochs", "1"], "Batch size (batch_size)"),
        (["resume", "/no/such/run"], "is not a run folder"),
        (["embed", "/no/such/run"], "is not a run folder"),
        (["probe", "/no/such/run"], "is not a run folder"),
        (["export", "/no/such/run", "--out", "/tmp/backbone.pt"], "is not a run folder"),
        (["export", "/no/such/run"], "the following arguments are required: --out"),
        (["train", "--preset", "nope"], "invalid choice"),
    ],
)
def test_bad_input_exits_non_zero_with_one_plain_line(tmp_path, args, words):
    if args[0] == "train":
        args = [*args, "--runs-dir", str(tmp_path)]
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert words in result.stderr, result.stderr
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")] or args[0] != "train"


def test_embed_refuses_an_untrustworthy_checkpoint(tmp_path):
    config_run = runs.create_run(tmp_path, __import__("byol.config", fromlist=["preset"]).preset("cpu", data="synthetic"))
    (config_run / "last.pt").write_bytes(b"not a checkpoint at all")
    result = run_cli("embed", str(config_run))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "damaged or not a PyTorch checkpoint" in result.stderr


def test_a_resumed_runs_progress_bar_counts_rate_and_eta_from_where_it_resumed(capsys):
    from byol.cli import _Progress

    progress = _Progress()
    for step in (7800, 7805, 7810):
        progress({"kind": "step", "step": step, "total_steps": 19500, "loss": 0.6, "images_per_s": 1200.0})
    shown = progress.bar.format_dict
    progress.close()
    # tqdm's rate (and so the ETA) is (n - initial) / elapsed: the 10 steps of this sitting, not 7,810.
    assert shown["n"] - shown["initial"] == 10
    assert "7810/19500" in capsys.readouterr().err


def test_a_short_epochs_option_keeps_the_presets_warm_up_share_unless_set():
    from byol.cli import build_parser, config_from_args
    from byol.config import PRESETS

    cpu = PRESETS["cpu"]
    short = config_from_args(build_parser().parse_args(["train", "--preset", "cpu", "--epochs", "1"]))
    assert (short.epochs, short.warmup_epochs) == (1, cpu.warmup_epochs / cpu.epochs)
    chosen = config_from_args(build_parser().parse_args(["train", "--epochs", "1", "--set", "warmup_epochs=0.5"]))
    assert chosen.warmup_epochs == 0.5
