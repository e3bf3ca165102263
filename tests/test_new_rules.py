"""oja, wp and the rule modifiers (dale, bcm_lr) against independent float64 computations of
their formulas, the statistics of weight perturbation, and what the engine guarantees."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bionas import rules
from bionas.engine import initialise_weights, train_step


def _linear(rule, seed=0, **options):
    torch.manual_seed(seed)
    layer = nn.Linear(5, 4).double()
    return rules.convert(layer, rule, seed=seed, **options)


def _oja_reference(W, X, exclude_self):
    """Eq. 1 / eq. 2 sample by sample with loops: dW_ji = z_j (x_i - sum_k z_k W_ki), averaged."""
    out, inp = W.shape
    dW = torch.zeros_like(W)
    for x in X:
        z = W @ x
        for j in range(out):
            for i in range(inp):
                s = sum(z[k] * W[k, i] for k in range(out) if not (exclude_self and k == j))
                dW[j, i] += z[j] * (x[i] - s)
    return dW / len(X)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_oja_linear_matches_the_formula_in_float64(exclude_self):
    layer = _linear("oja", lr=0.1, exclude_self=exclude_self)
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)  # the update uses z = W x, without the bias
    X = torch.randn(7, 5, dtype=torch.float64)
    before = layer.weight.detach().clone()
    with rules.local_updates(layer):
        layer(X)
    expected = before + 0.1 * _oja_reference(before, X, exclude_self)
    assert torch.allclose(layer.weight, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_oja_convolution_treats_patches_as_inputs_within_groups(groups):
    torch.manual_seed(1)
    conv = rules.convert(nn.Conv2d(4, 4, 3, padding=1, groups=groups, bias=False).double(), "oja", seed=0, lr=0.2)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    W0 = conv.weight.detach().clone()
    with rules.local_updates(conv):
        conv(x)
    # independent: every (sample, position) is one input vector per group (unfolded patch)
    expected = torch.zeros_like(W0)
    per = 4 // groups
    for g in range(groups):
        patches = F.unfold(x[:, g * per:(g + 1) * per], 3, padding=1)  # (N, per*9, 25)
        X = patches.permute(0, 2, 1).reshape(-1, per * 9)
        Wg = W0[g * per:(g + 1) * per].reshape(per, -1)
        expected[g * per:(g + 1) * per] = _oja_reference(Wg, X, False).reshape(per, per, 3, 3)
    assert torch.allclose(conv.weight, W0 + 0.2 * expected, atol=1e-11, rtol=0)


def test_no_loss_gradient_reaches_oja_or_wp_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU(),
                        nn.Linear(5, 3))
    net[0] = rules.convert(net[0], "oja", seed=0)
    net[3] = rules.convert(net[3], "wp", seed=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
    train_step(net, opt, x, y, 0)
    assert net[0].weight.grad is None and net[3].weight.grad is None
    assert net[5].weight.grad is not None  # the bp layer learns by its gradient
    loss = F.cross_entropy(net(x), y)
    assert torch.autograd.grad(loss, [net[0].weight, net[3].weight], allow_unused=True) == (None, None)


def test_wp_expected_update_is_minus_the_gradient_for_small_sigma():
    """E[-(1/sigma^2) (E(W + xi) - E(W)) xi] = -grad E + O(sigma): the mean of M draws lies within
    4 standard errors of -grad E per weight (the standard error measured from the same draws)."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 3).double()
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    grad = torch.autograd.grad(F.cross_entropy(layer(x), y), layer.weight)[0]
    wp = rules.convert(layer, "wp", seed=3, lr=1.0, sigma=1e-3)
    loss = float(F.cross_entropy(wp(x), y))
    estimates = []
    for _ in range(4000):
        with rules.perturbed([wp]) as (xi,):
            change = float(F.cross_entropy(wp(x), y)) - loss
        estimates.append(-(1 / 1e-3 ** 2) * change * xi)
    est = torch.stack(estimates)
    mean, se = est.mean(0), est.std(0) / math.sqrt(len(est))
    assert ((mean + grad).abs() <= 4 * se + 1e-4).all(), (mean, -grad, se)
    cos = F.cosine_similarity(mean.flatten(), -grad.flatten(), dim=0)
    assert cos > 0.95


def test_wp_update_in_the_engine_is_eq3_with_the_engines_loss_change():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    net[2] = rules.convert(net[2], "wp", seed=5, lr=0.3, sigma=0.05)
    with torch.no_grad():
        net[2].weight[0, 0] = 0.0  # a pruned weight stays pruned (the mask of eq. 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    W0 = net[2].weight.detach().clone()
    draws = net[2].rule.draws
    # independent: the same noise (draw draws + 1), the losses with and without it
    xi = copy.deepcopy(net[2].rule).noise(net[2].weight)  # a copy draws what the step will draw
    with torch.no_grad():
        E = float(F.cross_entropy(net(x), y))
        net[2].weight.add_(xi)
        E_pert = float(F.cross_entropy(net(x), y))
        net[2].weight.copy_(W0)
    train_step(net, opt, x, y, 0)
    expected = W0 - (0.3 / 0.05 ** 2) * (E_pert - E) * xi * (W0 != 0)
    assert torch.allclose(net[2].weight, expected, atol=1e-9, rtol=0)
    assert net[2].weight[0, 0] == 0.0 and net[2].rule.draws == draws + 1


def test_local_rules_and_wp_are_still_outside_weight_training_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    net[0] = rules.convert(net[0], "oja", seed=0)
    net[2] = rules.convert(net[2], "wp", seed=1)
    state = {k: v.clone() for k, v in net.state_dict().items() if torch.is_tensor(v)}
    net.train()
    net(torch.randn(5, 4))  # a training-mode forward outside train_step: no update, no draw
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert net[2].rule.draws == 0


RULES_UNDER_DALE = ["bp", "fa", "usf", "brsf", "frsf", "oja", "wp", "hebbian"]


@pytest.mark.parametrize("rule", RULES_UNDER_DALE)
def test_dale_keeps_weights_non_negative_through_momentum_and_weight_decay(rule):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 3))
    rules.convert(net, f"{rule}+dale", seed=0)
    initialise_weights(net, "xavier", torch.Generator().manual_seed(0))
    dale_layers = [m for _, m in rules.rule_layers(net) if m.rule.active_modifiers]
    assert dale_layers
    for m in dale_layers:  # the paper's initialisation: U[0.01, 0.1]
        assert m.weight.min() >= 0.01 and m.weight.max() <= 0.1
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=0.05)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    moved = False
    for step in range(6):
        before = [m.weight.detach().clone() for m in dale_layers]
        train_step(net, opt, x, y, step)
        for m, b in zip(dale_layers, before):
            assert m.weight.min() >= 0, (rule, step)
            moved |= not torch.equal(m.weight, b)
    assert moved  # something learned (so the clamp was tested against real steps)


def _bcm_schedule(decay, t):
    t = min(max(t, 0.0), 1.0)
    return 1 - t if decay == "linear" else (2 - math.log(1 + (math.e ** 2 - 1) * t)) / 2


