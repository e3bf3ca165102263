"""The DARTS supernet over (op, rule) candidates (BioNAS section 3.3, eq. 10; DARTS section 2.1).

Every edge of every cell holds one module per candidate of the search space -- ``sep_conv_3x3``
learning by ``usf`` and ``sep_conv_3x3`` learning by ``fa`` are two modules with their own
weights -- and outputs their mixture ``sum_k w_k o_k(x)``. The mixing weights ``w`` are an
argument of :meth:`Supernet.forward`, so any strategy can drive the network: DARTS passes the
softmax of the architecture logits it owns gradients for, EG-NAS passes the softmax of sampled
logits. The logits live here as ``nn.Parameter``s (so they are saved with the weights) but
:meth:`Supernet.weight_parameters` leaves them out, which keeps them out of the weight optimiser.

Layout (DARTS ``model_search.py``): stem conv (3C channels) -> ``cells`` cells, reductions at
``cells // 3`` and ``2 * cells // 3`` doubling the channels -> global average pool -> linear.
A cell pre-processes its two inputs to C channels (1x1 ReLUConvBN, or a FactorizedReduce after
a reduction cell), computes ``nodes`` intermediate nodes, each the sum of mixed edges from all
earlier nodes (14 edges for 4 nodes), and concatenates the intermediate nodes. Ops use
``affine=False`` batch norm and pooling candidates are followed by one, as in DARTS. The stem,
the pre-processing layers and the classifier are not searched and learn by backprop.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.candidate import Candidate
from bionas.engine import INITS, initialise_weights
from bionas.errors import ConfigError
from bionas.ops import FactorizedReduce, ReLUConvBN
from bionas.ops.pooling import POOLING_OPS
from bionas.rules.base import FeedbackRule, layer_seed
from bionas.rules.layers import RuleConv2d
from bionas.rules.partitioned import PartitionedFeedback
from bionas.search.genotype import Genotype, derive_genotype, edge_index
from bionas.search.space import SearchSpace, SupernetShape


# a pair of (edges, candidates) mixing-weight tensors: one for normal cells, one for reductions
MixingWeights = tuple[Tensor, Tensor]


def _weighted(y: Tensor, w: Tensor) -> Tensor:
    """``w * y`` for one architecture (``w`` a scalar), or for a population: ``w`` (P,) weights the
    P consecutive chunks of the batch of ``y`` (P*B, ...), chunk ``p`` belonging to architecture ``p``."""
    if w.dim() == 0:
        return w * y
    P = w.shape[0]
    return (y.view(P, -1, *y.shape[1:]) * w.view(P, *([1] * y.dim()))).view(y.shape)


class NotStackable(Exception):
    """An op whose copies cannot be computed side by side as one wider op."""


def _stack(copies: Sequence[nn.Module]) -> nn.Module:
    """One module computing ``copies`` (same structure, own weights and rules) side by side: on an
    input of ``R`` channel blocks it returns their ``R`` outputs as channel blocks.

    Convolutions become grouped convolutions with ``R`` times the groups and channels (block
    diagonal, so no block sees another), batch norms get ``R`` times the channels (statistics are
    per channel anyway), ReLUs stay. Containers must apply their children in sequence: plain
    ``nn.Sequential`` and op classes that declare ``channel_blocks_safe = True``. Anything else
    raises :class:`NotStackable`.
    """
    first, R = copies[0], len(copies)
    if any(type(m) is not type(first) for m in copies):
        raise NotStackable("copies differ in structure")
    if isinstance(first, RuleConv2d):
        if not all(isinstance(m.rule, FeedbackRule) for m in copies) or first.bias is not None:
            raise NotStackable("only bias-free convolutions with feedback rules stack")
        conv = nn.Conv2d(R * first.in_channels, R * first.out_channels, first.kernel_size, first.stride,
                         first.padding, first.dilation, R * first.groups, bias=False, padding_mode=first.padding_mode,
                         device="meta")
        conv.weight = nn.Parameter(torch.cat([m.weight.detach() for m in copies], dim=0))  # (R*out, in/g, k, k)
        return RuleConv2d.from_module(conv, PartitionedFeedback([m.rule for m in copies], first.out_channels))
    if type(first) is nn.BatchNorm2d:
        bn = nn.BatchNorm2d(R * first.num_features, first.eps, first.momentum, first.affine, first.track_running_stats)
        with torch.no_grad():
            for name, tensor in [*bn.named_parameters(), *bn.named_buffers()]:
                parts = [getattr(m, name) for m in copies]
                tensor.copy_(parts[0] if tensor.dim() == 0 else torch.cat(parts))  # num_batches_tracked: shared
        return bn
    if type(first) is nn.ReLU:
        return nn.ReLU(inplace=False)
    if type(first) is nn.Sequential or getattr(type(first), "channel_blocks_safe", False):
        out = copy.deepcopy(first)
        for name, _ in first.named_children():
            setattr(out, name, _stack([m.get_submodule(name) for m in copies]))
        return out
    raise NotStackable(f"{type(first).__name__} does not stack")


class FusedCandidates(nn.Module):
    """``R`` candidates sharing an op but not a rule, computed as one op of ``R`` times the
    channels (see :mod:`bionas.rules.partitioned`): the same function, weights and rules as the
    ``R`` separate modules, in a fraction of the kernel calls."""

    def __init__(self, op: nn.Module, copies: int):
        super().__init__()
        self.op, self.copies = op, copies

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        # x: (N, C, H, W); weights: (R,), or (P, R) for a population -> sum_r w_r (copy r)(x), (N, C, H', W')
        y = self.op(torch.cat([x] * self.copies, dim=1))  # (N, R*C, H', W'); cat keeps channels-last
        N, _, H, W = y.shape
        y = y.view(N, self.copies, -1, H, W)  # (N, R, C, H', W')
        if weights.dim() == 1:
            return (y * weights.view(1, -1, 1, 1, 1)).sum(1)
        P = weights.shape[0]
        return (y.view(P, N // P, self.copies, -1, H, W) * weights.view(P, 1, -1, 1, 1, 1)).sum(2).view(N, -1, H, W)


class MixedEdge(nn.Module):
    """``sum_k w_k o_k(x)`` over the candidates; ``o_k`` is candidate ``k``'s op learning by its rule.

    After :meth:`fuse`, candidates that share an op and learn by feedback rules run as one
    :class:`FusedCandidates`; ``slots[i]`` lists the candidates module ``ops[i]`` computes.
    """

    def __init__(self, candidates: Sequence[Candidate], C: int, stride: int, seed: int,
                 rule_options: dict[str, dict] | None = None):
        super().__init__()
        rule_options = rule_options or {}
        self.candidates = tuple(candidates)
        self.ops = nn.ModuleList()
        for k, candidate in enumerate(candidates):
            op = candidate.build(C, stride, affine=False, seed=layer_seed(seed, k),
                                 **rule_options.get(candidate.rule, {}))
            if candidate.op in POOLING_OPS:  # DARTS: pooling outputs are not normalised otherwise
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self.ops.append(op)
        self.slots: list[tuple[int, ...]] = [(k,) for k in range(len(self.candidates))]

    def fuse(self) -> None:
        """Stack every group of two or more candidates with the same op and feedback rules."""
        groups: dict[str, list[int]] = {}
        for k, candidate in enumerate(self.candidates):
            groups.setdefault(candidate.op, []).append(k)
        ops, slots, done = [], [], set()
        for k in range(len(self.candidates)):
            if k in done:
                continue
            group = groups[self.candidates[k].op]
            fused = None
            if len(group) > 1:
                try:
                    fused = FusedCandidates(_stack([self.ops[j] for j in group]), len(group))
                except NotStackable:
                    fused = None
            if fused is None:
                ops.append(self.ops[k])
                slots.append((k,))
                done.add(k)
            else:
                ops.append(fused)
                slots.append(tuple(group))
                done.update(group)
        self.ops, self.slots = nn.ModuleList(ops), slots

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        # x: (N, C, H, W); weights: (K,), or (P, K) for a population of P architectures, each
        # owning N/P consecutive images -> (N, C, H/stride, W/stride)
        out = 0
        for op, slot in zip(self.ops, self.slots):
            if isinstance(op, FusedCandidates):
                out = out + op(x, weights[..., list(slot)])
            else:
                out = out + _weighted(op(x), weights[..., slot[0]])
        return out


class SearchCell(nn.Module):
    """One DARTS search cell with a :class:`MixedEdge` on each of its ``edges_per_cell`` edges."""

    def __init__(self, candidates: Sequence[Candidate], nodes: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, seed: int, rule_options: dict[str, dict] | None = None):
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedEdge(candidates, C, 2 if reduction and source < 2 else 1, layer_seed(seed, e), rule_options)
            for e, (_, source) in enumerate(edge_index(nodes))
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
        # s0, s1: outputs of the two previous cells; weights: (edges, K) or (P, edges, K)
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # each (B, C, H, W)
        offset = 0
        for _ in range(self.nodes):
            node = sum(self.edges[offset + j](h, weights[..., offset + j, :]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)  # (B, nodes * C, H', W')


class Supernet(nn.Module):
    """The search network of a :class:`~bionas.search.space.SearchSpace`.

    Args:
        space: the candidates of every edge, and the default cell structure.
        in_channels, num_classes: of the dataset.
        seed: seeds the architecture logits, the weight initialisation and every rule's random
            feedback (each candidate's from its own stream), so two supernets built with the same
            seed are identical whatever the global RNG state.
        shape: overrides ``space.supernet`` (channels, cells, stem multiplier); the number of
            nodes must stay the space's, since the space's genotypes have that many.
        rule_options: ``{rule: {option: value}}`` passed to the rules (e.g. ``{"usf": {"scale": 1.0}}``).
        init: ``"xavier"`` (Glorot-uniform weights, as the BioNAS paper) or ``"torch"`` (PyTorch's
            default Kaiming-uniform), both drawn from the seeded generator.
        fuse: run the candidates of an edge that share an op (``sep_conv_3x3`` with ``fa``,
            ``usf``, ...) as one grouped op (:class:`FusedCandidates`): the same function,
            weights, rules and gradients in a quarter of the kernel calls. Built unfused first, so
            both forms hold the same values for the same seed. Off by default: on a CPU (oneDNN)
            grouped convolutions are slower than separate ones at search sizes (measured:
            2x faster at 4 channels and batch 2, 1.3x slower at 16 channels, 5 cells, batch 32);
            whether it pays on a GPU, where small kernels are launch-bound, is unmeasured.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, seed: int = 0,
                 shape: SupernetShape | None = None, rule_options: dict[str, dict] | None = None,
                 init: str = "xavier", fuse: bool = False):
        super().__init__()
        if init not in INITS:
            raise ConfigError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        self.space = space
        self.shape = shape = shape or space.supernet
        C, E, K = shape.channels, shape.edges_per_cell, len(space.candidates)
        if shape.nodes != space.supernet.nodes:
            raise ConfigError(f"search space {space.name!r} has {space.supernet.nodes} nodes per cell, the supernet "
                              f"shape {shape.nodes}; change supernet.nodes in the space file instead")
        if C % 2:
            raise ConfigError(f"supernet channels must be even (factorized reductions halve them), got {C}")
        C_curr = shape.stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(shape.cells):
            reduction = i in shape.reduction_cells
            if reduction:
                C_curr *= 2
            self.cells.append(SearchCell(space.candidates, shape.nodes, C_prev_prev, C_prev, C_curr, reduction,
                                         reduction_prev, layer_seed(seed, 1000 + i), rule_options))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, shape.nodes * C_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        gen = torch.Generator().manual_seed(layer_seed(seed, 0))
        # DARTS: logits drawn 1e-3 * N(0, 1), so the initial mixture is nearly uniform
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(E, K, generator=gen))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(E, K, generator=gen))
        initialise_weights(self, init, gen)
        if fuse:
            for cell in self.cells:
                for edge in cell.edges:
                    edge.fuse()

    # --- parameters -----------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits ``[alpha_normal, alpha_reduce]``, each (edges, candidates)."""
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the architecture logits (what the weight optimiser trains)."""
        return (p for _, p in self.named_weight_parameters())

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def mixing_weights(self) -> MixingWeights:
        """Softmax over candidates of the logits: ``(normal, reduce)``, each (edges, candidates)."""
        return F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1)

    def genotype(self, weights: MixingWeights | None = None) -> Genotype:
        """The DARTS-derived genotype of ``weights`` (default: the current mixing weights)."""
        normal, reduce = weights if weights is not None else self.mixing_weights()
        return derive_genotype(self.space, normal.detach().double().cpu().numpy(),
                               reduce.detach().double().cpu().numpy())

    # --- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor, weights: MixingWeights | None = None) -> Tensor:
        """Logits (B, classes) of images ``x`` (B, C_in, H, W) under mixing weights ``weights``
        (``(normal, reduce)``, each (edges, candidates); default: softmax of the logits).

        A population: weights of shape (P, edges, candidates) score P architectures on the same
        images in one pass and return (P, B, classes). The stem runs once; batch norms inside
        the cells must then normalise each architecture's images separately
        (:func:`population_batchnorm`) in training mode.
        """
        normal, reduce = weights if weights is not None else self.mixing_weights()
        E, K = self.alpha_normal.shape
        if normal.shape[-2:] != (E, K) or reduce.shape != normal.shape or normal.dim() not in (2, 3):
            raise ValueError(f"mixing weights must be two ({E}, {K}) tensors (or (P, {E}, {K}) for a "
                             f"population), got {tuple(normal.shape)} and {tuple(reduce.shape)}")
        s0 = s1 = self.stem(x)  # (B, 3C, H, W)
        P = normal.shape[0] if normal.dim() == 3 else 0
        if P:
            s0 = s1 = torch.cat([s0] * P)  # (P*B, 3C, H, W): architecture p owns chunk p
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        logits = self.classifier(self.pool(s1).flatten(1))  # (B, classes) or (P*B, classes)
        return logits.view(P, -1, logits.shape[-1]) if P else logits


class _PopulationBatchNorm:
    """A batch norm's forward that normalises each of ``P`` consecutive chunks of the batch with
    that chunk's own statistics (what ``P`` separate forward passes would do), without touching
    the running statistics."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, population: int):
        self.bn, self.population = bn, population

    def __call__(self, x: Tensor) -> Tensor:
        bn, P = self.bn, self.population
        xv = x.view(P, -1, *x.shape[1:])  # (P, B, C, H, W)
        mean = xv.mean(dim=(1, 3, 4), keepdim=True)
        var = xv.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
        y = ((xv - mean) * torch.rsqrt(var + bn.eps)).view(x.shape)
        if bn.affine:
            y = y * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        return y


@contextmanager
def population_batchnorm(model: Supernet, population: int) -> Iterator[None]:
    """Inside the block, every batch norm of ``model``'s cells uses per-architecture batch
    statistics for a population forward of ``population`` architectures (training mode)."""
    bns = [m for m in model.cells.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.forward = _PopulationBatchNorm(bn, population)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward
