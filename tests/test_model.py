"""The networks and the objective behave as BYOL requires."""

import copy

import pytest
import torch
import torchvision

from byol.model import BYOLNetworks, byol_loss, mlp_head, projection_spread, resnet18_cifar, target_pairs, update_target


def small_networks(head_bn=True):
    torch.manual_seed(0)
    return BYOLNetworks(width=4, projector_hidden=32, projector_dim=16, predictor_hidden=32, head_bn=head_bn)


def test_backbone_is_resnet18_with_cifar_stem():
    ours = resnet18_cifar(64)
    reference = torchvision.models.resnet18()
    assert ours.conv1.kernel_size == (3, 3) and ours.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in ours.modules())
    # Same blocks and parameters as torchvision's ResNet-18, minus the classifier and the 7x7 stem.
    ref_params = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith(("fc", "conv1")))
    our_params = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith("conv1"))
    assert our_params == ref_params
    assert ours(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_width_scales_feature_size():
    assert resnet18_cifar(16)(torch.randn(2, 3, 32, 32)).shape == (2, 128)


def test_bn_switch_removes_batch_norm_from_heads():
    with_bn, without_bn = mlp_head(8, 16, 4, True), mlp_head(8, 16, 4, False)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in without_bn)


def test_loss_is_symmetric_and_bounded():
    nets = small_networks()
    nets.train()
    v1, v2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)
    loss_12, _ = nets.forward_loss(v1, v2)
    torch.manual_seed(1)
    loss_21, _ = nets.forward_loss(v2, v1)
    assert loss_12.item() == pytest.approx(loss_21.item(), rel=1e-5)
    assert 0.0 <= loss_12.item() <= 8.0


def test_loss_pairs_each_view_with_the_other_views_target():
    p1, p2, z1, z2 = (torch.randn(4, 8) for _ in range(4))
    # Identical prediction and target gives zero; opposite gives the maximum 4 per term.
    assert byol_loss(p1, p1).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p1, -p1).item() == pytest.approx(4.0, abs=1e-6)
    assert byol_loss(p1, 3 * p1).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant


def test_target_gets_no_gradient():
    nets = small_networks()
    loss, _ = nets.forward_loss(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    loss.backward()
    assert all(p.grad is None for p in nets.target_backbone.parameters())
    assert all(p.grad is not None for p in nets.predictor.parameters())


@pytest.mark.parametrize("tau", [0.9, torch.tensor(0.9)], ids=["number", "device-tensor"])
def test_ema_matches_formula_for_parameters_and_buffers(tau):
    # tau comes as a number, or as the 0-d tensor a CUDA graph's step reads (graph_step.py).
    nets = small_networks()
    with torch.no_grad():
        for p in nets.backbone.parameters():
            p.add_(torch.randn_like(p))
        for b in nets.backbone.buffers():
            if b.dtype.is_floating_point:
                b.add_(torch.rand_like(b))
        nets.backbone.bn1.num_batches_tracked.fill_(7)
    online = {**dict(nets.backbone.named_parameters()), **dict(nets.backbone.named_buffers())}
    before = {
        k: v.clone()
        for k, v in {**dict(nets.target_backbone.named_parameters()), **dict(nets.target_backbone.named_buffers())}.items()
    }
    update_target(target_pairs(nets.online_modules(), nets.target_modules()), tau=tau)
    after = {**dict(nets.target_backbone.named_parameters()), **dict(nets.target_backbone.named_buffers())}
    for name, value in after.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * online[name])
        else:
            assert torch.equal(value, online[name])  # the batch counter is copied
    assert "bn1.running_mean" in after


def test_tau_one_keeps_target_and_tau_zero_copies_online():
    nets = small_networks()
    with torch.no_grad():
        for p in nets.backbone.parameters():
            p.add_(1.0)
    frozen = [p.clone() for p in nets.target_backbone.parameters()]
    update_target(target_pairs(nets.online_modules(), nets.target_modules()), tau=1.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, nets.target_backbone.parameters()))
    update_target(target_pairs(nets.online_modules(), nets.target_modules()), tau=0.0)
    assert all(torch.equal(a, b) for a, b in zip(nets.backbone.parameters(), nets.target_backbone.parameters()))


def test_pairs_listed_once_follow_the_online_network_through_training_steps():
    # The training loop lists the pairs once; optimiser steps and batch-norm updates happen in place,
    # so an update made with the old lists must equal one made with lists made afresh.
    nets = small_networks()
    twin = copy.deepcopy(nets)
    pairs = target_pairs(nets.online_modules(), nets.target_modules())
    optimizer = torch.optim.SGD(nets.trainable_parameters(), lr=0.5)
    twin_optimizer = torch.optim.SGD(twin.trainable_parameters(), lr=0.5)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        for n, o in ((nets, optimizer), (twin, twin_optimizer)):
            o.zero_grad()
            n.forward_loss(x, x.flip(-1))[0].backward()
            o.step()
        update_target(pairs, tau=0.5)
        update_target(target_pairs(twin.online_modules(), twin.target_modules()), tau=0.5)
    for a, b in zip([*nets.target_backbone.state_dict().values()], [*twin.target_backbone.state_dict().values()]):
        assert torch.equal(a, b)
    assert nets.target_backbone.bn1.num_batches_tracked.item() == 3


def test_projection_spread_detects_collapse():
    healthy = torch.randn(512, 64)
    collapsed = torch.ones(512, 64) + 1e-4 * torch.randn(512, 64)
    assert float(projection_spread(healthy)) == pytest.approx(1 / 64**0.5, rel=0.1)
    assert float(projection_spread(collapsed)) < 0.01


# bf16 autocast changes speed, not the objective. Stated tolerance: 0.05 on a loss of about 3.6
# (measured difference here: 0.002), loose enough for bf16's 8-bit mantissa, tight enough to catch a
# path that pairs the wrong views (that moves the loss by about 0.25 on this batch).
BF16_LOSS_TOLERANCE = 0.05


def test_bf16_and_fp32_paths_give_the_same_loss_on_one_batch():
    from byol.augment import byol_views
    from byol.knn import autocast_context

    torch.manual_seed(0)
    networks = BYOLNetworks(width=8, projector_hidden=64, projector_dim=16, predictor_hidden=64, head_bn=True)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    view1, view2 = byol_views(images, generator=torch.Generator().manual_seed(0))
    device = torch.device("cpu")
    losses = {}
    for name, bf16, layout in (("fp32", False, torch.contiguous_format), ("bf16", True, torch.channels_last)):
        net = copy.deepcopy(networks).to(memory_format=layout)
        with torch.no_grad(), autocast_context(device, bf16):
            loss, _ = net.forward_loss(view1.contiguous(memory_format=layout), view2.contiguous(memory_format=layout))
        losses[name] = float(loss)
    assert abs(losses["bf16"] - losses["fp32"]) < BF16_LOSS_TOLERANCE, losses
    # ... and the comparison is not vacuous: a different pairing of views moves the loss further.
    with torch.no_grad():
        other, _ = copy.deepcopy(networks).forward_loss(view1, view1.flip(0))
    assert abs(float(other) - losses["fp32"]) > BF16_LOSS_TOLERANCE
