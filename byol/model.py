"""The networks and the objective: CIFAR ResNet-18, MLP heads, the online/target pair, BYOL's loss.

Small parts that compose (lightly's habit): `resnet18_cifar`, `mlp_head`, `byol_loss`,
`target_pairs`, `update_target` and `projection_spread` are plain functions; `BYOLNetworks` only holds the five
modules together so they can be moved, saved and loaded as one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1


class ResNet18Backbone(nn.Module):
    """torchvision's ResNet-18 with the CIFAR stem: 3×3 stride-1 first conv, no max-pool, no classifier.

    Built from torchvision's own `BasicBlock` with the same attribute names as
    `torchvision.models.resnet18`, so its state dict reads like the standard one; `width` scales every
    stage (64 = the standard network, 16 = a quarter as wide, for CPUs). Output: `8 * width` features.
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.out_dim = 8 * width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_ch = width
        stages = []
        for i, stride in enumerate((1, 2, 2, 2)):
            out_ch = width * 2**i
            downsample = None
            if stride != 1 or in_ch != out_ch:
                downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))
            stages.append(nn.Sequential(BasicBlock(in_ch, out_ch, stride, downsample), BasicBlock(out_ch, out_ch)))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet18_cifar(width: int = 64) -> ResNet18Backbone:
    return ResNet18Backbone(width)


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """BYOL's projector/predictor: Linear -> [BatchNorm] -> ReLU -> Linear.

    With batch_norm=False the first linear gets a bias instead; this is the switch of the collapse
    experiment (BYOL without batch norm in its heads tends to a constant output).
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers)


class BYOLNetworks(nn.Module):
    """Online backbone+projector+predictor and the target backbone+projector (an EMA copy)."""

    def __init__(self, width: int, projector_hidden: int, projector_dim: int, predictor_hidden: int, head_bn: bool):
        super().__init__()
        self.backbone = resnet18_cifar(width)
        self.projector = mlp_head(self.backbone.out_dim, projector_hidden, projector_dim, head_bn)
        self.predictor = mlp_head(projector_dim, predictor_hidden, projector_dim, head_bn)
        # The target starts as an exact copy and is never touched by the optimiser.
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    @classmethod
    def from_config(cls, config) -> "BYOLNetworks":
        return cls(config.width, config.projector_hidden, config.projector_dim, config.predictor_hidden, config.head_bn)

    def online_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projector]

    def target_modules(self) -> list[nn.Module]:
        return [self.target_backbone, self.target_projector]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projector.parameters(), *self.predictor.parameters()]

    def forward_loss(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BYOL's symmetric loss for a batch of view pairs, and the online projections (for monitoring).

        Both views go through each network as one batch (half the kernel launches, and batch norm sees
        both views, as in byol-pytorch and solo-learn).
        """
        n = view1.shape[0]
        both = torch.cat([view1, view2])
        online_proj = self.projector(self.backbone(both))
        prediction = self.predictor(online_proj)
        with torch.no_grad():
            target_proj = self.target_projector(self.target_backbone(both))
        p1, p2 = prediction[:n], prediction[n:]
        z1, z2 = target_proj[:n], target_proj[n:]
        # Each view's prediction is compared with the target projection of the *other* view.
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return loss, online_proj.detach()


def networks_on(config, device: torch.device) -> tuple[BYOLNetworks, torch.memory_format]:
    """The config's networks on `device` in the config's memory layout, and that layout (the inputs must match).

    Every place that trains or times a step builds its networks here, so what the benchmarks and the time
    estimate measure is what a run does."""
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    return BYOLNetworks.from_config(config).to(device, memory_format=memory_format), memory_format


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2·cos(prediction, target), averaged over the batch; in [0, 4]. Targets carry no gradient."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


@dataclass(frozen=True)
class TargetPairs:
    """The target's tensors beside the online tensors they follow, listed once per training.

    Walking ~130 parameters and buffers on every step costs host time that a GPU spends idle. List
    them after the networks have their final device, memory format and batch-norm kind: moving a
    module replaces its buffers, which would leave these lists pointing at the old ones.
    """

    target_float: list[torch.Tensor]
    online_float: list[torch.Tensor]
    target_int: list[torch.Tensor]  # batch norm's batch counters: copied, since they cannot be averaged
    online_int: list[torch.Tensor]


def target_pairs(online: list[nn.Module], target: list[nn.Module]) -> TargetPairs:
    """Pair every parameter and buffer of the target modules with its online twin."""
    pairs = TargetPairs([], [], [], [])
    for o_mod, t_mod in zip(online, target):
        for o, t in zip([*o_mod.parameters(), *o_mod.buffers()], [*t_mod.parameters(), *t_mod.buffers()]):
            floating = t.dtype.is_floating_point
            (pairs.target_float if floating else pairs.target_int).append(t)
            (pairs.online_float if floating else pairs.online_int).append(o.detach())
    return pairs


@torch.no_grad()
def update_target(pairs: TargetPairs, tau: float | torch.Tensor) -> None:
    """target <- tau·target + (1 - tau)·online, for parameters and batch-norm running statistics.

    One fused `_foreach_lerp_` call for all floating tensors and one `_foreach_copy_` for the integer
    batch counters, instead of a Python loop over ~130 tensors. `tau` may be a 0-d device tensor (the
    CUDA graph's, see graph_step.py): foreach lerp would read it on the host, so it is a multiply and
    an add there.
    """
    if pairs.target_float and isinstance(tau, torch.Tensor):
        torch._foreach_mul_(pairs.target_float, tau)
        torch._foreach_add_(pairs.target_float, torch._foreach_mul(pairs.online_float, 1.0 - tau))
    elif pairs.target_float:
        torch._foreach_lerp_(pairs.target_float, pairs.online_float, 1.0 - tau)
    if pairs.target_int:
        torch._foreach_copy_(pairs.target_int, pairs.online_int)


def projection_spread(projections: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of L2-normalised projections, as a 0-d tensor on their device: ~1/sqrt(d)
    when healthy, ~0 when collapsed."""
    z = F.normalize(projections.detach().float(), dim=-1)
    return z.std(dim=0).mean()