@pytest.mark.parametrize("decay", ["linear", "log"])
def test_bcm_lr_factors_never_rise_and_follow_the_schedule_after_the_threshold(decay):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    rules.convert(net, "usf+bcm_lr", seed=0, decay=decay, decay_steps=10, tau=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    mod = net[0].rule.active_modifiers[0]
    previous = torch.ones_like(net[0].weight)
    for step in range(25):
        train_step(net, opt, x, y, step)
        assert (mod.factor <= previous + 1e-7).all()
        previous = mod.factor.clone()
        crossed = mod.crossed_at >= 0
        expected = torch.tensor([_bcm_schedule(decay, (step - c) / 10) for c in mod.crossed_at[crossed].tolist()])
        assert torch.allclose(mod.factor[crossed], expected.float(), atol=1e-6)
        assert (mod.factor[~crossed] == 1).all()
    assert (mod.crossed_at >= 0).any() and (mod.factor == 0).any()  # the gate opened and ran its course


def test_bcm_lr_scales_the_gradient_the_optimiser_sees():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 3))
    rules.convert(net, "bp+bcm_lr", seed=0, statistic="error", error_threshold=10.0, decay_steps=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    W0 = net[0].weight.detach().clone()
    grad = torch.autograd.grad(F.cross_entropy(net(x), y), net[0].weight)[0]
    train_step(net, opt, x, y, 0)  # every weight below the (huge) error threshold: crossed at step 0, factor 1
    assert torch.allclose(net[0].weight, W0 - 0.1 * grad, atol=1e-6)
    W1 = net[0].weight.detach().clone()
    grad = torch.autograd.grad(F.cross_entropy(net(x), y), net[0].weight)[0]
    train_step(net, opt, x, y, 1)  # one step into a 4-step linear decay: factor 3/4
    assert torch.allclose(net[0].weight, W1 - 0.1 * 0.75 * grad, atol=1e-6)


def test_modified_rules_resume_bitwise_from_a_state_dict():
    def build():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        net[0] = rules.convert(net[0], "usf+bcm_lr", seed=0, tau=2, decay_steps=5)
        net[2] = rules.convert(net[2], "oja+dale", seed=1)
        net[4] = rules.convert(net[4], "wp+dale", seed=2, sigma=0.05)
        return net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    a, opt_a = build()
    for step in range(6):
        train_step(a, opt_a, x, y, step)
    b, opt_b = build()
    for step in range(3):
        train_step(b, opt_b, x, y, step)
    saved = (b.state_dict(), opt_b.state_dict())
    c, opt_c = build()
    c.load_state_dict(saved[0])
    opt_c.load_state_dict(saved[1])
    for step in range(3, 6):
        train_step(c, opt_c, x, y, step)
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values()):
        if torch.is_tensor(va):
            assert torch.equal(va, vc), k
    assert c[4].rule.draws == a[4].rule.draws == 6


def test_rule_names_with_modifiers_are_checked():
    from bionas.errors import ConfigError, UnknownNameError

    assert "usf+bcm_lr" in rules.RULES and "usf+nothing" not in rules.RULES
    with pytest.raises(UnknownNameError, match="unknown rule modifier 'nothing'"):
        rules.RULES.get("usf+nothing")
    with pytest.raises(ConfigError, match="bcm_lr gates loss gradients, and oja weights get none"):
        rules.RULES.get("oja+bcm_lr")
    with pytest.raises(ConfigError, match=r"does not take option\(s\) speed"):
        _linear("usf+dale", speed=1)


def test_bionas_plus_smoke_search_and_retraining_on_real_cifar10(cifar10_root, tmp_path):
    """The search over the space with the new rules derives a genotype of that space, and
    ``bionas train`` retrains it -- and a cell using every new rule -- with each edge's rule."""
    import json

    from bionas.cli import main
    from bionas.genotype import load_genotype
    from bionas.space import load_space

    data = ["--data-dir", str(cifar10_root)]
    assert main(["search", "--space", "bionas_plus", "--preset", "smoke", "--epochs", "1", "--set", "steps_per_epoch=2",
                 "--set", "per_class=10", "--batch-size", "16", "--set", "partial_channels=4", "--out",
                 str(tmp_path / "s"), "--no-progress", *data]) == 0
    searched = load_genotype(tmp_path / "s" / "genotype.json")
    assert searched.space == "bionas_plus"
    searched.validate(load_space("bionas_plus"))  # every (op, rule) one of the space's candidates
    every_new = ("Genotype(normal=[('sep_conv_3x3|oja', 0), ('conv_1x1|wp', 1), ('sep_conv_3x3|usf+bcm_lr', 0), "
                 "('dil_conv_3x3|brsf+bcm_lr', 1), ('conv_1x1|oja', 0), ('skip_connect', 1), ('max_pool_3x3', 0), "
                 "('dil_conv_3x3|oja', 2)], normal_concat=[2, 3, 4, 5], reduce=[('skip_connect|wp', 0), "
                 "('max_pool_3x3', 1), ('conv_1x1|wp', 0), ('sep_conv_3x3|usf', 1), ('avg_pool_3x3', 0), "
                 "('dil_conv_3x3|frsf', 1), ('sep_conv_3x3|fa', 0), ('skip_connect|usf', 1)], reduce_concat=[2, 3, 4, 5])")
    (tmp_path / "every_new.txt").write_text(every_new)
    for name, genotype in (("searched", tmp_path / "s" / "genotype.json"), ("every_new", tmp_path / "every_new.txt")):
        out = tmp_path / name
        assert main(["train", "--genotype", str(genotype), "--space", "bionas_plus", "--preset", "smoke", "--epochs",
                     "1", "--set", "per_class=10", "--set", "test_per_class=5", "--set", "steps_per_epoch=2",
                     "--out", str(out), "--no-progress", *data]) == 0
        counts = json.loads((out / "run_info.json").read_text())["rule_counts"]
        edges = load_genotype(genotype)
        # every rule of a convolution edge is in the network (a skip has weights only where it reduces)
        chosen = {e.rule for e in edges.normal + edges.reduce if e.rule != "bp" and "conv" in e.op}
        assert chosen <= set(counts), (chosen, counts)
        assert 0 <= json.loads((out / "results.json").read_text())["test_acc"] <= 1
    assert {"oja", "wp", "usf+bcm_lr", "brsf+bcm_lr"} <= set(counts)


