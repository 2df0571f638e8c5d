"""Training on several processes (torchrun): the process group and what has to span it.

`torchrun --nproc_per_node N -m byol train ...` starts N copies of the command line, each with
WORLD_SIZE, RANK and LOCAL_RANK in its environment. `join()` turns that into a `World`: it starts
the process group (NCCL when there are GPUs, gloo otherwise) plus a small gloo group for the
CPU-side agreements (stop flags, errors, the checkpoint sent to everyone), so those never wait on a
GPU. Without torchrun `join()` gives `ALONE`, whose helpers do nothing at all: a single-process run
takes exactly the code path and speed it always had.

What a `World` offers the training loop:
- `device_for`: process `LOCAL_RANK` trains on `cuda:LOCAL_RANK` (a config's GPU index is ignored);
- `from_main` / `main_only` / `together`: run something on the main process (or on all) and make a
  failure anywhere a failure everywhere, so no process is left waiting in a collective for a peer
  that has given up;
- `any` (did any process ask to stop?) and `mean` (the loss over all processes);
- `sync_batch_norm` and `data_parallel`: batch norm that computes its statistics over the global
  batch (BYOL relies on batch statistics), and DistributedDataParallel around the loss.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError

T = TypeVar("T")

# Phrases of gloo's errors when the other end of a connection is gone (a crashed or killed peer);
# NCCL reports a dead peer as a DistError once its watchdog times out.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None  # gloo group for CPU-side messages; None when alone

    @property
    def is_main(self) -> bool:
        """The main process (rank 0) alone writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # --- devices ---------------------------------------------------------------------------
    def device_for(self, device: torch.device) -> torch.device:
        """The device this process trains on: GPU `LOCAL_RANK` when the run trains on GPUs."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def group_for(self, device: torch.device) -> Any:
        """The process group for tensors on `device`: NCCL's (the default group) for GPUs, gloo's for CPUs."""
        return None if device.type == "cuda" else self.control

    # --- agreement ---------------------------------------------------------------------------
    def main_only(self, fn: Callable[[], T]) -> T | None:
        """`fn()` on the main process; an error there is raised on every process. Others get None."""
        if not self.distributed:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as caught:  # noqa: BLE001 - sent to the others, then raised here too
                error = caught
        shared = self._broadcast(_portable(error))
        if shared is not None:
            raise error if self.is_main else shared  # the main process keeps its own traceback
        return result

    def from_main(self, fn: Callable[[], T]) -> T:
        """`fn()` on the main process, its result sent to every process (its error raised on every one)."""
        if not self.distributed:
            return fn()
        return self._broadcast(self.main_only(fn))

    def together(self, fn: Callable[[], T], leaders_first: bool = False) -> T:
        """`fn()` on every process; if it fails on any, every process raises the first failure (by rank).

        With `leaders_first`, the first process of each machine runs `fn` before the others do: it
        fills a cache (a download, a decoded data set) that they then read instead of writing it too.
        """
        if not self.distributed:
            return fn()
        leader = self.local_rank == 0
        if leaders_first and not leader:
            dist.barrier(group=self.control)  # wait for the leaders
        result, error = None, None
        try:
            result = fn()
        except Exception as caught:  # noqa: BLE001 - gathered, then raised everywhere
            error = caught
        if leaders_first and leader:
            dist.barrier(group=self.control)  # let the others start
        errors: list[BaseException | None] = [None] * self.world_size
        dist.all_gather_object(errors, _portable(error), group=self.control)
        failed = [rank for rank, e in enumerate(errors) if e is not None]
        if failed:
            raise error if failed[0] == self.rank else errors[failed[0]]  # its own traceback where it failed
        return result

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (a stop asked of one process stops all)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over the processes (gloo has no AVG, so a sum divided)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, group=self.group_for(total.device))
        return total / self.world_size

    def lost_peer(self, error: BaseException) -> bool:
        """Whether `error` says another training process is gone (crashed, killed), not a fault here."""
        if not self.distributed:
            return False
        return isinstance(error, dist.DistError) or any(phrase in str(error) for phrase in _PEER_GONE)

    # --- networks ----------------------------------------------------------------------------
    def sync_batch_norm(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` with every batch norm computing its statistics over all processes' batches.

        Parameters and buffers keep their names and identities, so state dicts and checkpoints do
        not depend on the world size. torch's SyncBatchNorm runs on GPUs only; on CPUs (gloo) the
        same computation is done by `CpuSyncBatchNorm`.
        """
        if not self.distributed:
            return module
        if device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return CpuSyncBatchNorm.convert(module, self.control)

    def data_parallel(self, networks: nn.Module, device: torch.device) -> Callable[..., Any]:
        """BYOL's loss as a callable: `networks.forward_loss` alone, DistributedDataParallel otherwise.

        DDP averages the online networks' gradients over the processes in backward. It makes every
        process start from the main one's weights and buffers, but does not broadcast buffers each
        step: with synchronised batch norm they stay identical everywhere.
        """
        if not self.distributed:
            return networks.forward_loss
        return nn.parallel.DistributedDataParallel(
            _ForwardLoss(networks),
            device_ids=[device] if device.type == "cuda" else None,
            process_group=self.group_for(device),
            forward_sync_buffers=False,
        )

    def _broadcast(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control, device=torch.device("cpu"))
        return box[0]


