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

import contextlib
from typing import Iterator, Sequence

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.candidate import Candidate
from bionas.distributed import GlobalBatchNorm2d, global_moments
from bionas.engine import INITS, initialise_weights
from bionas.errors import ConfigError
from bionas.ops import FactorizedReduce, ReLUConvBN
from bionas.ops.pooling import POOLING_OPS
from bionas.rules.base import layer_seed
from bionas.rules.convert import options_for
from bionas.genotype import Genotype, derive_genotype, edge_index
from bionas.space import SearchSpace, SupernetShape


# a pair of (edges, candidates) mixing-weight tensors: one for normal cells, one for reductions
MixingWeights = tuple[Tensor, Tensor]


def _weighted(y: Tensor, w: Tensor) -> Tensor:
    """``w * y`` for one architecture (``w`` a scalar), or for a population: ``w`` (P,) weights the
    P consecutive chunks of the batch of ``y`` (P*B, ...), chunk ``p`` belonging to architecture ``p``."""
    if w.dim() == 0:
        return w * y
    P = w.shape[0]
    return (y.view(P, -1, *y.shape[1:]) * w.view(P, *([1] * y.dim()))).view(y.shape)


class PopulationBatchNorm2d(GlobalBatchNorm2d):
    """Batch norm that can also normalise a *population* batch: with ``population = P`` set (by
    :meth:`Supernet.forward` for population weights) and in training mode, each of the ``P``
    consecutive chunks of the batch is normalised by its own statistics -- what ``P`` separate
    forward passes would do -- and the running statistics are left untouched. With
    ``population = 0`` it is ``nn.BatchNorm2d`` (same parameters, buffers and state-dict keys).

    Under ``torchrun`` both modes normalise over the global batch of all ranks (the population
    mode combines each chunk's per-channel moments over the ranks), so a data-parallel search
    computes the one-process statistics."""

    population = 0

    def forward(self, x: Tensor) -> Tensor:
        if not (self.population and self.training):
            return super().forward(x)
        P = self.population
        xv = x.view(P, -1, *x.shape[1:])  # (P, B, C, H, W)
        mean, var, _ = global_moments(xv, (1, 3, 4))  # (P, 1, C, 1, 1) each; over all ranks under torchrun
        y = ((xv - mean) * torch.rsqrt(var + self.eps)).view(x.shape)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


@contextlib.contextmanager
def _as_in_forward(cell: nn.Module) -> Iterator[None]:
    """The recomputation of a checkpointed cell: the same feedback as the forward (no brSF
    redraw), no local-rule update, batch-norm running statistics left as the forward left them."""
    from bionas import rules
    from bionas.search.strategy import no_feedback_redraws, preserved_batchnorm_statistics

    with no_feedback_redraws(cell), preserved_batchnorm_statistics(cell), rules.local_updates(cell, False):
        yield


def _with_population_batchnorm(module: nn.Module) -> None:
    """Replace every ``nn.BatchNorm2d`` below ``module`` by a :class:`PopulationBatchNorm2d`
    holding the same parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = PopulationBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            _with_population_batchnorm(child)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(B, C, H, W) with the channels regrouped: channel ``g * (C / groups) + i`` moves to
    ``i * groups + g`` (ShuffleNet; PC-DARTS section 3.1)."""
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


class MixedEdge(nn.Module):
    """``sum_k w_k o_k(x)`` over the candidates; ``o_k`` is candidate ``k``'s op learning by its rule.

    With ``partial_channels = K > 1`` (PC-DARTS, Xu et al. 2020, section 3.1) the candidates see
    only the first ``C / K`` channels; the other channels bypass them (max-pooled 2x2 on a
    reduction edge), and the output is channel-shuffled so that the next edge sees other channels.
    """

    def __init__(self, candidates: Sequence[Candidate], C: int, stride: int, seed: int,
                 rule_options: dict[str, dict] | None = None, partial_channels: int = 1):
        super().__init__()
        rule_options = rule_options or {}
        self.candidates, self.partial_channels, self.stride = tuple(candidates), partial_channels, stride
        C_op = C // partial_channels
        self.ops = nn.ModuleList()
        for k, candidate in enumerate(candidates):
            op = candidate.build(C_op, stride, affine=False, seed=layer_seed(seed, k),
                                 **options_for(candidate.rule, rule_options))
            if candidate.op in POOLING_OPS:  # DARTS: pooling outputs are not normalised otherwise
                op = nn.Sequential(op, nn.BatchNorm2d(C_op, affine=False))
            self.ops.append(op)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        # x: (N, C, H, W); weights: (K,), or (P, K) for a population of P architectures, each
        # owning N/P consecutive images -> (N, C, H/stride, W/stride)
        K = self.partial_channels
        part = x if K == 1 else x[:, :x.shape[1] // K]
        out = 0
        for k, op in enumerate(self.ops):
            out = out + _weighted(op(part), weights[..., k])
        if K == 1:
            return out
        rest = x[:, x.shape[1] // K:]
        if self.stride == 2:
            rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, rest], dim=1), K)


