"""One torchrun process of tests/test_distributed.py: `python -m byol ARGS`, then two things to check.

The tests start this file under torchrun in place of `-m byol`. It runs the same command line
(`byol.cli.main`); afterwards each process
- writes the state dict of the networks it trained (online and target, with batch-norm buffers) to
  OUT/rank-<RANK>.pt, so a test can assert that every process ended with the same weights;
- passes its half of a fixed batch through `CpuSyncBatchNorm` and writes output, gradients and
  running statistics to OUT/batch-norm-<RANK>.pt, so a test can compare them with batch norm over
  the whole batch (done here because these processes already paid for importing torch).

Usage: distributed_worker.py OUT byol-arguments...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from byol import cli, model
from byol.distributed import CpuSyncBatchNorm


def batch_norm_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of 12 (3 channels, 5×5), batch-norm weight and bias, and the gradient flowing back."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 5, 5, generator=generator) * 3 + 1
    upstream = torch.randn(12, 3, 5, 5, generator=generator)
    return x, torch.rand(3, generator=generator) + 0.5, torch.randn(3, generator=generator), upstream


def probe_batch_norm(out: Path, rank: int) -> None:
    """Batch norm on this process's half of the batch, synchronised with the other process."""
    dist.init_process_group("gloo", init_method=f"file://{out / 'batch-norm-store'}", rank=rank, world_size=2)
    try:
        x, weight, bias, upstream = batch_norm_inputs()
        bn = torch.nn.BatchNorm2d(3)
        bn.weight.data.copy_(weight)
        bn.bias.data.copy_(bias)
        bn = CpuSyncBatchNorm.convert(bn, dist.group.WORLD)
        half = slice(rank * 6, (rank + 1) * 6)
        part = x[half].clone().requires_grad_()
        y = bn(part)
        (y * upstream[half]).sum().backward()
        torch.save(
            {
                "y": y.detach(),
                "grad_x": part.grad,
                "grad_weight": bn.weight.grad,
                "grad_bias": bn.bias.grad,
                "running_mean": bn.running_mean,
                "running_var": bn.running_var,
            },
            out / f"batch-norm-{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def main() -> int:
    out, args = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ["RANK"])
    made: list[model.BYOLNetworks] = []
    build = model.BYOLNetworks.from_config

    def recording(config):  # train() builds its networks through this classmethod
        networks = build(config)
        made.append(networks)
        return networks

    model.BYOLNetworks.from_config = staticmethod(recording)
    code = cli.main(args)
    out.mkdir(parents=True, exist_ok=True)
    if made:
        state = {k: v.detach().cpu().clone() for k, v in made[-1].state_dict().items()}
        torch.save(state, out / f"rank-{rank}.pt")
    probe_batch_norm(out, rank)
    return code


if __name__ == "__main__":
    sys.exit(main())
