"""Optimisers: SGD, Adam, AdamW from torch, and LARS (the field's choice for BYOL, not in torch).

Biases and batch-norm weights (1-D tensors) get no weight decay and, under LARS, no layer-wise
adaptation, as in solo-learn and the BYOL paper.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight tensor is scaled by eta·‖w‖ / (‖g‖ + wd·‖w‖)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02, eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["lars"]:
                    p_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    trust = group["eta"] * p_norm / (g_norm + group["weight_decay"] * p_norm + group["eps"])
                    trust = torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    d_p = (d_p + group["weight_decay"] * p) * trust
                else:
                    d_p = d_p + group["weight_decay"] * p
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d_p.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def build_optimizer(config: TrainConfig, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The config's optimiser over `parameters`; 1-D tensors (biases, norms) skip decay and LARS scaling."""
    decayed = [p for p in parameters if p.ndim > 1]
    plain = [p for p in parameters if p.ndim <= 1]
    lr, wd = config.effective_lr, config.weight_decay
    groups = [{"params": decayed, "weight_decay": wd}, {"params": plain, "weight_decay": 0.0}]
    if config.optimizer == "lars":
        groups[1]["lars"] = False
        return LARS(groups, lr=lr, momentum=config.momentum, weight_decay=wd)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
