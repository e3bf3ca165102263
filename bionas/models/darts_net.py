"""The DARTS evaluation networks, built from a genotype whose every edge keeps its learning rule.

Liu, Simonyan & Yang (2019), "DARTS: Differentiable Architecture Search", ICLR, section 3.3 and
the reference ``model.py``: a stem, ``layers`` cells (reductions at 1/3 and 2/3 of the depth
double the channels), an auxiliary classifier after the second reduction, drop path on every
edge that is not an identity, global pooling and a linear classifier. BioNAS (section 3.4)
retrains the searched cell this way with each edge's op converted by the rule the search chose;
stem, pre-processing, auxiliary head and classifier are not searched and learn by backprop.

Drop path draws its masks from the network's own generator (seeded, saved with the weights), so
training resumes exactly and the global RNG is never touched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bionas.ops import FactorizedReduce, ReLUConvBN
from bionas.rules.base import layer_seed
from bionas.rules.convert import options_for
from bionas.genotype import Genotype


def drop_path(x: Tensor, drop_prob: float, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest by ``1/keep``.

    ``shard=(rank, world)``: ``x`` holds images ``rank::world`` of a global batch of
    ``world * len(x)``; the masks are drawn for the global batch and this rank keeps its rows, so
    data-parallel training drops exactly the paths one process would."""
    keep = 1.0 - drop_prob
    rank, world = shard
    mask = torch.bernoulli(torch.full((x.shape[0] * world, 1, 1, 1), keep), generator=generator)[rank::world]
    return x / keep * mask.to(x.device, x.dtype)


class EvalCell(nn.Module):
    """A DARTS cell: each intermediate node sums two edges of the genotype, each edge is its op
    learning by its rule; the output concatenates the nodes in ``concat``."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, seed: int, rule_options: dict | None = None):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = tuple(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.edges = tuple((e.node, e.source) for e in edges)
        self.ops = nn.ModuleList(
            e.candidate.build(C, 2 if reduction and e.source < 2 else 1, affine=True, seed=layer_seed(seed, i),
                              **options_for(e.rule, rule_options or {}))
            for i, e in enumerate(edges))
        self.identity = tuple(isinstance(op, nn.Identity) for op in self.ops)
        self.nodes = max(node for node, _ in self.edges) - 1
        self.multiplier = len(self.concat)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0,
                generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> Tensor:
        states = {0: self.preprocess0(s0), 1: self.preprocess1(s1)}  # each (B, C, H, W)
        for node in range(2, 2 + self.nodes):
            total = 0
            for (target, source), op, identity in zip(self.edges, self.ops, self.identity):
                if target != node:
                    continue
                h = op(states[source])
                if self.training and drop_prob > 0 and not identity:
                    h = drop_path(h, drop_prob, generator, shard)
                total = total + h
            states[node] = total
        return torch.cat([states[i] for i in self.concat], dim=1)  # (B, multiplier * C, H', W')


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier: ReLU, 5x5 average pool, 1x1 conv to 128, 2x2 conv to 768,
    linear. ``pool_stride`` 3 suits the CIFAR network's 8x8 maps, 2 the ImageNet network's 14x14.
    Maps smaller than the 5x5 window (from 8x8 or 16x16 images) are average-pooled to 2x2."""

    def __init__(self, C: int, num_classes: int, pool_stride: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False), nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] < 5:  # maps smaller than the pooling window (8x8 images): pool to 2x2 instead
            x = F.adaptive_avg_pool2d(F.relu(x), 2)
            return self.classifier(self.features[2:](x).flatten(1))
        return self.classifier(self.features(x).flatten(1))  # (B, classes)


