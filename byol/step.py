"""One BYOL training step: two augmented views of a batch, the loss, an optimiser step, the EMA update.

The training loop (train.py), the time estimate (estimate.py) and the speed benchmark all take this
same step, so what the benchmark measures is what a run does.
"""

from __future__ import annotations

from typing import Callable

import torch

from .augment import VIEW1, VIEW2, ViewSettings, byol_views_batch
from .knn import autocast_context
from .model import BYOLNetworks, TargetPairs, target_pairs, update_target


def training_step(
    networks: BYOLNetworks,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    tau: float | torch.Tensor,
    augment_rng: torch.Generator,
    bf16: bool,
    memory_format: torch.memory_format = torch.contiguous_format,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    pairs: TargetPairs | None = None,
    views: tuple[ViewSettings, ViewSettings] = (VIEW1, VIEW2),
    autocast_cache: bool = True,
    view_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One BYOL step on a uint8 batch: two views, the loss, an optimiser step, the target's EMA update.

    `pairs` are the target/online tensors listed once by the caller (listed here when not given);
    `views` the two views' augmentation settings (`augment.byol_view_settings(config.crop_min_scale)`).
    `view_size` is the views' side in pixels (None: the batch's own size).
    `tau` may be a 0-d device tensor and `autocast_cache` off, as a CUDA graph capture needs (graph_step.py).
    Returns the loss and the online projections, still on the device (reading them synchronises).
    """
    both = byol_views_batch(batch, view_size, generator=augment_rng, views=views).contiguous(memory_format=memory_format)
    view1, view2 = both.chunk(2)
    with autocast_context(batch.device, bf16, cache=autocast_cache):
        loss, projections = (loss_fn or networks.forward_loss)(view1, view2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    update_target(pairs or target_pairs(networks.online_modules(), networks.target_modules()), tau)
    return loss, projections
