"""The optimisers: LARS's vectorised step follows the per-tensor formula, its state resumes, and the
predictor's learning rate can be a multiple of the rest's."""

from __future__ import annotations

import copy

import pytest
import torch

from byol.config import preset
from byol.model import BYOLNetworks
from byol.optim import LARS, build_optimizer, set_learning_rate


def reference_lars_step(params, buffers, lr, momentum, wd, eta, eps, lars):
    """The LARS update written out one tensor at a time (the textbook form)."""
    for i, p in enumerate(params):
        d = p.grad + wd * p
        if lars:
            p_norm, g_norm = p.norm(), p.grad.norm()
            trust = eta * p_norm / (g_norm + wd * p_norm + eps) if p_norm > 0 and g_norm > 0 else torch.tensor(1.0)
            d = d * trust
        buffers[i] = d.clone() if buffers[i] is None else buffers[i] * momentum + d
        p.data.add_(buffers[i], alpha=-lr)


def random_params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 4), (16,), (3, 3, 2, 2), (5,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    params.append(torch.nn.Parameter(torch.zeros(4, 4)))  # a zero tensor: trust falls back to 1
    return params


@pytest.mark.parametrize("lars", [True, False])
def test_vectorised_lars_matches_the_per_tensor_formula_over_several_steps(lars):
    ours = random_params(0)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    optimizer = LARS([{"params": ours, "lars": lars}], lr=0.3, momentum=0.9, weight_decay=1e-3, eta=0.02)
    buffers = [None] * len(theirs)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, grad in zip(ours, theirs, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        optimizer.step()
        with torch.no_grad():
            reference_lars_step(theirs, buffers, 0.3, 0.9, 1e-3, 0.02, 1e-8, lars)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, buffer in zip(ours, buffers):
        torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], buffer, rtol=1e-5, atol=1e-6)


def test_lars_reads_a_learning_rate_tensor_as_it_reads_a_number():
    # The CUDA graph's step gives the learning rate as a 0-d device tensor, filled before each replay.
    by_number, by_tensor = random_params(3), random_params(3)
    lr = torch.tensor(0.0)
    number_optimizer = LARS([{"params": by_number, "lars": True}], lr=0.3, weight_decay=1e-3)
    tensor_optimizer = LARS([{"params": by_tensor, "lars": True}], lr=lr, weight_decay=1e-3)
    g = torch.Generator().manual_seed(4)
    for step_lr in (0.3, 0.1, 0.05):
        grads = [torch.randn(p.shape, generator=g) for p in by_number]
        for p, q, grad in zip(by_number, by_tensor, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        number_optimizer.param_groups[0]["lr"] = step_lr
        lr.fill_(step_lr)
        number_optimizer.step()
        tensor_optimizer.step()
    for p, q in zip(by_number, by_tensor):
        torch.testing.assert_close(p, q)


def test_lars_skips_tensors_without_gradients():
    params = random_params(2)
    before = [p.detach().clone() for p in params]
    params[0].grad = torch.ones_like(params[0])
    LARS(params, lr=0.1).step()
    assert not torch.equal(params[0], before[0])
    for p, b in zip(params[1:], before[1:]):
        assert torch.equal(p, b) and p not in LARS(params, lr=0.1).state


def test_lars_state_round_trips_and_continues_identically():
    config = preset("cpu", width=4, projector_hidden=16, projector_dim=8, predictor_hidden=16, optimizer="lars")
    torch.manual_seed(0)
    nets = BYOLNetworks.from_config(config)
    optimizer = build_optimizer(config, nets.trainable_parameters())
    x = torch.randn(4, 3, 32, 32)

    def step(n, o):
        o.zero_grad()
        n.forward_loss(x, x.flip(-1))[0].backward()
        o.step()

    step(nets, optimizer)
    twin = copy.deepcopy(nets)
    twin_optimizer = build_optimizer(config, twin.trainable_parameters())
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as if read back from last.pt
    assert all(set(s) == {"momentum_buffer"} for s in twin_optimizer.state.values())
    step(nets, optimizer)
    step(twin, twin_optimizer)
    for a, b in zip(nets.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("switch", ["cuda_fast", "cuda_graph"])
def test_fused_kernels_are_asked_for_only_on_cuda_with_the_switch(switch):
    config = preset("cpu", optimizer="adamw", **{switch: True})
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    assert not build_optimizer(config, params, torch.device("cpu")).defaults.get("fused")
    if torch.cuda.is_available():
        cuda_params = [torch.nn.Parameter(torch.zeros(2, 2, device="cuda"))]
        assert build_optimizer(config, cuda_params, torch.device("cuda")).defaults["fused"]
        assert not build_optimizer(config.replace(**{switch: False}), cuda_params, torch.device("cuda")).defaults.get("fused")
        assert build_optimizer(config, cuda_params, torch.device("cuda")).defaults["capturable"] == (switch == "cuda_graph")


def tiny_networks(config):
    torch.manual_seed(0)
    return BYOLNetworks.from_config(config)


def one_step_moves(config) -> tuple[float, float]:
    """How far one AdamW step moves the backbone's and the predictor's weights (mean absolute change)."""
    nets = tiny_networks(config)
    optimizer = build_optimizer(config, nets.trainable_parameters(), predictor_parameters=nets.predictor.parameters())
    before = copy.deepcopy(nets)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    nets.forward_loss(x, x.flip(-1))[0].backward()
    optimizer.step()

    def moved(now, then) -> float:
        return torch.cat([(a - b).abs().flatten() for a, b in zip(now.parameters(), then.parameters())]).mean().item()

    return moved(nets.backbone, before.backbone), moved(nets.predictor, before.predictor)


TINY = dict(width=4, projector_hidden=16, projector_dim=8, predictor_hidden=16, optimizer="adamw", weight_decay=0.0)
AT_ONE = dict(TINY, predictor_lr_scale=1.0)  # the cpu preset's own multiple is 3


def test_the_predictor_learns_at_its_multiple_and_the_rest_at_the_schedules_rate():
    backbone_1, predictor_1 = one_step_moves(preset("cpu", **AT_ONE))
    backbone_10, predictor_10 = one_step_moves(preset("cpu", predictor_lr_scale=10.0, **TINY))
    assert backbone_10 == pytest.approx(backbone_1, rel=1e-6)
    assert predictor_10 == pytest.approx(10 * predictor_1, rel=0.05)  # Adam's first step is lr·sign(grad), nearly


def test_the_schedule_sets_the_predictors_rate_as_its_multiple():
    config = preset("cpu", predictor_lr_scale=3.0, **TINY)
    nets = tiny_networks(config)
    optimizer = build_optimizer(config, nets.trainable_parameters(), predictor_parameters=nets.predictor.parameters())
    set_learning_rate(optimizer, 0.5)
    predictor = {id(p) for p in nets.predictor.parameters()}
    for group in optimizer.param_groups:
        in_predictor = {id(p) in predictor for p in group["params"]}
        assert len(in_predictor) == 1  # a group holds predictor tensors only, or none
        assert group["lr"] == (1.5 if in_predictor == {True} else 0.5)


def test_at_multiple_one_the_optimiser_keeps_its_two_groups_so_saved_states_still_load():
    config = preset("cpu", **AT_ONE)
    nets = tiny_networks(config)
    saved = build_optimizer(config, nets.trainable_parameters()).state_dict()  # built as before the multiple existed
    optimizer = build_optimizer(config, nets.trainable_parameters(), predictor_parameters=nets.predictor.parameters())
    assert len(optimizer.param_groups) == 2
    optimizer.load_state_dict(saved)
