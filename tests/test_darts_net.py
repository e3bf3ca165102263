"""The DARTS evaluation networks built from genotypes: sizes, rules in force, every candidate."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bionas import ops, rules
from bionas.candidate import Candidate
from bionas.errors import BionasError
from bionas.models.darts_net import NetworkCIFAR, NetworkImageNet
from bionas.models.genotypes import GENOTYPES, resolve_genotype, with_random_rules, with_rule
from bionas.genotype import Edge, Genotype
from bionas.space import load_space


@pytest.fixture(scope="module")
def batch(cifar10_root):
    from bionas.data import BatchLoader, load_dataset

    data = load_dataset("cifar10", cifar10_root, "train", per_class=1, seed=0)
    return next(iter(BatchLoader(data, 10, shuffle=False)))


def uniform_genotype(op: str, rule: str) -> Genotype:
    """Every edge of both cells is ``op|rule`` (node k takes inputs k-2 and k-1)."""
    edges = tuple(Edge(node, source, op, rule) for node in range(2, 6) for source in (node - 2, node - 1))
    return Genotype(edges, (2, 3, 4, 5), edges, (2, 3, 4, 5))


def test_darts_v2_has_the_published_size():
    """3.3M parameters on CIFAR-10 (DARTS Table 1; the reference code counts 3,349,342 without the
    auxiliary head) and 4.7M on ImageNet (DARTS Table 2)."""
    g = resolve_genotype("darts_v2")
    cifar = NetworkCIFAR(g, 10, C=36, layers=20, auxiliary=True)
    assert sum(p.numel() for n, p in cifar.named_parameters() if "auxiliary" not in n) == 3_349_342
    imagenet = NetworkImageNet(g, 1000, C=48, layers=14, auxiliary=False)
    assert 4.65e6 < sum(p.numel() for p in imagenet.parameters()) < 4.75e6
    assert set(GENOTYPES.names()) >= {"darts_v1", "darts_v2"}


def _registered_candidates() -> list[Candidate]:
    """Every registered op (but ``none``) with every feedback rule that can learn it; weightless ops bare."""
    out = []
    for op in ops.OPS:
        if op == "none":
            continue
        if not ops.has_weights(op):
            out.append(Candidate(op))
            continue
        out += [Candidate(op, r) for r in rules.RULES if rules.RULES.get(r).kind == "feedback"
                and all(issubclass(t, rules.RULES.get(r).layer_types) for t in ops.weighted_layer_types(op))]
    return out


@pytest.mark.parametrize("candidate", _registered_candidates(), ids=str)
def test_every_registered_candidate_builds_and_trains_a_step(candidate, batch):
    x, y = batch
    torch.manual_seed(0)
    net = NetworkCIFAR(uniform_genotype(candidate.op, candidate.rule), 10, C=4, layers=3, auxiliary=True)
    net.drop_prob = 0.2
    net.train()
    logits, aux = net.forward_with_aux(x)
    assert logits.shape == aux.shape == (10, 10)
    loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    assert torch.isfinite(loss)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    # the rule in force on every edge is the genotype's
    for cell in net.cells:
        for op in cell.ops:
            found = set(rules.rules_in(op).values())
            weighted = any(isinstance(m, nn.Conv2d) for m in op.modules())
            assert found == ({candidate.rule} if weighted else set())


def test_searched_genotype_rules_are_in_force_edge_by_edge():
    space = load_space("bionas")
    g = with_random_rules(resolve_genotype("darts_v2"), space, seed=3)
    net = NetworkCIFAR(g, 10, C=4, layers=3)
    for cell in net.cells:
        edges = g.reduce if cell.reduction else g.normal
        for edge, op in zip(edges, cell.ops):
            rules_of_op = set(rules.rules_in(op).values())
            assert rules_of_op == ({edge.rule} if rules_of_op else set()), (edge, rules_of_op)
    # the unsearched parts learn by backprop
    assert not rules.rules_in(net.stem) and not rules.rules_in(net.classifier)


def test_rule_overrides():
    g = resolve_genotype("darts_v2")
    usf = with_rule(g, "usf")
    assert {e.rule for e in usf.normal + usf.reduce if e.op != "max_pool_3x3"} == {"usf"}
    assert {e.rule for e in usf.reduce if e.op == "max_pool_3x3"} == {"bp"}  # no weights, no rule
    space = load_space("bionas")
    a, b = (with_random_rules(g, space, seed=s) for s in (1, 1))
    assert a == b
    allowed = {(c.op, c.rule) for c in space.candidates}
    assert all((e.op, e.rule) in allowed for e in a.normal + a.reduce)
    draws = {tuple(e.rule for e in with_random_rules(g, space, seed=s).normal) for s in range(20)}
    assert len(draws) > 10  # rules are really drawn
    with pytest.raises(BionasError, match="rule 'hebb'|unknown rule 'hebb'"):
        with_rule(g, "hebb")
    with pytest.raises(BionasError, match="unknown genotype 'darts_v9'"):
        resolve_genotype("darts_v9")


def test_drop_path_uses_the_networks_own_generator_and_resumes(batch):
    x, _ = batch
    g = resolve_genotype("darts_v2")
    net = NetworkCIFAR(g, 10, C=4, layers=3, auxiliary=False, seed=1)
    net.drop_prob = 0.5
    net.train()
    state = copy_state(net)
    torch.manual_seed(0)
    global_rng = torch.get_rng_state()
    first = net(x)
    assert torch.equal(torch.get_rng_state(), global_rng)  # the global RNG is not used
    second = net(x)
    assert not torch.allclose(first, second)  # fresh masks each forward
    net.load_state_dict(state)  # restores the drop-path generator with the weights
    assert torch.equal(net(x), first)
    net.eval()
    assert torch.equal(net(x), net(x))  # no drop path in evaluation


def copy_state(net):
    import copy

    return copy.deepcopy(net.state_dict())


def test_imagenet_network_shapes():
    g = resolve_genotype("darts_v1")
    net = NetworkImageNet(g, 7, C=8, layers=3, auxiliary=True).train()
    x = torch.zeros(2, 3, 224, 224)
    logits, aux = net.forward_with_aux(x)
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    assert net.eval()(x).shape == (2, 7)


@pytest.mark.parametrize("name", GENOTYPES.names())
def test_every_registered_genotype_is_valid_in_the_darts_space_and_builds(name, batch):
    genotype = resolve_genotype(name, load_space("darts"))
    net = NetworkCIFAR(genotype, 10, C=4, layers=3, auxiliary=False).eval()
    with torch.no_grad():
        assert net(batch[0]).shape == (10, 10)
    assert set(rules.rules_in(net).values()) == {"bp"}  # published genotypes are backprop cells
