"""Checkpoints round-trip through weights_only=True and refuse anything they cannot trust."""

import os
import pickle

import pytest
import torch

from byol.checkpoint import (
    CheckpointError,
    full_state,
    load_backbone,
    load_checkpoint,
    restore_networks,
    save_checkpoint,
    snapshot_state,
)
from byol.model import BYOLNetworks
from byol.optim import build_optimizer
from helpers import tiny_config


def trained_bits():
    config = tiny_config()
    nets = BYOLNetworks.from_config(config)
    optimizer = build_optimizer(config, nets.trainable_parameters())
    loss, _ = nets.forward_loss(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    loss.backward()
    optimizer.step()
    return config, nets, optimizer


def test_full_checkpoint_round_trips_with_weights_only(tmp_path):
    config, nets, optimizer = trained_bits()
    path = tmp_path / "last.pt"
    save_checkpoint(path, full_state(nets, optimizer, config, step=7, epoch=1, step_in_epoch=3, augment_rng=torch.Generator()))
    raw = torch.load(path, weights_only=True)  # must not need unsafe unpickling
    assert raw["step"] == 7 and raw["config"] == config.to_dict()
    state = load_checkpoint(path)
    fresh = BYOLNetworks.from_config(config)
    restore_networks(fresh, state)
    for a, b in zip(nets.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    new_optimizer = build_optimizer(config, fresh.trainable_parameters())
    new_optimizer.load_state_dict(state["optimizer"])
    assert len(new_optimizer.state) == len(optimizer.state)


def test_snapshot_holds_half_precision_backbone_only(tmp_path):
    config, nets, _ = trained_bits()
    path = tmp_path / "step-00000001.pt"
    save_checkpoint(path, snapshot_state(nets.backbone, config, 1, 0.5, 42.0))
    state = load_checkpoint(path)
    assert "optimizer" not in state and "predictor" not in state
    assert all(v.dtype == torch.float16 for v in state["backbone"].values() if v.is_floating_point())
    backbone, loaded_config, info = load_backbone(path)
    assert loaded_config == config and info["knn"] == 42.0
    torch.testing.assert_close(backbone.conv1.weight, nets.backbone.conv1.weight, atol=1e-2, rtol=1e-2)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    config, nets, optimizer = trained_bits()
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": "byol-studio/1", "value": 1})
    good = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(path, full_state(nets, optimizer, config, 1, 0, 1, torch.Generator()))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/byol-pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (os.urandom(2048), "damaged or not a PyTorch checkpoint"),
        (pickle.dumps({"x": 1}), "damaged or not a PyTorch checkpoint"),
    ],
)
def test_bad_files_give_plain_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    config, nets, optimizer = trained_bits()
    path = tmp_path / "last.pt"
    save_checkpoint(path, full_state(nets, optimizer, config, 1, 0, 1, torch.Generator()))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)


def test_code_in_a_pickle_is_never_run(tmp_path):
    marker = "/tmp/byol-pwned"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"format": "byol-studio/1", "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not os.path.exists(marker)


def test_foreign_checkpoint_and_other_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a BYOL Studio checkpoint"):
        load_checkpoint(path)
    config, nets, _ = trained_bits()
    state = snapshot_state(nets.backbone, config, 1, 0.5, None)
    state["config"]["width"] = 8  # claims another architecture than the weights it holds
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="does not hold a backbone that matches"):
        load_backbone(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")
