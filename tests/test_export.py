"""byol/export.py and `python -m byol export`: a plain fp32 state dict that torchvision's resnet18 (width 64)
or our own constructor (other widths) loads strictly and that gives the same features; plain errors."""

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from byol.checkpoint import load_backbone, save_checkpoint, snapshot_state
from byol.cli import main
from byol.export import export_backbone
from byol.model import resnet18_cifar
from byol.runs import create_run, snapshot_name
from helpers import run_cli, tiny_config


def run_with_snapshot(tmp_path, width: int, step: int = 0):
    """A run holding one fp16 snapshot of a random backbone whose batch-norm statistics are not the defaults."""
    config = tiny_config(width=width)
    run_dir = create_run(tmp_path / "runs", config, f"w{width}")
    torch.manual_seed(width)
    backbone = resnet18_cifar(width)
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):  # eval mode must use these, in both networks
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    save_checkpoint(run_dir / snapshot_name(step), snapshot_state(backbone, config, step, 0.0, None))
    return run_dir, run_dir / snapshot_name(step)


def cifar_torchvision_resnet18() -> nn.Module:
    model = resnet18()
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def test_width_64_export_loads_strictly_into_torchvision_and_gives_our_features(tmp_path):
    run_dir, checkpoint = run_with_snapshot(tmp_path, 64)
    out = tmp_path / "backbone.pt"
    export_backbone(run_dir, checkpoint, out)

    state = torch.load(out, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())  # the snapshot is fp16
    theirs = cifar_torchvision_resnet18()
    theirs.load_state_dict(state, strict=True)
    ours, _, _ = load_backbone(checkpoint)
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = ours.eval()(images)
        got = theirs.eval()(images)
    assert got.shape == (4, 512)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_other_widths_load_into_our_constructor_and_round_trip(tmp_path):
    run_dir, checkpoint = run_with_snapshot(tmp_path, 4, step=8)
    out = tmp_path / "backbone-w4.pt"
    written = export_backbone(run_dir, checkpoint, out)
    assert written["width"] == 4 and written["step"] == 8

    state = torch.load(out, weights_only=True)
    model = resnet18_cifar(state["conv1.weight"].shape[0])
    model.load_state_dict(state, strict=True)
    ours, _, _ = load_backbone(checkpoint)
    for key, tensor in ours.state_dict().items():
        assert torch.equal(state[key], tensor), key
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), ours(images))
    with pytest.raises(RuntimeError):  # it is not a width-64 network
        cifar_torchvision_resnet18().load_state_dict(state)


def test_cli_export_writes_the_file_and_prints_its_path(tmp_path):
    run_dir, _ = run_with_snapshot(tmp_path, 4)
    out = tmp_path / "exported.pt"
    result = run_cli("export", str(run_dir), "--out", str(out), "--checkpoint", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert "float32" in result.stderr
    assert set(torch.load(out, weights_only=True)) == set(resnet18_cifar(4).state_dict())


@pytest.mark.parametrize(
    "case, words",
    [
        ("unknown run", "is not a run folder"),
        ("bad step", "has no checkpoint at step 7"),
        ("not a step", "takes a step number or a checkpoint file"),
        ("missing folder", "does not exist"),
        ("out is a folder", "is a folder"),
        ("own checkpoint", "one of the run's own checkpoints"),
        ("no checkpoints", "has no checkpoint yet"),
    ],
)
def test_bad_export_input_is_one_plain_line_and_writes_nothing(tmp_path, capsys, case, words):
    run_dir, checkpoint = run_with_snapshot(tmp_path, 4)
    empty_run = create_run(tmp_path / "runs", tiny_config(), "empty")
    out = tmp_path / "out" / "backbone.pt"
    out.parent.mkdir()
    args = {
        "unknown run": [str(tmp_path / "no-such-run"), "--out", str(out)],
        "bad step": [str(run_dir), "--out", str(out), "--checkpoint", "7"],
        "not a step": [str(run_dir), "--out", str(out), "--checkpoint", "latest"],
        "missing folder": [str(run_dir), "--out", str(tmp_path / "nowhere" / "backbone.pt")],
        "out is a folder": [str(run_dir), "--out", str(out.parent)],
        "own checkpoint": [str(run_dir), "--out", str(checkpoint)],
        "no checkpoints": [str(empty_run), "--out", str(out)],
    }[case]
    before = checkpoint.read_bytes()
    assert main(["export", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert list(out.parent.iterdir()) == [] and checkpoint.read_bytes() == before