ALONE = World()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or torch.distributed.run) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def env_rank() -> int:
    """This process's rank from torchrun's environment (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0") or 0) if launched_by_torchrun() else 0


@contextlib.contextmanager
def join() -> Iterator[World]:
    """The `World` of this process: the process group torchrun described, or `ALONE`; left on exit."""
    if not launched_by_torchrun():
        yield ALONE
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started process {local_rank + 1} on this machine, but it has only "
                f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node {torch.cuda.device_count()} "
                "(or CUDA_VISIBLE_DEVICES= to train on the CPU)."
            )
        torch.cuda.set_device(local_rank)  # NCCL binds each process to the GPU current at init
        dist.init_process_group("nccl")
        control = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        control = dist.group.WORLD
    try:
        yield World(dist.get_rank(), dist.get_world_size(), local_rank, control)
    finally:
        dist.destroy_process_group()


def _portable(error: BaseException | None) -> BaseException | None:
    """`error` if it survives pickling (to be sent to the other processes), else a RuntimeError saying it."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any exception type that cannot travel is described instead
        return RuntimeError(f"{type(error).__name__}: {error}")


class _ForwardLoss(nn.Module):
    """`networks.forward_loss` as a module's forward, the shape DistributedDataParallel wraps."""

    def __init__(self, networks: nn.Module):
        super().__init__()
        self.networks = networks

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.networks.forward_loss(view1, view2)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes, differentiable: the gradient of a sum that every process uses is the
    sum of their gradients, so backward all-reduces too."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are summed over all processes of a gloo group (CPUs).

    torch's SyncBatchNorm refuses CPU tensors, so this does the same with two sums (Σx, Σx²) and a
    count all-reduced by `_AllReduceSum`, whose backward all-reduces the gradients: the result is
    the gradient of batch norm over the global batch, as on GPUs. In eval mode, or alone,
    it is plain batch norm. Same parameters and buffers as BatchNorm1d/2d.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        group: Any = None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D to 5D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size(self.group) > 1):
            return super().forward(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = torch.tensor([input.numel() // channels], dtype=torch.float32)
        local = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        total = _AllReduceSum.apply(local, self.group)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)  # biased, as batch norm uses
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        shape = [1, channels] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)

    @classmethod
    def convert(cls, module: nn.Module, group: Any) -> nn.Module:
        """`module` with each BatchNorm replaced by this class, sharing its parameters and buffers."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            synced = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats, group)
            if module.affine:
                synced.weight, synced.bias = module.weight, module.bias
            if module.track_running_stats:
                synced.running_mean, synced.running_var = module.running_mean, module.running_var
                synced.num_batches_tracked = module.num_batches_tracked
            synced.train(module.training)
            return synced
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child, group))
        return module