class SearchCell(nn.Module):
    """One DARTS search cell with a :class:`MixedEdge` on each of its ``edges_per_cell`` edges."""

    def __init__(self, candidates: Sequence[Candidate], nodes: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, seed: int, rule_options: dict[str, dict] | None = None,
                 partial_channels: int = 1):
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedEdge(candidates, C, 2 if reduction and source < 2 else 1, layer_seed(seed, e), rule_options,
                      partial_channels)
            for e, (_, source) in enumerate(edge_index(nodes))
        )

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor, edge_weights: Tensor | None = None) -> Tensor:
        # s0, s1: outputs of the two previous cells; weights: (edges, K) or (P, edges, K);
        # edge_weights (PC-DARTS' edge normalisation): (edges,) or (P, edges), or None for all ones
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # each (B, C, H, W)
        offset = 0
        for _ in range(self.nodes):
            outputs = [self.edges[offset + j](h, weights[..., offset + j, :]) for j, h in enumerate(states)]
            if edge_weights is not None:
                outputs = [_weighted(o, edge_weights[..., offset + j]) for j, o in enumerate(outputs)]
            node = sum(outputs)
            offset += len(states)
            states.append(node)
        return torch.cat(states[2:], dim=1)  # (B, nodes * C, H', W')


class Supernet(nn.Module):
    """The search network of a :class:`~bionas.space.SearchSpace`.

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
        partial_channels: ``K``; above 1, PC-DARTS (Xu et al. 2020): every mixed edge computes
            its candidates on ``1/K`` of the channels (:class:`MixedEdge`), and each node weights
            its incoming edges by edge-normalisation weights, a softmax over the node's edges of
            the logits ``beta_normal``/``beta_reduce`` (more architecture parameters); the derived
            genotype ranks edges by edge weight x candidate weight, as PC-DARTS does.
        checkpoint_cells: recompute each cell's forward in the backward instead of keeping its
            activations (``torch.utils.checkpoint``, non-reentrant) whenever gradients are taken
            of a single architecture. The recomputation runs with the rules' feedback as it was
            drawn in the forward (brSF does not redraw), local-rule updates off and the cell's
            batch-norm running statistics restored, so it computes exactly the forward's graph.
            A cell whose local-rule layers (hebbian, pc) update their weights in this forward
            keeps its activations: the update changes the weights in place during the forward,
            so a recomputation would see other weights. :meth:`cell_checkpointing` switches it
            off for a block.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, seed: int = 0,
                 shape: SupernetShape | None = None, rule_options: dict[str, dict] | None = None,
                 init: str = "xavier", partial_channels: int = 1, checkpoint_cells: bool = False):
        super().__init__()
        self.checkpoint_cells = checkpoint_cells
        if init not in INITS:
            raise ConfigError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        self.space = space
        self.shape = shape = shape or space.supernet
        C, E, K = shape.channels, shape.edges_per_cell, len(space.candidates)
        if shape.nodes != space.supernet.nodes:
            raise ConfigError(f"search space {space.name!r} has {space.supernet.nodes} nodes per cell, the supernet "
                              f"shape {shape.nodes}; change supernet.nodes in the space file instead")
        if C % (2 * partial_channels):
            raise ConfigError(f"supernet channels must be a multiple of 2 x partial_channels (factorized reductions "
                              f"halve the {partial_channels}th of the channels an edge sees), got {C}")
        self.partial_channels = partial_channels
        C_curr = shape.stem_multiplier * C
        # the stem runs once for a whole population (before the cells split it), so its batch norm
        # is a plain one -- over the global batch under torchrun, as every other
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  GlobalBatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(shape.cells):
            reduction = i in shape.reduction_cells
            if reduction:
                C_curr *= 2
            self.cells.append(SearchCell(space.candidates, shape.nodes, C_prev_prev, C_prev, C_curr, reduction,
                                         reduction_prev, layer_seed(seed, 1000 + i), rule_options, partial_channels))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, shape.nodes * C_curr
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        gen = torch.Generator().manual_seed(layer_seed(seed, 0))
        # DARTS: logits drawn 1e-3 * N(0, 1), so the initial mixture is nearly uniform
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(E, K, generator=gen))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(E, K, generator=gen))
        initialise_weights(self, init, gen)
        if partial_channels > 1:  # drawn after the weights, so K = 1 and K > 1 share them where they can
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(E, generator=gen))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(E, generator=gen))
        _with_population_batchnorm(self.cells)
        self._population_bns = [m for m in self.cells.modules() if isinstance(m, PopulationBatchNorm2d)]
        from bionas import rules

        self._local_layers = {id(cell): [layer for _, layer in rules.rule_layers(cell) if layer.rule.kind == "local"]
                              for cell in self.cells}

    # --- parameters -----------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture logits ``[alpha_normal, alpha_reduce]``, each (edges, candidates), and
        with partial channels the edge logits ``[beta_normal, beta_reduce]``, each (edges,)."""
        if self.partial_channels > 1:
            return [self.alpha_normal, self.alpha_reduce, self.beta_normal, self.beta_reduce]
        return [self.alpha_normal, self.alpha_reduce]

    def candidate_logits(self) -> list[nn.Parameter]:
        """``[alpha_normal, alpha_reduce]``: the logits of the candidates, each (edges, candidates)."""
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter except the architecture logits (what the weight optimiser trains)."""
        return (p for _, p in self.named_weight_parameters())

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    @contextlib.contextmanager
    def cell_checkpointing(self, enabled: bool) -> Iterator[None]:
        """Inside the block, cells are (or are not) recomputed in the backward."""
        saved, self.checkpoint_cells = self.checkpoint_cells, enabled
        try:
            yield
        finally:
            self.checkpoint_cells = saved

    def mixing_weights(self) -> MixingWeights:
        """Softmax over candidates of the logits: ``(normal, reduce)``, each (edges, candidates);
        with partial channels followed by the edge weights ``(edge_normal, edge_reduce)``."""
        weights = (F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1))
        if self.partial_channels > 1:
            weights += (self._edge_softmax(self.beta_normal), self._edge_softmax(self.beta_reduce))
        return weights

    def _edge_softmax(self, beta: Tensor) -> Tensor:
        """Softmax of edge logits (..., edges) over each node's incoming edges (2, 3, ... of them)."""
        sizes = [2 + j for j in range(self.shape.nodes)]
        return torch.cat([F.softmax(b, dim=-1) for b in beta.split(sizes, dim=-1)], dim=-1)

    def genotype(self, weights: MixingWeights | None = None) -> Genotype:
        """The DARTS-derived genotype of ``weights`` (default: the current mixing weights); with
        edge weights, each edge's candidate weights are scaled by its edge weight (PC-DARTS)."""
        weights = weights if weights is not None else self.mixing_weights()
        normal, reduce = weights[:2]
        if len(weights) == 4:
            normal, reduce = normal * weights[2][:, None], reduce * weights[3][:, None]
        return derive_genotype(self.space, normal.detach().double().cpu().numpy(),
                               reduce.detach().double().cpu().numpy())

    # --- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor, weights: MixingWeights | None = None) -> Tensor:
        """Logits (B, classes) of images ``x`` (B, C_in, H, W) under mixing weights ``weights``
        (``(normal, reduce)``, each (edges, candidates); default: softmax of the logits).

        A population: weights of shape (P, edges, candidates) score P architectures on the same
        images in one pass and return (P, B, classes) -- what P forward passes would return. The
        stem runs once; in training mode every batch norm of the cells normalises each
        architecture's images by their own statistics and leaves its running statistics alone
        (:class:`PopulationBatchNorm2d`).
        """
        weights = weights if weights is not None else self.mixing_weights()
        normal, reduce = weights[:2]
        if len(weights) == 2 and self.partial_channels > 1:  # candidate weights given, edges the current
            weights = (normal, reduce, self._edge_softmax(self.beta_normal), self._edge_softmax(self.beta_reduce))
        edge_normal, edge_reduce = weights[2:] if len(weights) == 4 else (None, None)
        E, K = self.alpha_normal.shape
        if normal.shape[-2:] != (E, K) or reduce.shape != normal.shape or normal.dim() not in (2, 3):
            raise ValueError(f"mixing weights must be two ({E}, {K}) tensors (or (P, {E}, {K}) for a "
                             f"population), got {tuple(normal.shape)} and {tuple(reduce.shape)}")
        s0 = s1 = self.stem(x)  # (B, 3C, H, W)
        P = normal.shape[0] if normal.dim() == 3 else 0
        if P:
            s0 = s1 = torch.cat([s0] * P)  # (P*B, 3C, H, W): architecture p owns chunk p
        for bn in self._population_bns:
            bn.population = P
        recompute = self.checkpoint_cells and not P and torch.is_grad_enabled()
        try:
            for cell in self.cells:
                args = (s0, s1, *((reduce, edge_reduce) if cell.reduction else (normal, edge_normal)))
                if recompute and not any(layer.local_updates for layer in self._local_layers[id(cell)]):
                    out = torch.utils.checkpoint.checkpoint(
                        cell, *args, use_reentrant=False,
                        context_fn=lambda cell=cell: (contextlib.nullcontext(), _as_in_forward(cell)))
                else:
                    out = cell(*args)
                s0, s1 = s1, out
        finally:
            for bn in self._population_bns:
                bn.population = 0
        logits = self.classifier(self.pool(s1).flatten(1))  # (B, classes) or (P*B, classes)
        return logits.view(P, -1, logits.shape[-1]) if P else logits