def test_mlp_with_a_rule_per_layer_and_dale_on_real_cifar10(cifar10_root, tmp_path, monkeypatch):
    import bionas.train.run as train_run
    from bionas.cli import main
    from bionas.train import load_trained

    out = tmp_path / "mlp"
    assert main(["train", "--model", "mlp_zscore", "--set", "inputs=unit", "--set", "rule=bp",
                 "--set", "layer_rules={hidden: oja+dale, classifier: wp+dale}",
                 "--set", "rule_options={oja: {post: zscore}, wp: {mix: true, bias_gamma: 0.04}}",
                 "--epochs", "1", "--batch-size", "50", "--set", "per_class=10", "--set", "test_per_class=5",
                 "--data-dir", str(cifar10_root), "--out", str(out), "--no-progress"]) == 0
    net = load_trained(out / "checkpoint.pt").model  # rebuilt with each layer's rule from the checkpoint
    assert rules.rules_in(net) == {"hidden": "oja+dale", "classifier": "wp+dale"}
    assert (net.hidden.weight >= 0).all() and (net.classifier.weight >= 0).all()
    assert net.classifier.rule.draws > 0 and net.classifier.rule.mix
    # a layer name the model lacks is refused before the data is loaded (the whole training split here)
    monkeypatch.setattr(train_run, "load_dataset", lambda *a, **k: pytest.fail("loaded data for a bad layer name"))
    assert main(["train", "--model", "mlp", "--set", "layer_rules={decoder: oja}", "--out", str(tmp_path / "x"),
                 "--data-dir", str(cifar10_root)]) == 2
    assert not (tmp_path / "x").exists()


def test_zscore_op_variant_replaces_every_relu_and_is_a_space_candidate(tmp_path):
    from bionas import ops
    from bionas.candidate import Candidate
    from bionas.errors import ConfigError
    from bionas.ops.activation import MagnitudeZScore
    from bionas.rules.oja import magnitude_zscore
    from bionas.space import load_space

    y = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    z = magnitude_zscore(y, beta=2.0)
    a = y.abs().flatten(1)
    ref = torch.relu(2.0 * (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True))  # eq. 6, then ReLU
    ref = ref / ref.amax(1, keepdim=True)  # rescaled to [0, 1] per sample
    assert torch.allclose(z.flatten(1), ref, atol=1e-6)
    op = Candidate("sep_conv_3x3+zscore", "oja+dale").build(8, 2, seed=0)
    assert not any(isinstance(m, nn.ReLU) for m in op.modules())
    assert sum(isinstance(m, MagnitudeZScore) for m in op.modules()) == 2
    assert op(torch.randn(2, 8, 6, 6)).shape == (2, 8, 3, 3)
    assert "max_pool_3x3+zscore" not in ops.OPS
    with pytest.raises(ConfigError, match="op max_pool_3x3 has no ReLU"):
        ops.OPS.get("max_pool_3x3+zscore")
    space = tmp_path / "excitatory.yaml"
    space.write_text("name: excitatory\ncandidates:\n  none: []\n  sep_conv_3x3+zscore: [oja+dale, bp+dale]\n"
                     "  conv_1x1+zscore: [wp+dale]\nsupernet: {channels: 8, cells: 3, nodes: 4}\n")
    assert len(load_space(str(space)).candidates) == 4
