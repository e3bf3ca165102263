"""The supernet: structure, mixing, rules per candidate, seeding, and what each step may touch."""
import numpy as np
import pytest
import torch
from torch import nn

from bionas import rules
from bionas.ops import FactorizedReduce
from bionas.space import SupernetShape, load_space, space_from_dict
from bionas.search.config import SearchConfig
from bionas.search.darts import DartsStrategy
from bionas.search.strategy import preserved_batchnorm_statistics
from bionas.search.supernet import MixedEdge, Supernet

SMALL = SupernetShape(channels=4, cells=3, nodes=4)
MIXED_RULES = {"name": "mixed", "candidates": {"none": [], "max_pool_3x3": [], "skip_connect": ["usf"],
                                               "sep_conv_3x3": ["fa", "brsf"], "dil_conv_3x3": ["frsf"]}}


@pytest.fixture(scope="module")
def images(cifar10_root):
    from bionas.data import BatchLoader, load_dataset

    data = load_dataset("cifar10", cifar10_root, "train", per_class=2, seed=0)
    return next(iter(BatchLoader(data, 20, shuffle=False)))  # (20, 3, 32, 32) real images, labels


def test_bionas_supernet_structure():
    space = load_space("bionas")
    net = Supernet(space, 3, 10, seed=0, shape=SupernetShape(channels=4, cells=5))
    assert [c.reduction for c in net.cells] == [False, True, False, True, False]  # cells // 3, 2 * cells // 3
    for cell in net.cells:
        assert len(cell.edges) == 14
        assert all(len(edge.ops) == 22 for edge in cell.edges)
    assert isinstance(net.cells[2].preprocess0, FactorizedReduce)  # after a reduction
    assert net.alpha_normal.shape == net.alpha_reduce.shape == (14, 22)
    # channels double at each reduction: 4 -> 8 -> 16, and the classifier sees 4 nodes * 16
    assert net.cells[1].preprocess1.op[1].out_channels == 8 and net.cells[3].preprocess1.op[1].out_channels == 16
    assert net.classifier.in_features == 4 * 16
    # every pair has its own weights: no parameter is shared between two candidates
    ids = [id(p) for p in net.parameters()]
    assert len(ids) == len(set(ids))
    # pooling candidates are followed by a non-affine batch norm, as in DARTS
    for edge in net.cells[0].edges:
        for cand, op in zip(edge.candidates, edge.ops):
            is_pool = cand.op.endswith("pool_3x3")
            assert is_pool == (isinstance(op, nn.Sequential) and isinstance(op[-1], nn.BatchNorm2d))
            if is_pool:
                assert not op[-1].affine


def test_each_candidate_learns_by_its_own_rule():
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL)
    for cell in net.cells:
        for edge in cell.edges:
            for cand, op in zip(edge.candidates, edge.ops):
                found = set(rules.rules_in(op).values())
                expected = {cand.rule} if any(isinstance(m, nn.Conv2d) for m in op.modules()) else set()
                assert found == expected, (cand, found)
    # the unsearched stem, pre-processing and classifier stay plain (backprop) layers
    assert not rules.rules_in(net.stem) and not rules.rules_in(net.cells[0].preprocess0)


def test_arch_logits_are_parameters_kept_out_of_the_weights():
    net = Supernet(load_space("darts"), 3, 10, seed=0, shape=SMALL)
    arch = {id(p) for p in net.arch_parameters()}
    assert all(isinstance(p, nn.Parameter) for p in net.arch_parameters())
    assert arch <= {id(p) for p in net.parameters()}  # saved with the model ...
    assert not arch & {id(p) for p in net.weight_parameters()}  # ... but not trained as weights
    assert sum(1 for _ in net.weight_parameters()) == sum(1 for _ in net.parameters()) - 2
    assert "alpha_normal" in net.state_dict()


def test_mixed_edge_is_the_weighted_sum_of_its_candidates(images):
    x = images[0][:4, :, :8, :8]
    edge = MixedEdge(space_from_dict(MIXED_RULES).candidates, 3, stride=1, seed=0).eval()
    w = torch.tensor([0.1, 0.3, 0.2, 0.15, 0.05, 0.2])
    with torch.no_grad():
        expected = sum(wk * op(x) for wk, op in zip(w, edge.ops))  # candidate by candidate
        assert torch.allclose(edge(x, w), expected, atol=1e-6)
        for k, op in enumerate(edge.ops):  # a one-hot mixture is that candidate alone
            assert torch.allclose(edge(x, torch.eye(len(w))[k]), op(x), atol=1e-6)


