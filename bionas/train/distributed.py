"""Data-parallel training under ``torchrun``: process group, global batch norm, reductions.

``torchrun --nproc_per_node N -m bionas train ...`` starts N processes; each reads its ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment. Every rank builds the same network from
the same seed -- so the learning rules' random feedback tensors are identical everywhere, and
brSF, which redraws its feedback once per forward pass from its own generator, stays in step
because every rank runs the same number of forward passes -- then ``DistributedDataParallel``
averages the weight gradients. Only rank 0 writes files.

Batch statistics: with plain ``BatchNorm2d`` each rank would normalise over its own share of the
batch, which changes the maths with the number of processes. ``sync_batchnorm`` (the default)
normalises over the whole global batch instead (torch's ``SyncBatchNorm`` on CUDA, which needs
it; :class:`GlobalBatchNorm2d` elsewhere), so N processes compute what one process computes on
the same global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bionas.errors import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world


def from_environment() -> Context:
    """The torchrun context (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    return Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(context: Context, device: torch.device) -> None:
    """Join the process group: nccl on CUDA, gloo on CPU."""
    if context.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=context.rank, world_size=context.world)


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, context: Context) -> list[float]:
    """Sum ``values`` over the ranks (returned as they are in one process)."""
    if not context.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the backward sums the ranks' gradients the same way."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics cover the global batch of all ranks.

    Per channel, the ranks' sums of ``x`` and ``x^2`` and their pixel counts are summed with
    an all-reduce whose backward sums the gradients of every rank the same way, so forward and
    backward equal those of ``BatchNorm2d`` on the concatenated batch:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance, and the running
    variance updated with the unbiased one. Works on any backend
    (torch's ``SyncBatchNorm`` needs CUDA). Statistics are computed in float32.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x if x.dtype == torch.float64 else x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        stats = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count])  # (2C + 1,)
        stats = _AllReduceSum.apply(stats)
        C, n = x.shape[1], stats[-1]
        mean = stats[:C] / n
        var = stats[C:2 * C] / n - mean * mean  # biased, as BatchNorm normalises
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm2d`` in ``module`` normalised over the global batch, keeping its parameters and buffers."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if type(module) is nn.BatchNorm2d:
        # same parameters, buffers, dtype and device; only the training-mode forward differs
        module.__class__ = GlobalBatchNorm2d
        return module
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child, device))
    return module


def wrap(model: nn.Module, device: torch.device, sync_buffers: bool) -> nn.Module:
    """``DistributedDataParallel(model)``; ``sync_buffers=False`` skips broadcasting the buffers
    from rank 0 before each forward (needless when every rank computes the same ones).

    The parameters of layers with a local rule (hebbian, pc) never get a loss gradient; DDP is
    told to ignore them (it would wait for their gradients forever), and the rules keep them in
    step themselves by summing their statistics over the ranks."""
    import inspect

    from bionas import rules

    local = [f"{name}.{p}" if name else p for name, layer in rules.rule_layers(model)
             if layer.rule.kind == "local" for p, _ in layer.named_parameters(recurse=False)]
    if local:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, local)
    ddp = nn.parallel.DistributedDataParallel
    kwargs = {"device_ids": [device.index] if device.type == "cuda" else None}
    if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
        kwargs["forward_sync_buffers"] = sync_buffers
    else:
        kwargs["broadcast_buffers"] = sync_buffers
    return ddp(model, **kwargs)


def check_batch(global_batch: int, context: Context) -> None:
    if global_batch % context.world:
        raise ConfigError(f"the batch size ({global_batch}) is the global batch and must be divisible by the "
                          f"{context.world} processes; change --batch-size or --nproc_per_node")


__all__ = ["Context", "from_environment", "setup", "teardown", "all_reduce_sum", "convert_batchnorm",
           "GlobalBatchNorm2d", "check_batch", "wrap"]