class _EvalNetwork(nn.Module):
    """Shared body: cells, auxiliary head after the second reduction, drop path, classifier."""

    def _build_cells(self, genotype: Genotype, C: int, layers: int, C_stem: int, reduction_prev: bool,
                     first_reductions: tuple[int, ...], seed: int, rule_options: dict | None) -> int:
        C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
        self.cells = nn.ModuleList()
        self.aux_position = 2 * layers // 3
        C_aux = None
        for i in range(layers):
            reduction = i in first_reductions
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, layer_seed(seed, i),
                            rule_options)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_position:
                C_aux = C_prev
        return C_prev, C_aux

    def _build_body(self, genotype: Genotype, num_classes: int, C: int, layers: int, C_stem: int,
                    reduction_prev: bool, auxiliary: bool, aux_pool_stride: int, seed: int,
                    rule_options: dict | None) -> None:
        """Everything after the stem: cells (reductions at 1/3 and 2/3), auxiliary head, pooling,
        classifier, drop-path generator."""
        C_prev, C_aux = self._build_cells(genotype, C, layers, C_stem, reduction_prev, (layers // 3, 2 * layers // 3),
                                          seed, rule_options)
        self.auxiliary = AuxiliaryHead(C_aux, num_classes, pool_stride=aux_pool_stride) if auxiliary else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._init_generator(seed)

    def _init_generator(self, seed: int) -> None:
        self.drop_prob = 0.0  # set by the trainer, typically ramped linearly over the epochs
        self.shard = (0, 1)  # (rank, world) under data-parallel training; see drop_path
        self.generator = torch.Generator().manual_seed(layer_seed(seed, 10_000))

    def get_extra_state(self) -> dict:
        return {"drop_generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["drop_generator"])

    def _cells_forward(self, s0: Tensor, s1: Tensor) -> tuple[Tensor, Tensor | None]:
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_prob, self.generator, self.shard)
            if i == self.aux_position and self.auxiliary is not None and self.training:
                aux_logits = self.auxiliary(s1)
        return s1, aux_logits

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(logits, auxiliary logits)``; the auxiliary head runs only in training mode."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Logits only (what evaluation and attacks use)."""
        return self.forward_with_aux(x)[0]


class NetworkCIFAR(_EvalNetwork):
    """The DARTS CIFAR evaluation network: (B, C_in, H, W) -> (B, classes).

    Args:
        genotype: the cell; every edge's op learns by its rule.
        C: initial channels (36 in the paper); layers: cells (20); auxiliary: add the auxiliary
            head (weight 0.4 in the paper's loss); seed: seeds the rules' random feedback and the
            drop-path masks; rule_options: ``{rule: {option: value}}`` for the edges' rules.
            Weights follow the torch defaults unless the trainer re-initialises.
    """

    def __init__(self, genotype: Genotype, num_classes: int, C: int = 36, layers: int = 20,
                 auxiliary: bool = True, in_channels: int = 3, stem_multiplier: int = 3, seed: int = 0,
                 rule_options: dict | None = None):
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self._build_body(genotype, num_classes, C, layers, C_stem, False, auxiliary, 3, seed, rule_options)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s = self.stem(x)  # (B, 3C, H, W)
        out, aux = self._cells_forward(s, s)
        return self.classifier(self.pool(out).flatten(1)), aux


class NetworkImageNet(_EvalNetwork):
    """The DARTS ImageNet evaluation network (224x224 inputs; three stride-2 stem convolutions;
    the first cell treats the stem as a reduction). Paper: C=48, 14 cells."""

    def __init__(self, genotype: Genotype, num_classes: int, C: int = 48, layers: int = 14,
                 auxiliary: bool = True, in_channels: int = 3, seed: int = 0, rule_options: dict | None = None):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True), nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self._build_body(genotype, num_classes, C, layers, C, True, auxiliary, 2, seed, rule_options)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s0 = self.stem0(x)  # (B, C, H/4, W/4)
        s1 = self.stem1(s0)  # (B, C, H/8, W/8)
        out, aux = self._cells_forward(s0, s1)
        return self.classifier(self.pool(out).flatten(1)), aux