def test_forward_takes_the_mixing_weights_as_an_argument(images):
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL).eval()
    x = images[0][:4]
    with torch.no_grad():
        default = net(x)
        assert default.shape == (4, 10)
        assert torch.equal(default, net(x, net.mixing_weights()))
        E, K = net.alpha_normal.shape
        other = (torch.eye(K)[torch.zeros(E, dtype=torch.long) + 3], torch.full((E, K), 1.0 / K))
        assert not torch.allclose(default, net(x, other))
    with pytest.raises(ValueError, match=r"mixing weights must be two \(14, 6\) tensors"):
        net(x, (torch.ones(14, 5), torch.ones(14, 5)))


def test_same_seed_same_supernet_whatever_the_global_rng():
    space = space_from_dict(MIXED_RULES)
    torch.manual_seed(1)
    a = Supernet(space, 3, 10, seed=7, shape=SMALL)
    torch.manual_seed(2)
    b = Supernet(space, 3, 10, seed=7, shape=SMALL)
    c = Supernet(space, 3, 10, seed=8, shape=SMALL)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))
    assert sa.keys() == sb.keys()
    assert not torch.equal(sa["alpha_normal"], sc["alpha_normal"])
    assert not torch.equal(sa["stem.0.weight"], sc["stem.0.weight"])


def test_odd_channels_other_node_counts_and_unknown_init_are_refused():
    from bionas.errors import ConfigError

    with pytest.raises(ConfigError, match="channels must be a multiple of 2 x partial_channels"):
        Supernet(load_space("darts"), 3, 10, shape=SupernetShape(channels=5, cells=3))
    with pytest.raises(ConfigError, match="unknown init 'he'"):
        Supernet(load_space("darts"), 3, 10, shape=SMALL, init="he")
    with pytest.raises(ConfigError, match="has 4 nodes per cell, the supernet shape 3"):
        Supernet(load_space("darts"), 3, 10, shape=SupernetShape(channels=4, cells=3, nodes=3))


def _bn_stats(net):
    return [b.clone() for n, b in net.named_buffers() if "running" in n or "num_batches" in n]


@pytest.mark.parametrize("order", ["first", "second"])
def test_architecture_step_moves_only_the_logits(images, order):
    x, y = images
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL)
    strategy = DartsStrategy(net, SearchConfig(epochs=2, strategy_options={"darts": {"order": order}}))
    weights = [p.detach().clone() for p in net.weight_parameters()]
    alphas = [a.detach().clone() for a in net.arch_parameters()]
    stats = _bn_stats(net)
    metrics = strategy.update_architecture((x[:10], y[:10]), (x[10:], y[10:]), step=0)
    assert set(metrics) == {"arch_loss", "arch_acc"}
    assert all(torch.equal(a, b) for a, b in zip(weights, net.weight_parameters()))
    assert all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(net)))  # validation data leaves no trace
    assert all(not torch.equal(a, b) for a, b in zip(alphas, net.arch_parameters()))


def test_weight_step_moves_only_the_weights(images):
    x, y = images
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL)
    strategy = DartsStrategy(net, SearchConfig(epochs=2))
    alphas = [a.detach().clone() for a in net.arch_parameters()]
    weights = [p.detach().clone() for p in net.weight_parameters()]
    strategy.train_weights((x, y), step=0)
    assert all(torch.equal(a, b) for a, b in zip(alphas, net.arch_parameters()))
    assert all(a.grad is None for a in net.arch_parameters())
    # every weight of every candidate gets a non-zero gradient and moves
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.weight_parameters())
    assert all(not torch.equal(a, b) for a, b in zip(weights, net.weight_parameters()))


def test_preserved_batchnorm_statistics_restores_on_error(images):
    net = Supernet(load_space("darts"), 3, 10, seed=0, shape=SMALL).train()
    before = _bn_stats(net)
    with pytest.raises(RuntimeError):
        with preserved_batchnorm_statistics(net):
            net(images[0][:4])
            raise RuntimeError("interrupted")
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(net)))


