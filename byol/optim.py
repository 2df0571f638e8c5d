"""Optimisers: SGD, Adam, AdamW from torch, and LARS (the field's choice for BYOL, not in torch).

Biases and batch-norm weights (1-D tensors) get no weight decay and, under LARS, no layer-wise
adaptation, as in solo-learn and the BYOL paper.

LARS updates every tensor of a parameter group with a handful of `torch._foreach_*` calls instead of
a Python loop over ~60 tensors: on a GPU the loop issued about 660 small kernels per step, each
waiting its turn on the host. The per-tensor state stays `{"momentum_buffer": tensor}`, so
checkpoints written by either form resume with the other.
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
    config: TrainConfig, parameters: list[nn.Parameter], device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The config's optimiser over `parameters`; 1-D tensors (biases, norms) skip decay and LARS scaling.

    With `config.cuda_fast` or `config.cuda_graph` on a CUDA device, torch's fused kernels step SGD, Adam
    and AdamW: they keep their step counts on the device and take the learning rate as a device
    tensor, which a captured step needs. LARS does both in its plain form.
    """
    decayed = [p for p in parameters if p.ndim > 1]
    plain = [p for p in parameters if p.ndim <= 1]
    lr, wd = config.effective_lr, config.weight_decay
    groups = [{"params": decayed, "weight_decay": wd}, {"params": plain, "weight_decay": 0.0}]
    on_cuda = device is not None and device.type == "cuda"
    fused = {"fused": True} if on_cuda and (config.cuda_fast or config.cuda_graph) else {}
    # Adam and AdamW refuse to be captured unless built `capturable` (SGD has no such flag).
    adam_extra = {**fused, "capturable": True} if on_cuda and config.cuda_graph else fused
    if config.optimizer == "lars":
        groups[1]["lars"] = False
        return LARS(groups, lr=lr, momentum=config.momentum, weight_decay=wd)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **adam_extra)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, **adam_extra)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float | torch.Tensor) -> None:
    """Every group's learning rate: a number, or a 0-d device tensor the captured step reads (graph_step.py)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
