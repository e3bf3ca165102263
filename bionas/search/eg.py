"""BioNAS-EG: CMA-ES moves the architecture logits (BioNAS section 3.3 and appendix 7.5.2).

Cai, Chen, Zhang & Yuan (2024), "EG-NAS: Neural Architecture Search with Fast Evolutionary
Exploration", AAAI, https://arxiv.org/abs/2312.08219 ; CMA-ES from ``pycma`` (Hansen et al.).

After ``warmup_epochs`` epochs of weight training only, each epoch begins with an evolutionary
architecture update on one validation batch (the weights then train by SGD as in DARTS):

    for restart i in 1..restarts:   CMA-ES from mean = the logits a (both cells, flattened),
                                    step size sigma_t = max(sigma0 / (t + 1), sigma_min), t = the
                                    evolutionary update's index (0 in the first epoch after the
                                    warm-up; ``sigma_schedule: constant``: sigma0 throughout),
                                    population ``population``, seeded from (run seed, epoch,
                                    restart); ``generations`` ask/tell rounds (more than one lets
                                    the covariance adaptation act)
    similarity:                     s(z) = mean over edges of (cos(a_e - mean a_e, z_e - mean z_e) + 1) / 2
    fitness (lower is better),      grouped: candidates at least as accurate on the batch as the
    lam = similarity_weight:            current architecture first, ranked by CE + lam s(z) (EG-NAS'
                                        diversity pressure); the others after them, ranked by CE
                                        alone -- the similarity never lifts a less accurate candidate
                                    release: CE + lam s(z) if acc(z) >= acc(a), else CE - lam s(z)
    update with the best candidate z* over all restarts and generations:
                                    u <- momentum * u + (1 - momentum) * (z* - a),  a <- a + step_size * u
                                    then, per edge, a_e <- a_e - mean(a_e) and, if ||a_e|| > max_norm,
                                    a_e <- a_e * max_norm / ||a_e||. Under ``grouped`` the logits stay
                                    where they are when no candidate is at least as accurate as a.

Why ``grouped`` is the default: the release's compound fitness (``CFF``) is minimised, so every
less accurate candidate gets a 2 lam s advantage (0.4-0.8 nat), far more than the CE spread of
nearby candidates, and the release selects candidates worse than the current architecture even
when better ones are in the population (``fitness.csv`` logs, per generation, whether the
selected candidate beat the current one; results/README.md has the measurement). The sigma
schedule counts evolutionary updates, not epochs: counting the absolute epoch after the 15
warm-up epochs would start at 1/16. Where this implementation departs from the release (each a
defect of the release or a choice the paper leaves open, reconstructed here):

* the release seeds every CMA-ES restart with ``seed=1`` (all restarts draw the same
  population); here each instance gets its own seed from the run's seed, the epoch and the
  restart, and its own random stream (pycma's ``randn`` option), so the global NumPy RNG is
  neither used nor changed;
* the release's sigma schedule ``1 / (epoch + 1)`` is fed a counter that never advances, so its
  effective sigma is a constant 1.0 (``sigma_schedule: constant``); here ``t`` counts updates;
* the release adds the best candidate's softmax weights to the logits, which only ever grow; here
  the logits move *towards* the best candidate and are centred and norm-capped after each update
  (softmax ignores the centring; the cap bounds how peaked a mixture can become);
* the release measures similarity between softmax weights and unit-normalised logits; here both
  sides are centred logits, so the similarity ignores what softmax ignores;
* candidates are sampled in logit space (as the release) and the best of all restarts is kept
  (the release keeps the last restart's);
* the release scores candidates in eval mode, with the supernet's running statistics; here each
  candidate is scored with its own batch statistics (a population forward of the supernet,
  ``score_chunk`` candidates at a time), as the architecture steps of DARTS see the supernet;
* the release searches PC-DARTS' partial-channel supernet without ``none`` and with 8 cells;
  here the supernet is the search space's (``none`` included where the space lists it), full
  channel by default, partial with ``partial_channels: 4``; evolution moves the candidate logits
  only, so PC-DARTS' edge weights stay at their near-uniform start.

Scoring uses no gradients and leaves nothing behind: running statistics, random feedback draws
and local-rule weights are untouched.
Under ``torchrun`` every rank scores the whole population on its share of the batch (batch
statistics over the global batch) and the ranks add their sums, so every rank ranks the same
fitness values and runs the same CMA-ES to the same logits.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bionas import distributed
from bionas.configs.options import option
from bionas.rules.base import layer_seed
from bionas.search.strategy import (STRATEGIES, Batch, SearchStrategy, no_feedback_redraws,
                                    preserved_batchnorm_statistics)


def similarity(current: Tensor, candidates: Tensor) -> Tensor:
    """``s(z)``: mean over edges of ``(cos(a_e - mean a_e, z_e - mean z_e) + 1) / 2``.

    ``current``: (edges, K) logits (both cells stacked); ``candidates``: (P, edges, K) -> (P,).
    """
    a = current - current.mean(-1, keepdim=True)
    z = candidates - candidates.mean(-1, keepdim=True)
    cos = F.cosine_similarity(z, a.expand_as(z), dim=-1, eps=1e-12)  # (P, edges)
    return ((cos + 1) / 2).mean(-1)


def compound_fitness(ce: Tensor, acc: Tensor, current_acc: float, sim: Tensor, weight: float) -> Tensor:
    """The EG-NAS release's compound fitness (lower is better): ``CE + lam s`` if the candidate is
    at least as accurate as the current architecture, else ``CE - lam s``. All per candidate (P,)."""
    sign = torch.where(acc >= current_acc, 1.0, -1.0)
    return ce + sign * weight * sim


def selection_keys(ce: Tensor, acc: Tensor, current_acc: float, sim: Tensor, weight: float,
                   rule: str = "grouped") -> Tensor:
    """(P, 2) keys, compared lexicographically, lower is better: ``grouped`` = (0 for candidates at
    least as accurate as the current architecture else 1, ``CE + lam s`` in the first group and
    ``CE`` in the second); ``release`` = (0, the release's compound fitness)."""
    if rule == "release":
        return torch.stack([torch.zeros_like(ce), compound_fitness(ce, acc, current_acc, sim, weight)], 1)
    worse = (acc < current_acc).to(ce.dtype)
    return torch.stack([worse, torch.where(worse.bool(), ce, ce + weight * sim)], 1)


def fitness_values(keys: Tensor) -> Tensor:
    """Scalars CMA-ES can rank in the order of ``keys`` (P, 2): the second key, offset by more than
    its spread for every step of the first."""
    spread = float(keys[:, 1].max() - keys[:, 1].min()) + 1.0
    return keys[:, 0] * spread + keys[:, 1]


@contextlib.contextmanager
def _isolated_numpy_rng(seed: int):
    """pycma may touch NumPy's global RNG: give it a seeded state and put the caller's back."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass
class EGOptions:
    """EG-NAS' evolutionary update (formulas in the module docstring); the release's defaults."""

    warmup_epochs: int = option(15, "weight-only epochs before the first evolutionary update", ge=0)
    population: int = option(50, "CMA-ES population size", ge=2)
    restarts: int = option(3, "independent CMA-ES instances per epoch (the release's samples)", ge=1)
    generations: int = option(1, "ask/tell rounds per instance and epoch", ge=1)
    sigma0: float = option(1.0, "step size sigma_t = max(sigma0 / (t + 1), sigma_min), t = update index", gt=0)
    sigma_min: float = option(0.02, "smallest step size", gt=0)
    sigma_schedule: str = option("decay", "decay: sigma0 / (t + 1); constant: sigma0 (the release's effect)",
                                 choices=("decay", "constant"))
    fitness: str = option("grouped", "grouped: at least as accurate first, then CE + lam s; release: CE +- lam s",
                          choices=("grouped", "release"))
    similarity_weight: float = option(0.4, "lam, the weight of the similarity s(z) in the fitness", ge=0)
    step_size: float = option(0.1, "a <- a + step_size * u, u = momentum-averaged (z* - a)", gt=0)
    momentum: float = option(0.0, "momentum of the logit update", ge=0, lt=1)
    max_norm: float = option(3.0, "per-edge L2 cap on the centred logits after each update", gt=0)
    score_chunk: int = option(10, "candidates scored per batched forward pass", ge=1)


@STRATEGIES.register("eg")
class EvolutionaryStrategy(SearchStrategy):
    """EG-NAS over (op, rule) candidates: CMA-ES on the logits once per epoch after a warm-up."""

    Options = EGOptions

    def __init__(self, model, config, context: distributed.Context = distributed.Context()):
        super().__init__(model, config, context)
        self.momentum_buffer = torch.zeros(2, *model.alpha_normal.shape)
        self.fitness_log: list[dict] = []  # one row per CMA-ES generation
        self._evolved_epoch = -1

    # --- the loop's interface -------------------------------------------------------------------
    def update_architecture(self, train_batch: Batch, val_batch: Batch, step: int) -> dict[str, float]:
        if self.epoch < self.options.warmup_epochs or self._evolved_epoch == self.epoch:
            return {}
        self._evolved_epoch = self.epoch
        return self.evolve(val_batch)

    def sigma(self, epoch: int | None = None) -> float:
        """The CMA-ES step size of the update at ``epoch`` (0-based; default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self.options.sigma_schedule == "constant":
            return self.options.sigma0
        t = max(epoch - self.options.warmup_epochs, 0)  # 0 at the first evolutionary update
        return max(self.options.sigma0 / (t + 1), self.options.sigma_min)

    def evolve(self, batch: Batch) -> dict[str, float]:
        """One evolutionary update of the logits from ``batch`` (logged in :attr:`fitness_log`)."""
        import cma

        config, options, model = self.config, self.options, self.model
        current = torch.stack([p.detach() for p in model.candidate_logits()]).cpu().double()  # (2, E, K)
        shape = current.shape
        current_ce, current_acc = self.score(current[None], batch)
        cur_ce, cur_acc = float(current_ce[0]), float(current_acc[0])
        best_z, best_key = None, (math.inf, math.inf)
        sigma = self.sigma()
        for restart in range(options.restarts):
            seed = layer_seed(config.seed, 1_000_003 * self.epoch + restart)
            rng = np.random.default_rng(seed)
            opts = {"popsize": options.population, "seed": float("nan"), "verbose": -9,
                    "randn": lambda *size: rng.standard_normal(size), "verb_log": 0, "verb_disp": 0,
                    "CMA_diagonal": False}
            with _isolated_numpy_rng(seed):
                es = cma.CMAEvolutionStrategy(current.flatten().numpy(), sigma, opts)
                for generation in range(options.generations):
                    solutions = es.ask()
                    z = torch.from_numpy(np.stack(solutions)).view(-1, *shape)  # (P, 2, E, K)
                    ce, acc = self.score(z, batch)
                    sim = similarity(current.flatten(0, 1), z.flatten(1, 2))
                    keys = selection_keys(ce, acc, cur_acc, sim, options.similarity_weight, options.fitness)
                    es.tell(solutions, fitness_values(keys).tolist())
                    i = min(range(len(keys)), key=lambda k: tuple(keys[k].tolist()))
                    if tuple(keys[i].tolist()) < best_key:
                        best_key, best_z, best_acc = tuple(keys[i].tolist()), z[i], float(acc[i])
                    self.fitness_log.append({
                        "epoch": self.epoch + 1, "restart": restart, "generation": generation, "sigma": sigma,
                        "selected_acc": float(acc[i]), "selected_ce": float(ce[i]),
                        "mean_acc": float(acc.mean()), "mean_ce": float(ce.mean()),
                        "current_acc": cur_acc, "current_ce": cur_ce, "population_best_acc": float(acc.max()),
                        "selected_beats_current": bool(acc[i] > cur_acc or (acc[i] == cur_acc and ce[i] < cur_ce)),
                        "selected_not_worse": bool(acc[i] >= cur_acc)})
        if options.fitness == "grouped" and best_acc < cur_acc:
            return {}  # no candidate is as accurate as the current architecture: keep it
        self._move_logits(best_z.to(current.dtype), current)
        return {}  # the selection per generation is in fitness_log (fitness.csv, fitness.png)

    @torch.no_grad()
    def _move_logits(self, best: Tensor, current: Tensor) -> None:
        m = self.options.momentum
        self.momentum_buffer = m * self.momentum_buffer + (1 - m) * (best - current).float()
        new = current.float() + self.options.step_size * self.momentum_buffer  # (2, E, K)
        new = new - new.mean(-1, keepdim=True)
        norm = new.norm(dim=-1, keepdim=True)
        new = torch.where(norm > self.options.max_norm, new * self.options.max_norm / norm, new)
        for p, value in zip(self.model.candidate_logits(), new):
            p.copy_(value.to(p.device, p.dtype))

    @torch.no_grad()
    def score(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy (P,) of each architecture ``logits`` (P, 2, E, K) on ``batch``,
        with per-architecture batch statistics, leaving the supernet as it was."""
        model, (x, y) = self.model, batch
        device, dtype = model.alpha_normal.device, model.alpha_normal.dtype
        weights = torch.softmax(logits.to(device, dtype), dim=-1)  # (P, 2, E, K)
        ces, accs = [], []
        was_training = model.training
        model.train()
        with preserved_batchnorm_statistics(model), no_feedback_redraws(model):
            for chunk in weights.split(self.options.score_chunk):
                with self.autocast():
                    out = model(x, (chunk[:, 0], chunk[:, 1])).float()  # (p, B, classes), per-candidate BN
                target = y.expand(len(chunk), -1)
                ces.append(F.cross_entropy(out.flatten(0, 1), target.flatten(), reduction="none")
                           .view(len(chunk), -1).sum(1))
                accs.append((out.argmax(-1) == target).float().sum(1))
        model.train(was_training)
        # sums over this rank's share of the batch -> over the ranks (under torchrun) -> means
        sums = torch.stack([torch.cat(ces), torch.cat(accs)]).cpu().double()  # (2, P)
        totals = torch.tensor(distributed.all_reduce_sum([*sums.flatten().tolist(), float(len(y))], x.device,
                                                         self.context), dtype=torch.float64)
        sums, count = totals[:-1].view(2, -1), totals[-1]
        return sums[0] / count, sums[1] / count

    def state_dict(self) -> dict:
        return {**super().state_dict(), "momentum_buffer": self.momentum_buffer.clone(),
                "fitness_log": list(self.fitness_log), "evolved_epoch": self._evolved_epoch}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.momentum_buffer = state["momentum_buffer"].clone()
        self.fitness_log = list(state["fitness_log"])
        self._evolved_epoch = int(state["evolved_epoch"])

    def write_outputs(self, out) -> None:
        """``fitness.csv`` and ``fitness.png``: best and mean fitness per CMA-ES generation."""
        import pandas as pd

        from bionas.io import save_csv
        from bionas.search import plots

        if self.fitness_log:
            frame = pd.DataFrame(self.fitness_log)
            save_csv(frame, out / "fitness.csv")
            plots.plot_fitness(frame, out / "fitness.png")
