"""One-pixel attack, batched over images.

Su, Vargas & Sakurai (2019), "One pixel attack for fooling deep neural networks", IEEE TEVC,
https://arxiv.org/abs/1710.08864. Change ``pixels`` pixels (position and RGB value each) to
minimise the probability of the true class, searched by differential evolution.

torchattacks' ``OnePixel`` runs SciPy's ``differential_evolution`` image by image (strategy
best1bin, recombination 1, dithered mutation in [0.5, 1), ``popsize`` members in all, stopping
as soon as the image is misclassified) -- about ``steps x popsize`` tiny forward passes per
image. This class runs the same search for a whole batch at once: every image has its own
population, and one forward pass scores the trial vectors of all images. With recombination 1
each trial is ``best + F (x_r1 - x_r2)`` (SciPy's best1bin with crossover probability 1);
coordinates leaving their bounds are redrawn uniformly, as SciPy does. Randomness comes from a
generator seeded by ``seed`` (never the global RNG).

Args: pixels (1), steps (10: generations), popsize (10: members per image, at least 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchattacks.attack import Attack
from torch import Tensor


class BatchedOnePixel(Attack):
    def __init__(self, model, pixels: int = 1, steps: int = 10, popsize: int = 10, seed: int = 0):
        super().__init__("BatchedOnePixel", model)
        if popsize < 4:
            raise ValueError("differential evolution needs a population of at least 4")
        self.pixels, self.steps, self.popsize, self.seed = pixels, steps, popsize, seed
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
        shape = (B, self.popsize, self.pixels, 2 + C)

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
            # two distinct random partners per member (distinct from each other)
            r1 = torch.randint(0, self.popsize, (B, self.popsize), generator=gen)
            r2 = (r1 + torch.randint(1, self.popsize, (B, self.popsize), generator=gen)) % self.popsize
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