def test_evaluation_uses_batch_statistics_and_leaves_no_trace(images):
    from bionas.search.strategy import evaluate_supernet

    x, y = images
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL).train()
    brsf = [layer.rule for _, layer in rules.rule_layers(net) if layer.rule.name == "brsf"]
    stats, draws = _bn_stats(net), [r.draws for r in brsf]
    loss, acc = evaluate_supernet(net, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert all(torch.equal(a, b) for a, b in zip(stats, _bn_stats(net)))
    assert draws == [r.draws for r in brsf] and net.training
    with torch.no_grad():  # independently: training-mode forwards, batch by batch
        logits = torch.cat([net(x[:10]), net(x[10:])])
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == y).float().mean()))


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_a_population_forward_equals_separate_forwards_and_keeps_running_statistics(images, partial_channels):
    """P architectures in one pass == P training-mode passes, each with its own batch statistics."""
    from bionas.search.strategy import no_feedback_redraws

    x = images[0][:6].double()
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL,
                   partial_channels=partial_channels).double().train()
    E, K = net.alpha_normal.shape
    gen = torch.Generator().manual_seed(1)
    normal = torch.softmax(torch.randn(3, E, K, generator=gen, dtype=torch.float64), -1)
    reduce = torch.softmax(torch.randn(3, E, K, generator=gen, dtype=torch.float64), -1)
    cells = net.cells  # the stem sees one ordinary batch and updates its statistics as usual
    stats = {k: v.clone() for k, v in cells.state_dict().items() if "running" in k}
    with torch.no_grad(), no_feedback_redraws(net):
        together = net(x, (normal, reduce))  # (3, 6, 10)
        after_population = {k: v.clone() for k, v in cells.state_dict().items() if "running" in k}
        apart = torch.stack([net(x, (normal[p], reduce[p])) for p in range(3)])
    torch.testing.assert_close(together, apart, rtol=1e-9, atol=1e-11)
    assert stats  # the cells hold batch norms with running statistics
    for k, v in stats.items():  # the population pass left every running statistic of the cells alone
        torch.testing.assert_close(after_population[k], v, rtol=0, atol=0)
    assert all(bn.population == 0 for bn in net._population_bns)  # switched back off


def test_partial_channel_edges_mix_a_kth_of_the_channels_and_shuffle_the_rest_through():
    """PC-DARTS' edge: candidates on the first C/K channels, the rest bypassed (max-pooled at
    stride 2), then a channel shuffle; checked against the formula written out."""
    from bionas.search.supernet import MixedEdge

    space = space_from_dict(MIXED_RULES)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    for stride in (1, 2):
        edge = MixedEdge(space.candidates, 8, stride, seed=0, partial_channels=4).eval()
        assert all(m.in_channels == 2 for m in edge.modules() if isinstance(m, torch.nn.Conv2d))
        w = torch.softmax(torch.randn(len(space)), 0)
        got = edge(x, w)
        mixed = sum(w[k] * op(x[:, :2]) for k, op in enumerate(edge.ops))  # (2, 2, H', W')
        rest = x[:, 2:] if stride == 1 else torch.nn.functional.max_pool2d(x[:, 2:], 2, 2, ceil_mode=True)
        both = torch.cat([mixed, rest], 1)  # channels [m0, m1, r0..r5]
        want = both[:, [0, 2, 4, 6, 1, 3, 5, 7]]  # the shuffle: group g's i-th channel to i * 4 + g
        torch.testing.assert_close(got, want)


def test_partial_channels_add_edge_weights_that_darts_trains_and_the_genotype_uses(images):
    x, y = images[0][:8], images[1][:8]
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL, partial_channels=2)
    full = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL)
    assert len(net.arch_parameters()) == 4 and len(full.arch_parameters()) == 2
    torch.testing.assert_close(net.alpha_normal, full.alpha_normal)  # the same seed, the same logits
    weights = net.mixing_weights()
    assert weights[2].shape == (SMALL.edges_per_cell,)
    sums = [float(w.detach().sum()) for w in weights[2].split([2, 3, 4, 5])]  # each node's edges sum to 1
    assert sums == pytest.approx([1.0] * 4)
    strategy = DartsStrategy(net, SearchConfig(epochs=2, strategy_options={"darts": {"arch_lr": 0.1}}))
    before = [p.detach().clone() for p in net.arch_parameters()]
    strategy.update_architecture((x, y), (x, y), step=0)
    assert all(not torch.equal(a, p) for a, p in zip(before, net.arch_parameters()))  # betas move too
    # an edge the edge weights favour wins its node even when its candidates weigh less
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.alpha_normal[0, 3] = 2.0  # edge 0 (node 2 <- input 0): sep_conv_3x3|fa strong
        net.alpha_normal[1, 4] = 1.0  # edge 1 (node 2 <- input 1): weaker
        net.beta_normal.zero_()
        net.beta_normal[1] = 5.0  # but node 2 trusts edge 1 far more
    plain = full.genotype((torch.softmax(net.alpha_normal, -1), torch.softmax(net.alpha_reduce, -1)))
    edges = {(e.node, e.source): e for e in net.genotype().normal}
    assert (2, 1) in edges and (2, 1) in {(e.node, e.source) for e in plain.normal}


