"""One-pixel attack, batched over images.

Su, Vargas & Sakurai (2019), "One pixel attack for fooling deep neural networks", IEEE TEVC,
https://arxiv.org/abs/1710.08864. Change ``pixels`` pixels (position and RGB value each) to
minimise the probability of the true class, searched by differential evolution.

torchattacks' ``OnePixel`` runs SciPy's ``differential_evolution`` image by image (strategy
best1bin, recombination 1, dithered mutation in [0.5, 1), stopping as soon as the image is
misclassified). Its ``popsize`` is not the number of members: torchattacks passes SciPy the
multiplier ``max(1, popsize // D)`` for ``D = pixels x (2 + C)`` parameters and SciPy keeps
``max(5, multiplier x D)`` members, so ``popsize=10`` on RGB images means 10, 10, 15, 20, 25
members for 1..5 pixels (:func:`population_size`). This class runs the same search for a whole
batch at once: every image has its own population, and one forward pass scores the trial vectors
of all images. With recombination 1 each trial is ``best + F (x_r1 - x_r2)`` (SciPy's best1bin
with crossover probability 1), its partners ``r1 != r2`` both different from the member itself
(as SciPy draws them); coordinates leaving their bounds are redrawn uniformly, as SciPy does.
Randomness comes from a generator seeded by ``seed`` (never the global RNG).

Args: pixels (1), steps (10: generations), popsize (10: torchattacks' meaning, above),
members (None: from popsize as torchattacks does; a number: exactly that many, at least 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack
from torch import Tensor


def population_size(popsize: int, pixels: int, channels: int = 3) -> int:
    """Members per image of torchattacks' ``OnePixel(pixels, popsize=popsize)``: it hands SciPy's
    ``differential_evolution`` the multiplier ``max(1, int(popsize / D))`` over ``D = pixels x
    (2 + channels)`` parameters, and SciPy keeps ``max(5, multiplier x D)`` members."""
    dims = pixels * (2 + channels)
    return max(5, max(1, popsize // dims) * dims)


def distinct_partners(members: int, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two partner indices per (image, member), (batch, members) each: ``r1 != r2`` and both
    different from the member's own index, uniform over such pairs (SciPy's ``_select_samples``)."""
    own = torch.arange(members)[None].expand(batch, members)
    r1 = torch.randint(0, members - 1, (batch, members), generator=gen)
    r1 = r1 + (r1 >= own)  # skip the member itself
    r2 = torch.randint(0, members - 2, (batch, members), generator=gen)
    low, high = torch.minimum(own, r1), torch.maximum(own, r1)
    r2 = r2 + (r2 >= low)
    r2 = r2 + (r2 >= high)  # skip both, in increasing order
    return r1, r2


class BatchedOnePixel(Attack):
    def __init__(self, model, pixels: int = 1, steps: int = 10, popsize: int = 10, seed: int = 0,
                 members: int | None = None):
        super().__init__("BatchedOnePixel", model)
        if members is not None and members < 4:
            raise ValueError("differential evolution needs a population of at least 4")
        self.pixels, self.steps, self.popsize, self.seed, self.members = pixels, steps, popsize, seed, members
        self.supported_mode = ["default"]

    def _apply(self, images: Tensor, genes: Tensor) -> Tensor:
        """Images (B, C, H, W) with the pixels of ``genes`` (B, P, pixels, 2 + C) in [0, 1]
        written in -> (B * P, C, H, W)."""
        B, C, H, W = images.shape
        P = genes.shape[1]
        out = images[:, None].expand(B, P, C, H, W).clone()
        rows = (genes[..., 0] * H).long().clamp_(max=H - 1)  # (B, P, pixels)
        cols = (genes[..., 1] * W).long().clamp_(max=W - 1)
        b = torch.arange(B, device=images.device)[:, None, None].expand_as(rows)
        p = torch.arange(P, device=images.device)[None, :, None].expand_as(rows)
        out[b, p, :, rows, cols] = genes[..., 2:]  # (B, P, pixels, C) values
        return out.view(B * P, C, H, W)

    def _true_class_probability(self, images: Tensor, genes: Tensor, labels: Tensor) -> Tensor:
        B, P = genes.shape[:2]
        with torch.no_grad():
            logits = self.get_logits(self._apply(images, genes)).view(B, P, -1)  # (B, P, classes)
        return F.softmax(logits.float(), dim=-1).gather(2, labels[:, None, None].expand(B, P, 1))[..., 0]

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        B, C = images.shape[:2]
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        P = self.members if self.members is not None else population_size(self.popsize, self.pixels, C)
        shape = (B, P, self.pixels, 2 + C)

        def uniform(*size):
            return torch.rand(*size, generator=gen).to(self.device)

        population = uniform(*shape)
        fitness = self._true_class_probability(images, population, labels)  # (B, P): lower is better
        for _ in range(self.steps):
            best = population.gather(1, fitness.argmin(1)[:, None, None, None].expand(B, 1, *shape[2:]))
            with torch.no_grad():
                done = self.get_logits(self._apply(images, best)).argmax(1) != labels  # (B,)
            if bool(done.all()):
                break
            r1, r2 = distinct_partners(P, B, gen)
            scale = 0.5 + 0.5 * torch.rand(B, 1, 1, 1, generator=gen)  # dithered mutation per generation
            pick = lambda idx: population.gather(1, idx.to(self.device)[:, :, None, None].expand(shape))  # noqa: E731
            trial = best + scale.to(self.device) * (pick(r1) - pick(r2))
            outside = (trial < 0) | (trial > 1)
            trial = torch.where(outside, uniform(*shape), trial)
            trial_fitness = self._true_class_probability(images, trial, labels)
            better = (trial_fitness < fitness) & ~done[:, None]  # finished images keep their population
            population = torch.where(better[..., None, None], trial, population)
            fitness = torch.where(better, trial_fitness, fitness)
        best = population.gather(1, fitness.argmin(1)[:, None, None, None].expand(B, 1, *shape[2:]))
        return self._apply(images, best).detach()
