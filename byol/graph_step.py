"""The whole training step captured once in a CUDA graph and replayed (the config's `cuda_graph`).

At CIFAR sizes one step is about a thousand small kernels, which Python launches one after another:
the GPU waits for the host between them (about 55% busy on an H200 with the eager step). A CUDA
graph records the step's kernels once and then launches them all with one call.

A graph replays exactly the kernels and memory it recorded, so:
- its inputs are fixed tensors: each batch is copied into one buffer, and τ and each parameter
  group's learning rate are 0-d device tensors filled before each replay (fused SGD/Adam/AdamW and
  our LARS read the learning rate from theirs; `update_target` reads τ);
- its outputs, the loss and the projections, are fixed tensors as well, overwritten by the next
  replay: a caller that keeps one must copy it (the step log stacks them into a new tensor at once);
- the augmentation's generator is registered with the graph, so each replay draws new numbers;
- autocast keeps no weight casts across the capture (`autocast_cache=False`).

The first `eager_steps` steps run eagerly on a side stream, as PyTorch's guide to graphs asks: the
optimiser makes its state there, the augmentation its cached constants, and cuDNN picks its kernels.
The next step is captured, and it and every later one are replays.

For single-process CUDA training (train.py decides). It has never run on a GPU, so it stays off by
default until one measures it.
"""

from __future__ import annotations

import torch

from .augment import ViewSettings
from .model import BYOLNetworks, TargetPairs
from .optim import group_learning_rates, set_learning_rate
from .step import training_step


class GraphedStep:
    """`step(batch, lr, tau) -> (loss, projections)`: the training step, replayed from a CUDA graph."""

    def __init__(
        self,
        networks: BYOLNetworks,
        optimizer: torch.optim.Optimizer,
        augment_rng: torch.Generator,
        bf16: bool,
        memory_format: torch.memory_format,
        pairs: TargetPairs,
        views: tuple[ViewSettings, ViewSettings],
        eager_steps: int = 3,
        view_size: int | None = None,
    ):
        self.networks, self.optimizer, self.augment_rng = networks, optimizer, augment_rng
        self.bf16, self.memory_format, self.pairs, self.views = bf16, memory_format, pairs, views
        self.eager_steps_left, self.view_size = eager_steps, view_size
        self.graph: torch.cuda.CUDAGraph | None = None
        self._side_stream: torch.cuda.Stream | None = None

    def __call__(self, batch: torch.Tensor, lr: float, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None and self.eager_steps_left > 0:
            self.eager_steps_left -= 1
            return self._eager(batch, lr, tau)
        if self.graph is None:
            self._capture(batch)
        self._batch.copy_(batch)
        for group_lr, value in zip(self._lrs, group_learning_rates(self.optimizer, lr)):
            group_lr.fill_(value)
        self._tau.fill_(tau)
        self.graph.replay()
        return self._loss, self._projections

    def _step(self, batch: torch.Tensor, tau: float | torch.Tensor, autocast_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return training_step(
            self.networks,
            self.optimizer,
            batch,
            tau,
            self.augment_rng,
            self.bf16,
            self.memory_format,
            pairs=self.pairs,
            views=self.views,
            autocast_cache=autocast_cache,
            view_size=self.view_size,
        )

    def _eager(self, batch: torch.Tensor, lr: float, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        set_learning_rate(self.optimizer, lr)
        current = torch.cuda.current_stream(batch.device)
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(batch.device)
        self._side_stream.wait_stream(current)
        with torch.cuda.stream(self._side_stream):
            result = self._step(batch, tau, autocast_cache=True)
        current.wait_stream(self._side_stream)
        return result

    def _capture(self, batch: torch.Tensor) -> None:
        self._batch = torch.empty_like(batch)
        # One device tensor per parameter group (the predictor's may take a multiple of the rest's rate).
        self._lrs = [torch.zeros((), device=batch.device) for _ in self.optimizer.param_groups]
        self._tau = torch.zeros((), device=batch.device)
        for group, group_lr in zip(self.optimizer.param_groups, self._lrs):
            group["lr"] = group_lr  # from now on each group reads its tensor
        # Gradients set to None are made anew inside the capture, in the graph's own memory, and each
        # replay then writes them there.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.augment_rng)
        torch.cuda.synchronize(batch.device)
        # "thread_local": in the app, other threads may use the GPU meanwhile (a page computing
        # embeddings); in the default "global" mode their allocations would break this capture or fail
        # themselves. torch.compile's CUDA graphs capture the same way.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._loss, self._projections = self._step(self._batch, self._tau, autocast_cache=False)
        self.graph = graph