LOCAL_AND_RANDOM = {"name": "local", "candidates": {"none": [], "max_pool_3x3": [], "skip_connect": ["brsf"],
                                                    "sep_conv_3x3": ["fa", "brsf", "hebbian", "pc"]}}


@pytest.mark.parametrize("order", ["first", pytest.param("second", marks=pytest.mark.slow)])  # ~25 s: in -m slow
def test_checkpointed_cells_give_the_search_steps_of_kept_activations(images, order):
    """Recomputing cells in the backward changes nothing: brSF's feedback (redrawn each
    forward), the Hebbian and pc layers' local updates, batch-norm running statistics, logits and
    weights after two search steps equal those of the supernet that keeps its activations (float64)."""
    x, y = images
    x = x.double()
    states = []
    for checkpoint in (False, True):
        net = Supernet(space_from_dict(LOCAL_AND_RANDOM), 3, 10, seed=0, shape=SMALL,
                       checkpoint_cells=checkpoint).double()
        strategy = DartsStrategy(net, SearchConfig(epochs=2, strategy_options={"darts": {"order": order}}))
        start = {k: v.clone() for k, v in net.state_dict().items() if torch.is_tensor(v)}
        local = [f"{name}.weight" for name, layer in rules.rule_layers(net) if layer.rule.kind == "local"]
        for step in range(2):
            strategy.step((x[:6], y[:6]), (x[6:12], y[6:12]), step)
        states.append(net.state_dict())
    kept, recomputed = states
    assert kept.keys() == recomputed.keys()
    for k in kept:
        if torch.is_tensor(kept[k]) and kept[k].is_floating_point():
            assert torch.allclose(kept[k], recomputed[k], rtol=1e-9, atol=1e-12), k
        else:
            assert str(kept[k]) == str(recomputed[k]), k  # brSF's draw counters
    assert local and all(not torch.equal(kept[k], start[k]) for k in local)  # the local rules did learn


def test_checkpointed_cells_keep_a_fraction_of_the_activations(images):
    x, y = images

    def kept_bytes(checkpoint: bool) -> int:
        net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL, checkpoint_cells=checkpoint)
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = nn.functional.cross_entropy(net(x), y)
        weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
        loss.backward()  # and the backward, recomputing, still works
        return sum(n for ptr, n in storages.items() if ptr not in weights)

    assert kept_bytes(True) < 0.2 * kept_bytes(False)  # cell inputs only, against every op's activations


@pytest.mark.slow  # ~15 s each on 2 cores; bf16 autocast is for CUDA
@pytest.mark.parametrize("method", ["darts", "eg"])
def test_bf16_autocast_search_steps_keep_float32_weights_and_finite_gradients(images, method):
    """``amp: bf16``: the forward passes run in bf16, every rule's backward hands float32
    gradients to the float32 weights and logits, and the steps move them."""
    from bionas.search.strategy import STRATEGIES

    x, y = images
    net = Supernet(space_from_dict(MIXED_RULES), 3, 10, seed=0, shape=SMALL)
    options = {"eg": {"warmup_epochs": 0, "population": 4, "restarts": 1}}
    strategy = STRATEGIES.get(method)(net, SearchConfig(epochs=2, amp="bf16", strategy_options=options))
    before = {k: v.clone() for k, v in net.state_dict().items() if torch.is_tensor(v)}
    metrics = strategy.step((x[:10], y[:10]), (x[10:], y[10:]), 0)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in net.weight_parameters())
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    moved = [k for k in before if not torch.equal(before[k], net.state_dict()[k])]
    assert "stem.0.weight" in moved and ("alpha_normal" in moved or method == "eg")
    if method == "eg":
        assert strategy.fitness_log and all(np.isfinite(r["selected_ce"]) for r in strategy.fitness_log)
