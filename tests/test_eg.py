"""The EG (CMA-ES) strategy: fitness against a hand computation, seeding, bounds, resume."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bionas.rules.brsf import BatchwiseRandomSignFeedback
from bionas.genotype import load_genotype
from bionas.search import run_search
from bionas.space import SupernetShape, load_space, space_from_dict
from bionas.search.config import SearchConfig
from bionas.search.eg import EvolutionaryStrategy, compound_fitness, fitness_values, selection_keys, similarity
from bionas.search.supernet import Supernet
from conftest import Killed

SPACE = {"name": "tiny", "supernet": {"nodes": 2},
         "candidates": {"none": [], "max_pool_3x3": [], "skip_connect": ["usf"], "sep_conv_3x3": ["fa", "brsf"]}}
SHAPE = SupernetShape(channels=4, cells=3, nodes=2)


@pytest.fixture(scope="module")
def batch(cifar10_root):
    from bionas.data import BatchLoader, load_dataset

    data = load_dataset("cifar10", cifar10_root, "train", per_class=1, seed=0)
    return next(iter(BatchLoader(data, 10, shuffle=False)))


@pytest.fixture
def tiny(tmp_path, cifar10_root):
    space = tmp_path / "tiny.yaml"
    import yaml

    space.write_text(yaml.safe_dump(SPACE))
    return SearchConfig(method="eg", space=str(space), dataset="cifar10", data_dir=str(cifar10_root), per_class=4,
                        batch_size=8, epochs=3, steps_per_epoch=2, progress=False, out=str(tmp_path / "run"),
                        strategy_options={"eg": {"warmup_epochs": 1, "population": 4, "restarts": 2, "score_chunk": 3}})


def _strategy(**kw):
    net = Supernet(space_from_dict(SPACE), 3, 10, seed=0, shape=SHAPE)
    seed = kw.pop("seed", 0)
    return EvolutionaryStrategy(net, SearchConfig(method="eg", epochs=4, seed=seed, strategy_options={"eg": kw}))


def test_fitness_agrees_with_a_hand_computation(batch):
    x, y = batch
    strategy = _strategy(score_chunk=2)
    net = strategy.model
    gen = torch.Generator().manual_seed(1)
    current = torch.stack([p.detach() for p in net.arch_parameters()]).double()  # (2, E, K)
    population = current[None] + 0.7 * torch.randn(5, *current.shape, generator=gen, dtype=torch.float64)
    ce, acc = strategy.score(population, (x, y))
    cur_ce, cur_acc = strategy.score(current[None], (x, y))
    sim = similarity(current.flatten(0, 1), population.flatten(1, 2))
    fitness = compound_fitness(ce, acc, float(cur_acc[0]), sim, 0.4)

    net.train()
    for p in range(len(population)):
        # one candidate at a time, as a plain training-mode forward, BN statistics restored after
        saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
        with torch.no_grad():
            w = torch.softmax(population[p].float(), dim=-1)
            logits = net(x, (w[0], w[1]))
        net.load_state_dict({**net.state_dict(), **saved})
        hand_ce = float(F.cross_entropy(logits, y))
        hand_acc = float((logits.argmax(1) == y).float().mean())
        a = current.flatten(0, 1).numpy()
        z = population[p].flatten(0, 1).numpy()
        a, z = a - a.mean(-1, keepdims=True), z - z.mean(-1, keepdims=True)
        cos = (a * z).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(z, axis=-1))
        hand_sim = float(((cos + 1) / 2).mean())
        sign = 1.0 if hand_acc >= float(cur_acc[0]) else -1.0
        assert float(ce[p]) == pytest.approx(hand_ce, rel=1e-5)
        assert float(acc[p]) == pytest.approx(hand_acc)
        assert float(sim[p]) == pytest.approx(hand_sim, rel=1e-9)
        assert float(fitness[p]) == pytest.approx(hand_ce + sign * 0.4 * hand_sim, rel=1e-5)
    assert {1.0, -1.0} >= set(torch.sign(fitness - ce).tolist())


def test_scoring_leaves_no_trace(batch):
    strategy = _strategy()
    net = strategy.model
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    brsf = [m for m in net.modules() if isinstance(m, BatchwiseRandomSignFeedback)]
    draws = [m.draws for m in brsf]
    current = torch.stack([p.detach() for p in net.arch_parameters()])
    strategy.score(current[None].repeat(3, 1, 1, 1), batch)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())
    assert [m.draws for m in brsf] == draws and brsf


def test_evolution_is_seeded_per_restart_and_epoch_bounded_and_isolated(batch):
    strategy = _strategy(population=6, restarts=2, max_norm=0.5, step_size=1.0, fitness="release")  # always moves
    np.random.seed(123)
    numpy_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state()
    strategy.evolve(batch)
    # the global RNGs are neither used nor changed
    assert np.array_equal(np.random.get_state()[1], numpy_state) and torch.equal(torch.get_rng_state(), torch_state)
    log = strategy.fitness_log
    assert len(log) == 2 and log[0]["mean_ce"] != log[1]["mean_ce"]  # restarts draw different populations
    for alpha in strategy.model.arch_parameters():  # centred, norm-capped logits
        assert torch.allclose(alpha.detach().mean(-1), torch.zeros(alpha.shape[0]), atol=1e-6)
        assert float(alpha.detach().norm(dim=-1).max()) <= 0.5 + 1e-5
    # the same seed and state evolve the same way; another seed does not
    again = _strategy(population=6, restarts=2, max_norm=0.5, step_size=1.0, fitness="release")
    again.evolve(batch)
    other = _strategy(population=6, restarts=2, max_norm=0.5, step_size=1.0, seed=5, fitness="release")
    other.evolve(batch)
    for a, b, c in zip(strategy.model.arch_parameters(), again.model.arch_parameters(),
                       other.model.arch_parameters()):
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_warm_up_trains_weights_only_then_evolves_once_per_epoch(batch):
    strategy = _strategy(warmup_epochs=1, population=4, restarts=1, fitness="release")
    alphas = [a.detach().clone() for a in strategy.model.arch_parameters()]
    half = (batch[0][:5], batch[1][:5]), (batch[0][5:], batch[1][5:])
    strategy.step(*half, step=0)
    assert all(torch.equal(a, b) for a, b in zip(alphas, strategy.model.arch_parameters()))  # warm-up
    strategy.end_epoch()
    strategy.step(*half, step=1)
    strategy.step(*half, step=2)
    assert len(strategy.fitness_log) == 1  # one update in the epoch, not one per step
    assert not all(torch.equal(a, b) for a, b in zip(alphas, strategy.model.arch_parameters()))


def test_short_eg_search_gives_a_valid_genotype_and_seeds_decide(tiny, tmp_path):
    a = run_search(dataclasses.replace(tiny, out=str(tmp_path / "a")))
    b = run_search(dataclasses.replace(tiny, out=str(tmp_path / "b")))
    c = run_search(dataclasses.replace(tiny, out=str(tmp_path / "c"), seed=1))
    space = load_space(tiny.space)
    assert load_genotype(tmp_path / "a" / "genotype.json", space) == a.genotype
    assert a.genotype == b.genotype and a.genotype.weights == b.genotype.weights
    assert c.genotype.weights != a.genotype.weights  # another seed, another search (the cell may coincide)
    for name in ("fitness.csv", "fitness.png", "mixing_weights.png", "cells.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0


def test_killed_and_resumed_eg_run_equals_an_uninterrupted_one(tiny, tmp_path, killed_after):
    full = run_search(dataclasses.replace(tiny, out=str(tmp_path / "full")))
    with pytest.raises(Killed):  # after epoch 2, the first with an evolutionary update
        run_search(dataclasses.replace(tiny, out=str(tmp_path / "k")), on_epoch_end=killed_after(2))
    resumed = run_search(dataclasses.replace(tiny, out=str(tmp_path / "k")), resume=True)
    assert resumed.genotype == full.genotype and resumed.genotype.weights == full.genotype.weights
    assert (tmp_path / "k" / "fitness.csv").read_text() == (tmp_path / "full" / "fitness.csv").read_text()


def test_sigma_counts_evolutionary_updates_from_the_warm_up_on():
    decay = _strategy(warmup_epochs=15)
    assert [decay.sigma(e) for e in (0, 15, 16, 18)] == [1.0, 1.0, 0.5, 0.25] and decay.sigma(500) == 0.02
    assert _strategy(warmup_epochs=15, sigma_schedule="constant").sigma(40) == 1.0  # the release's effect


def test_grouped_selection_never_lets_similarity_lift_a_less_accurate_candidate():
    """A constructed population: current accuracy 0.5. Candidate 0 is less accurate but has the
    lowest CE and is the most dissimilar (the release's fitness picks it); 1 and 2 are as accurate,
    2 with a slightly higher CE but far more diverse; 3 is more accurate with a high CE."""
    ce = torch.tensor([1.0, 1.30, 1.35, 2.0], dtype=torch.float64)
    acc = torch.tensor([0.4, 0.5, 0.5, 0.6], dtype=torch.float64)
    sim = torch.tensor([0.0, 0.9, 0.2, 1.0], dtype=torch.float64)
    release = selection_keys(ce, acc, 0.5, sim, 0.4, "release")
    assert int(release[:, 1].argmin()) == 0  # the defect: a less accurate candidate wins
    keys = selection_keys(ce, acc, 0.5, sim, 0.4)
    order = sorted(range(4), key=lambda k: tuple(keys[k].tolist()))
    # as-accurate-or-better first, by CE + lam s: 2 (1.35 + 0.08) < 1 (1.30 + 0.36) < 3 (2.0 + 0.4); then 0
    assert order == [2, 1, 3, 0]
    values = fitness_values(keys)  # what CMA-ES ranks: the same order
    assert sorted(range(4), key=lambda k: float(values[k])) == order


def test_grouped_evolution_logs_its_selection_and_never_moves_towards_a_worse_candidate(batch):
    strategy = _strategy(population=6, restarts=2, warmup_epochs=0)
    before = [a.detach().clone() for a in strategy.model.arch_parameters()]
    strategy.evolve(batch)
    log = strategy.fitness_log
    assert {"selected_acc", "selected_ce", "current_acc", "selected_beats_current", "selected_not_worse"} <= set(log[0])
    for row in log:  # the selection is as accurate as the current architecture whenever one in the population is
        assert row["selected_not_worse"] == (row["population_best_acc"] >= row["current_acc"])
    moved = not all(torch.equal(a, b) for a, b in zip(before, strategy.model.arch_parameters()))
    assert moved == any(row["selected_not_worse"] for row in log)


def test_eg_update_on_a_noise_fitness_is_a_random_walk_of_the_scheduled_size(load_script):
    """With no information in the fitness (and no similarity term or norm cap), each update moves
    the logits half-way to a draw from CMA-ES' first, isotropic generation N(a, sigma_t^2 I), so
    after the updates each centred logit has variance (1 - 1/K) x 0.25 x sum_t sigma_t^2 -- the
    scale scripts/eg_null_entropy.py reads the real searches' entropy against."""
    module = load_script("eg_null_entropy")
    options = {"warmup_epochs": 2, "population": 6, "restarts": 2, "step_size": 0.5, "similarity_weight": 0.0,
               "max_norm": 1e9, "score_chunk": 6}
    config = SearchConfig(method="eg", epochs=10, seed=0, strategy_options={"eg": options})
    edges, k = 30, 20
    logits = module.evolve_on_noise(config, 0, edges, k)
    expected = (1 - 1 / k) * 0.25 * sum(1 / (t + 1) ** 2 for t in range(8))
    measured = float(logits.var(unbiased=False))  # centred per edge: mean 0 over each edge's K
    assert abs(logits.mean(-1)).max() < 1e-6  # float32 parameters
    assert measured == pytest.approx(expected, rel=0.12)  # 1,200 logits: sampling sd ~4%
