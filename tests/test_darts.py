"""The DARTS strategy: the second-order gradient against a direct computation, and its state."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bionas import rules
from bionas.space import SupernetShape, space_from_dict
from bionas.search.config import SearchConfig
from bionas.search.darts import DartsStrategy
from bionas.search.strategy import preserved_batchnorm_statistics
from bionas.search.supernet import Supernet

SMALL = SupernetShape(channels=4, cells=3, nodes=2)  # the spaces below have 2 nodes
BP_SPACE = {"name": "bp", "supernet": {"nodes": 2}, "candidates": {"none": [], "max_pool_3x3": [], "skip_connect": ["bp"],
                                         "sep_conv_3x3": ["bp"]}}


@pytest.fixture(scope="module")
def batches(cifar10_root):
    from bionas.data import BatchLoader, load_dataset

    data = load_dataset("cifar10", cifar10_root, "train", per_class=2, seed=0)
    x, y = next(iter(BatchLoader(data, 20, shuffle=False)))
    x = x[:, :, 8:24, 8:24]  # a 16x16 centre crop keeps the double-precision graph small
    return (x[:10], y[:10]), (x[10:], y[10:])


def test_unrolled_gradient_matches_the_direct_second_order_gradient(batches):
    """DARTS' finite-difference Hessian-vector product against autograd through the unrolled step.

    Direct: a' = d/da L_val(w'(a), a) with w'(a) = w - lr * ((1 + mu) (g(a) + wd w) + mu^2 buf), the
    Nesterov step from an existing momentum buffer, differentiated exactly by double backward.
    In double precision with a tiny radius: the architecture gradient of a ReLU/max-pool network
    is only piecewise smooth -- on this batch a ReLU or max-pool switch lies 5e-5 away along the
    direction used -- so DARTS' radius of 0.01 (chosen against float32 noise) measures the kinks it
    crosses, not the algebra under test.
    """
    (xt, yt), (xv, yv) = [(x.double(), y) for x, y in batches]
    net = Supernet(space_from_dict(BP_SPACE), 3, 10, seed=0, shape=SMALL).double()
    lr, mu, wd = 0.05, 0.9, 3e-4
    config = SearchConfig(lr=lr, momentum=mu, nesterov=True, weight_decay=wd, epochs=2,
                          strategy_options={"darts": {"order": "second", "hessian": "finite_difference",
                                                      "unrolled_radius": 1e-7}})
    strategy = DartsStrategy(net, config)
    strategy.train_weights((xt, yt), step=0)  # momentum buffers now exist
    with preserved_batchnorm_statistics(net):
        finite_difference, _, _ = strategy.unrolled_gradient((xt, yt), (xv, yv))

        names, params = zip(*net.named_weight_parameters())
        alphas = net.arch_parameters()
        grads = torch.autograd.grad(F.cross_entropy(net(xt), yt), params, create_graph=True)
        unrolled = {}
        for n, p, g in zip(names, params, grads):
            buf = strategy.weight_optimizer.state[p]["momentum_buffer"]
            unrolled[n] = p - lr * ((1 + mu) * (g + wd * p) + mu * mu * buf)
        val_loss = F.cross_entropy(functional_call(net, unrolled, (xv,)), yv)
        direct = torch.autograd.grad(val_loss, alphas)
        # the same loss with w' held fixed: the first term alone
        fixed = {n: w.detach() for n, w in unrolled.items()}
        partial = torch.autograd.grad(F.cross_entropy(functional_call(net, fixed, (xv,)), yv), alphas)

    for fd, exact, first in zip(finite_difference, direct, partial):
        implicit = (exact - first).norm()
        assert implicit > 1e-3 * exact.norm()  # the second-order term matters here ...
        assert (fd - exact).norm() < 1e-3 * implicit  # ... and the finite difference gets it right


def test_virtual_step_is_what_sgd_does(batches):
    (x, y), _ = batches
    for nesterov, momentum in [(True, 0.9), (False, 0.9), (False, 0.0)]:
        net = Supernet(space_from_dict(BP_SPACE), 3, 10, seed=0, shape=SMALL)
        strategy = DartsStrategy(net, SearchConfig(momentum=momentum, nesterov=nesterov, epochs=2))
        for step in range(2):  # from no momentum buffer, then from one
            net.zero_grad()
            F.cross_entropy(net(x), y).backward()
            predicted = [strategy.virtual_step(p, p.grad) for p in net.weight_parameters()]
            strategy.weight_optimizer.step()
            for p, q in zip(net.weight_parameters(), predicted):
                torch.testing.assert_close(p.detach(), q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("hessian,draws", [("finite_difference", 3), ("exact", 2)])
def test_second_order_step_uses_one_brsf_draw_for_both_sides_of_the_difference(batches, hessian, draws):
    space = space_from_dict({"name": "b", "supernet": {"nodes": 2}, "candidates": {"none": [], "sep_conv_3x3": ["brsf"]}})
    net = Supernet(space, 3, 10, seed=0, shape=SMALL)
    strategy = DartsStrategy(net, SearchConfig(epochs=2, strategy_options={"darts": {"order": "second",
                                                                                     "hessian": hessian}}))
    layers = [layer for _, layer in rules.rule_layers(net)]
    before = [layer.rule.draws for layer in layers]
    strategy.update_architecture(*batches, step=0)
    # forwards at w (training gradient) and w' (validation); the finite difference adds w + eps v
    # (a redraw) and w - eps v (reusing it); the exact term differentiates the graph at w
    assert [layer.rule.draws - b for layer, b in zip(layers, before)] == [draws] * len(layers)
    assert all(layer.rule.training for layer in layers)  # rules back in training mode


def test_exact_architecture_gradient_differs_from_the_rule_path(batches):
    space = space_from_dict({"name": "f", "supernet": {"nodes": 2}, "candidates": {"skip_connect": ["fa"], "sep_conv_3x3": ["fa"]}})
    grads = {}
    for mode in ("rule", "exact"):
        net = Supernet(space, 3, 10, seed=0, shape=SMALL)
        strategy = DartsStrategy(net, SearchConfig(epochs=2, strategy_options={"darts": {"arch_gradient": mode, "arch_lr": 1e-2}}))
        before = net.alpha_normal.detach().clone()
        strategy.update_architecture(*batches, step=0)
        grads[mode] = net.alpha_normal.detach() - before
    assert not torch.allclose(grads["rule"], grads["exact"])


def test_state_dict_round_trip_continues_identically(batches):
    space = space_from_dict({"name": "m", "supernet": {"nodes": 2}, "candidates": {"none": [], "skip_connect": ["usf"],
                                                         "sep_conv_3x3": ["brsf", "fa"]}})

    def fresh():
        net = Supernet(space, 3, 10, seed=3, shape=SMALL)
        return net, DartsStrategy(net, SearchConfig(epochs=4, strategy_options={"darts": {"order": "second"}}))

    net, strategy = fresh()
    strategy.step(*batches, step=0)
    strategy.end_epoch()
    # deep copies: state dicts hold references to tensors the next step changes in place
    saved_model, saved_strategy = copy.deepcopy(net.state_dict()), copy.deepcopy(strategy.state_dict())
    strategy.step(*batches, step=1)

    net2, strategy2 = fresh()
    net2.load_state_dict(saved_model)
    strategy2.load_state_dict(saved_strategy)
    assert strategy2.lr == pytest.approx(strategy.scheduler.get_last_lr()[0])
    strategy2.step(*batches, step=1)
    for (name, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    assert net.genotype() == net2.genotype()


DARTS_SPACE_FEEDBACK = {"name": "mix", "candidates": {
    "none": [], "max_pool_3x3": [], "avg_pool_3x3": [], "skip_connect": ["usf"],
    "sep_conv_3x3": ["fa", "usf", "frsf"], "dil_conv_3x3": ["bp", "fa"]}}


def _direct_hypergradient(strategy, net, train, val, lr, mu, wd):
    """d/da L_val(w'(a), a), w'(a) = w - lr ((1 + mu)(g(a) + wd w) + mu^2 buf): autograd through the
    unrolled Nesterov step, the gradients g(a) kept differentiable (an independent route: no
    Hessian-vector product is formed)."""
    names, params = zip(*net.named_weight_parameters())
    grads = torch.autograd.grad(F.cross_entropy(net(train[0]), train[1]), params, create_graph=True,
                                allow_unused=True)
    unrolled = {}
    for n, p, g in zip(names, params, grads):
        buf = strategy.weight_optimizer.state[p]["momentum_buffer"]
        step = (1 + mu) * ((0 if g is None else g) + wd * p) + mu * mu * buf
        unrolled[n] = p - lr * step
    return torch.autograd.grad(F.cross_entropy(functional_call(net, unrolled, (val[0],)), val[1]),
                               net.arch_parameters())


@pytest.mark.parametrize("arch_gradient", ["exact", pytest.param("rule", marks=pytest.mark.slow)])  # rule: -m slow
def test_exact_second_order_equals_autograd_through_the_unrolled_step_at_realistic_size(cifar10_root, arch_gradient):
    """The DARTS supernet layout (4 nodes, 14 edges, 5 cells with two reductions) of 8 channels over
    a mixed-rule space, full 32x32 real CIFAR-10 images, float64, after a weight step (so the
    Nesterov momentum enters w')."""
    from bionas.data import BatchLoader, load_dataset

    data = load_dataset("cifar10", cifar10_root, "train", per_class=2, seed=1)
    x, y = next(iter(BatchLoader(data, 12, shuffle=False)))
    train, val = (x[:6].double(), y[:6]), (x[6:].double(), y[6:])
    net = Supernet(space_from_dict(DARTS_SPACE_FEEDBACK), 3, 10, seed=0,
                   shape=SupernetShape(channels=8, cells=5, nodes=4)).double()
    lr, mu, wd = 0.05, 0.9, 3e-4
    config = SearchConfig(lr=lr, momentum=mu, nesterov=True, weight_decay=wd, epochs=2,
                          strategy_options={"darts": {"order": "second", "arch_gradient": arch_gradient}})
    strategy = DartsStrategy(net, config)
    strategy.train_weights(train, step=0)  # momentum buffers now exist
    with preserved_batchnorm_statistics(net), strategy.architecture_gradient_mode():
        exact, _, _ = strategy.unrolled_gradient(train, val)
        direct = _direct_hypergradient(strategy, net, train, val, lr, mu, wd)
    for got, want in zip(exact, direct):
        assert torch.isfinite(got).all() and want.norm() > 0
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))
