"""What the BioNAS-EG mixing entropy is when the fitness carries no information.

Runs the package's own evolutionary update (``EvolutionaryStrategy.evolve``: pycma, the grouped
selection with its similarity term, the half step, centring and norm cap) on logits of the BioNAS
space's shape, from DARTS' near-uniform start, with every candidate scored by a fitness of pure
noise (cross-entropy iid N(2, 0.1), every candidate as accurate as the current architecture), for
the updates a search makes (epochs - warm-up). It prints, per seed, the normalised entropy of each
edge's mixture (mean over both cells' edges) and how many edges' top candidate reaches 2x uniform --
the numbers ``scripts/search_summary.py`` reports for a real search -- so a real EG search can be
read against what its step-size schedule alone produces.

    python scripts/eg_null_entropy.py --preset mini --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from bionas.search.config import resolve_config
from bionas.search.eg import EvolutionaryStrategy
from bionas.space import load_space

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_summary import edge_entropies, top_over_uniform  # noqa: E402  (the statistics of a real search)


class _NoiseScored(EvolutionaryStrategy):
    """The strategy with its batch scoring replaced by noise: no candidate is better than another."""

    def score(self, logits, batch):
        # ``batch`` is the noise's torch.Generator: there is no data to score on
        ce = 2.0 + 0.1 * torch.randn(len(logits), generator=batch, dtype=torch.float64)
        return ce, torch.full((len(logits),), 0.1, dtype=torch.float64)


def evolve_on_noise(config, seed: int, edges: int, k: int) -> torch.Tensor:
    """The (2, edges, k) logits after the search's evolutionary updates under a noise fitness."""
    gen = torch.Generator().manual_seed(seed)
    alphas = [nn.Parameter(1e-3 * torch.randn(edges, k, generator=gen)) for _ in range(2)]
    dummy = nn.Parameter(torch.zeros(1))  # the weight optimiser needs one parameter; nothing trains it
    model = SimpleNamespace(alpha_normal=alphas[0], candidate_logits=lambda: alphas,
                            weight_parameters=lambda: [dummy], parameters=lambda: iter([dummy]))
    strategy = _NoiseScored(model, config)
    for epoch in range(strategy.options.warmup_epochs, config.epochs):
        strategy.epoch = epoch
        strategy.evolve(gen)
    return torch.stack([a.detach().double() for a in alphas])


def run(preset: str, seed: int) -> tuple[float, int, int, int]:
    """Mean normalised entropy over both cells' edges, the normal and reduce cells' counts of edges
    whose top candidate reaches 2x uniform, and the edges per cell."""
    config = resolve_config(preset, overrides={"method": "eg", "seed": seed})
    space = load_space(config.space)
    edges = space.supernet.edges_per_cell
    w = torch.softmax(evolve_on_noise(config, seed, edges, len(space)), -1).numpy()  # (2, E, K)
    top2x = (top_over_uniform(w) >= 2).sum(-1)
    return float(edge_entropies(w).mean()), int(top2x[0]), int(top2x[1]), edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mini", help="search preset whose EG options and epochs are used")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    print(f"EG updates on a noise fitness, preset {args.preset}: entropy (1 = uniform), edges with top >= 2x uniform")
    for seed in args.seeds:
        entropy, normal, reduce, edges = run(args.preset, seed)
        print(f"seed {seed}: entropy {entropy:.4f}, normal {normal}/{edges}, reduce {reduce}/{edges}")


if __name__ == "__main__":
    main()
