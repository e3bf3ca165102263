"""Data-parallel runs under ``torchrun``: process group, global batch norm, reductions.

``torchrun --nproc_per_node N -m bionas train ...`` (or ``... search ...``) starts N processes; each reads its ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment. Every rank builds the same network from
the same seed -- so the learning rules' random feedback tensors are identical everywhere, and
brSF, which redraws its feedback once per forward pass from its own generator, stays in step
because every rank runs the same number of forward passes -- then ``DistributedDataParallel``
averages the weight gradients (the search, whose steps differentiate through unrolled weights
and architecture logits, averages them itself with :func:`average_gradients`). Only rank 0
writes files.

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


def device_for(name: str, context: Context) -> torch.device:
    """The device ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); under torchrun on CUDA
    without an index, the local rank's GPU."""
    from bionas.engine import resolve_device

    device = resolve_device(name)
    if context.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", context.local_rank)
    return device


def setup(context: Context, device: torch.device) -> None:
    """Join the process group: nccl on CUDA, gloo on CPU."""
    if context.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=context.rank, world_size=context.world)


def teardown(context: Context) -> None:
    """Leave the process group once every rank has got here: a rank that destroys its gloo group
    while a peer is still working can abort with "terminate called without an active exception"."""
    if context.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, context: Context) -> list[float]:
    """Sum ``values`` over the ranks (returned as they are in one process)."""
    if not context.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def average_gradients(grads: list[Tensor | None], context: Context) -> list[Tensor | None]:
    """The mean over the ranks of each gradient (``None`` stays ``None``; the pattern of
    ``None`` is the same on every rank, as every rank runs the same graph), in one all-reduce.

    With each rank's loss the mean over its equal share of the global batch and batch norm over
    the global batch (:class:`GlobalBatchNorm2d`), the mean of the ranks' gradients is the
    gradient of the one-process loss on the global batch -- for every derivative a search step
    takes, including the double backward of second-order DARTS (the all-reduce is linear and
    self-adjoint, so its derivative of any order is itself).
    """
    if not context.distributed:
        return grads
    present = [g for g in grads if g is not None]
    if not present:
        return grads
    flat = torch.cat([g.detach().reshape(-1).to(torch.float64) for g in present])
    dist.all_reduce(flat)
    flat /= context.world
    out, offset = [], 0
    for g in grads:
        if g is None:
            out.append(None)
            continue
        out.append(flat[offset:offset + g.numel()].view_as(g).to(g.dtype))
        offset += g.numel()
    return out


def check_in_step(tensors: list[Tensor], context: Context, what: str) -> None:
    """Raise if the ranks' copies of ``tensors`` differ (two all-reduces of two numbers).

    Every rank applies the same averaged gradients to the same values, so their parameters
    must be identical; a difference means a rank computed something the others did not."""
    if not context.distributed:
        return
    with torch.no_grad():
        flat = [t.detach().double().reshape(-1) for t in tensors]
        local = torch.stack([sum(f.sum() for f in flat), sum((f * f).sum() for f in flat)])
        high, low = local.clone(), -local
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MAX)
        gap = float((high + low).abs().max())
    if gap > 1e-9 * (1.0 + float(high.abs().max())):
        raise RuntimeError(f"the ranks' {what} differ (checksum gap {gap:.3g}): a rank computed something the "
                           "others did not; rerun in one process to check the run, and report it")


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the backward sums the ranks' gradients the same way, by the same
    function, so it is differentiable again (second-order DARTS differentiates through it)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad.contiguous())


def global_moments(x: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``dims`` (kept as size-1 dimensions) across the
    global batch of all ranks, and the number of values each statistic covers; differentiable
    to any order.

    Each rank computes its own mean and centred sum of squares (two passes, as ``BatchNorm2d``
    does) and the ranks' triples are combined exactly (Chan et al.'s parallel variance:
    ``M2 = sum_r M2_r + n_r (mean_r - mean)^2``) after one all-reduce that gathers them. The
    one-pass ``E[x^2] - mean^2`` loses most of its digits in float32 for channels whose mean is
    large against their spread, which second-order DARTS then amplified into weight updates off
    by percent (results/README.md).
    """
    n_local = x.numel() // max(1, x.mean(dims, keepdim=True).numel())
    if n_local:
        mean = x.mean(dims, keepdim=True)
        m2 = (x - mean).pow(2).sum(dims, keepdim=True)
    else:  # a rank with no images this batch contributes nothing
        shape = [1 if d in [i % x.dim() for i in dims] else s for d, s in enumerate(x.shape)]
        mean = m2 = x.new_zeros(shape)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return mean, m2 / max(n_local, 1), x.new_tensor(float(n_local))
    world, rank, k = dist.get_world_size(), dist.get_rank(), mean.numel()
    local = torch.cat([mean.flatten(), m2.flatten(), x.new_tensor([float(n_local)])])  # (2k + 1,)
    slots = torch.cat([local.new_zeros(rank * (2 * k + 1)), local, local.new_zeros((world - rank - 1) * (2 * k + 1))])
    table = _AllReduceSum.apply(slots).view(world, 2 * k + 1)  # row r: rank r's triple
    means, m2s, counts = table[:, :k], table[:, k:2 * k], table[:, 2 * k:]
    n = counts.sum()
    g_mean = (counts * means).sum(0) / n
    g_m2 = (m2s + counts * (means - g_mean).pow(2)).sum(0)
    return g_mean.view(mean.shape), (g_m2 / n).view(mean.shape), n


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics cover the global batch of all ranks.

    Per channel, the ranks' means, centred sums of squares and pixel counts are combined
    (:func:`global_moments`) through an all-reduce whose backward sums the gradients of every
    rank the same way, so forward and backward equal those of ``BatchNorm2d`` on the
    concatenated batch: ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased
    variance, and the running variance updated with the unbiased one. Works on any backend
    (torch's ``SyncBatchNorm`` needs CUDA and has no double backward). Statistics are computed
    in float32 (float64 for float64 inputs). In one process it is ``BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x if x.dtype == torch.float64 else x.float()
        mean, var, n = global_moments(xf, (0, 2, 3))  # (1, C, 1, 1) each
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().flatten(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach().flatten() * n / (n - 1), alpha=m)
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


__all__ = ["Context", "from_environment", "device_for", "setup", "teardown", "all_reduce_sum", "average_gradients",
           "check_in_step", "global_moments", "convert_batchnorm", "GlobalBatchNorm2d", "check_batch", "wrap"]
