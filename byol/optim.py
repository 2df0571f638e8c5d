"""Optimisers: SGD, Adam, AdamW from torch, and LARS (the field's choice for BYOL, not in torch).

Biases and batch-norm weights (1-D tensors) get no weight decay and, under LARS, no layer-wise
adaptation, as in solo-learn and the BYOL paper.

LARS updates every tensor of a parameter group with a handful of `torch._foreach_*` calls instead of
a Python loop over ~60 tensors: on a GPU the loop issued about 660 small kernels per step, each
waiting its turn on the host. The per-tensor state stays `{"momentum_buffer": tensor}`, so
checkpoints written by either form resume with the other.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .config import TrainConfig
from .model import BYOLNetworks


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight tensor is scaled by eta·‖w‖ / (‖g‖ + wd·‖w‖)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02, eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd = group["weight_decay"]
            # d = g + wd·w (a fresh list: the gradients themselves stay untouched)
            updates = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
            if group["lars"]:
                torch._foreach_mul_(updates, _trust_ratios(params, grads, wd, group["eta"], group["eps"]))
            states = [self.state[p] for p in params]
            if all("momentum_buffer" in s for s in states):
                buffers = [s["momentum_buffer"] for s in states]
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, updates)
            else:  # the first step (or a group that gained gradients): buffers start as the update
                for s, u in zip(states, updates):
                    if "momentum_buffer" in s:
                        s["momentum_buffer"].mul_(group["momentum"]).add_(u)
                    else:
                        s["momentum_buffer"] = u.clone()
                buffers = [s["momentum_buffer"] for s in states]
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):  # a device tensor (the CUDA graph's): read on the device, never on the host
                torch._foreach_sub_(params, torch._foreach_mul(buffers, lr))
            else:
                torch._foreach_add_(params, buffers, alpha=-lr)


def _trust_ratios(params: list[torch.Tensor], grads: list[torch.Tensor], wd: float, eta: float, eps: float) -> list[torch.Tensor]:
    """LARS's per-tensor scale eta·‖w‖ / (‖g‖ + wd·‖w‖ + eps), or 1 where either norm is zero.

    All norms in two foreach calls and one vector expression, left on the device (no host sync).
    """
    p_norm = torch.stack(torch._foreach_norm(params))
    g_norm = torch.stack(torch._foreach_norm(grads))
    trust = eta * p_norm / (g_norm + wd * p_norm + eps)
    trust = torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
    return list(trust.unbind())


def build_optimizer(
    config: TrainConfig,
    parameters: list[nn.Parameter],
    device: torch.device | None = None,
    predictor_parameters: Iterable[nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """The config's optimiser over `parameters`; 1-D tensors (biases, norms) skip decay and LARS scaling.

    With `config.predictor_lr_scale` other than 1, the tensors also in `predictor_parameters` get groups
    of their own whose learning rate is that multiple of the rest's (`group_learning_rates`). At 1 there
    are two groups, as there always were, so every saved optimiser state still loads.

    With `config.cuda_fast` or `config.cuda_graph` on a CUDA device, torch's fused kernels step SGD, Adam
    and AdamW: they keep their step counts on the device and take the learning rate as a device
    tensor, which a captured step needs. LARS does both in its plain form.
    """
    lr, wd = config.effective_lr, config.weight_decay
    plain_extra = {"lars": False} if config.optimizer == "lars" else {}

    def decayed_and_plain(share: list[nn.Parameter], **extra: float) -> list[dict]:
        return [
            {"params": [p for p in share if p.ndim > 1], "weight_decay": wd, **extra},
            {"params": [p for p in share if p.ndim <= 1], "weight_decay": 0.0, **plain_extra, **extra},
        ]

    faster = {id(p) for p in predictor_parameters} if config.predictor_lr_scale != 1 else set()
    groups = decayed_and_plain([p for p in parameters if id(p) not in faster])
    if faster:
        groups += decayed_and_plain([p for p in parameters if id(p) in faster], lr_scale=config.predictor_lr_scale)
    on_cuda = device is not None and device.type == "cuda"
    fused = {"fused": True} if on_cuda and (config.cuda_fast or config.cuda_graph) else {}
    # Adam and AdamW refuse to be captured unless built `capturable` (SGD has no such flag).
    adam_extra = {**fused, "capturable": True} if on_cuda and config.cuda_graph else fused
    if config.optimizer == "lars":
        optimizer = LARS(groups, lr=lr, momentum=config.momentum, weight_decay=wd)
    elif config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=config.momentum, **fused)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, **adam_extra)
    elif config.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr, **adam_extra)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    set_learning_rate(optimizer, lr)  # the predictor's groups start at their multiple too
    return optimizer


def optimizer_for(config: TrainConfig, networks: BYOLNetworks, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The config's optimiser over the networks' trainable tensors, the predictor's at its multiple: what
    training uses (and what the time estimate and the speed benchmark time)."""
    return build_optimizer(config, networks.trainable_parameters(), device, networks.predictor.parameters())


def group_learning_rates(optimizer: torch.optim.Optimizer, lr: float) -> list[float]:
    """Each group's learning rate when the schedule says `lr`: the predictor's groups take their multiple."""
    return [lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate for the schedule's `lr` (the captured step fills device tensors instead: graph_step.py)."""
    for group, group_lr in zip(optimizer.param_groups, group_learning_rates(optimizer, lr)):
        group["lr"] = group_lr
