"""The local rules (hebbian, pc): updates against formulas written out here, and when they happen.

Every reference below works on explicit input patches (``F.unfold``) with einsum and loops, not on
the convolution helpers the rules use, in double precision on crops of real CIFAR-10 images.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bionas import rules
from bionas.errors import ConfigError
from bionas.space import SupernetShape, space_from_dict
from bionas.search.config import SearchConfig
from bionas.search.darts import DartsStrategy
from bionas.search.eg import EvolutionaryStrategy
from bionas.search.supernet import Supernet

LOCAL_SPACE = {"name": "local", "supernet": {"nodes": 2},
               "candidates": {"none": [], "skip_connect": ["usf"], "sep_conv_3x3": ["hebbian", "pc"],
                              "dil_conv_3x3": ["hebbian", "fa"]}}
SHAPE = SupernetShape(channels=4, cells=3, nodes=2)


@pytest.fixture(scope="module")
def images(cifar10_root):
    """(20, 3, 32, 32) real CIFAR-10 training images in [0, 1], two per class, float64."""
    from bionas.data import BatchLoader, load_dataset

    data = load_dataset("cifar10", cifar10_root, "train", per_class=2, seed=0)
    x, y = next(iter(BatchLoader(data, 20, shuffle=False)))
    return x.double(), y


def conv(cin, cout, k, rule, stride=1, padding=1, dilation=1, groups=1, seed=0, **options):
    torch.manual_seed(seed)
    layer = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      bias=False).double()
    return rules.convert(layer, rule, seed=seed, **options)


# --- independent references ------------------------------------------------------------------------

def unfold(layer, x):
    """(N, L, C_in k k) input patches and the output map's (H', W')."""
    P = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    kh, kw = layer.kernel_size
    dh, dw = layer.dilation
    H = (x.shape[2] + 2 * layer.padding[0] - dh * (kh - 1) - 1) // layer.stride[0] + 1
    W = (x.shape[3] + 2 * layer.padding[1] - dw * (kw - 1) - 1) // layer.stride[1] + 1
    return P.transpose(1, 2), (H, W)


def dog(size, se, si):
    K = torch.empty(size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            d2 = (i - size // 2) ** 2 + (j - size // 2) ** 2
            K[i, j] = math.exp(-d2 / (2 * se * se)) / (2 * math.pi * se * se) - \
                math.exp(-d2 / (2 * si * si)) / (2 * math.pi * si * si)
    return K / K[size // 2, size // 2]


def surround_loops(a, K):
    """a (N, L, C) on an (H, W) map, surround by explicit loops with zero padding."""
    N, C, H, W = a.shape
    r = K.shape[0] // 2
    out = torch.zeros_like(a)
    for i in range(H):
        for j in range(W):
            for p in range(K.shape[0]):
                for q in range(K.shape[1]):
                    ii, jj = i + p - r, j + q - r
                    if 0 <= ii < H and 0 <= jj < W:
                        out[:, :, i, j] += K[p, q] * a[:, :, ii, jj]
    return out


def reference_hebbian(layer, x, W, theta, update, competition="none", activation="linear", surround=None,
                      temperature=1.0, theta_decay=0.5, lr=0.01, normalise_update=True, weight_norm="unit",
                      dale=False, adaptive_lr=False):
    """The Hebbian step written out per (sample, position, channel); returns (W_new, theta_new)."""
    P, (H, Wd) = unfold(layer, x)  # (N, L, D)
    Wf = W.flatten(1)  # (C, D)
    N, L, _ = P.shape
    C = Wf.shape[0]
    u = torch.einsum("nld,cd->nlc", P, Wf)
    a = u
    if activation == "cosine":
        a = u / (P.norm(dim=2, keepdim=True) * Wf.norm(dim=1))
    if surround is not None:
        a = surround_loops(a.permute(0, 2, 1).reshape(N, C, H, Wd), surround).reshape(N, C, L).permute(0, 2, 1)
    winner = F.one_hot(a.argmax(2), C).bool()
    if competition == "hard_wta":
        y = torch.where(winner, a, torch.zeros_like(a))
    elif competition == "soft_wta":
        r = torch.softmax(a / temperature, dim=2)
        y = torch.where(winner, r, -r)
    else:
        y = a
    theta = theta.clone()
    if update == "outer":
        y_hat = y / y.norm(dim=2, keepdim=True)
        x_hat = P / P.norm(dim=2, keepdim=True)
        dW = torch.einsum("nlc,nld->cd", y_hat, x_hat)
    elif update == "instar":
        dW = torch.einsum("nlc,nld->cd", y, P) - y.sum((0, 1))[:, None] * Wf
    elif update == "softhebb":
        dW = torch.einsum("nlc,nld->cd", y, P) - (y * u).sum((0, 1))[:, None] * Wf
    else:  # bcm
        theta = (1 - theta_decay) * theta + theta_decay * (y ** 2).mean((0, 1))
        dW = torch.einsum("nlc,nld->cd", y * (y - theta), P)
    dW = dW / dW.abs().max() if normalise_update else dW / (N * L)
    if adaptive_lr:  # SoftHebb: each filter's rate sqrt(| ||W_c|| - 1 |)
        dW = dW * torch.tensor([abs(float(Wf[c].norm()) - 1) ** 0.5 for c in range(C)], dtype=dW.dtype)[:, None]
    Wn = Wf + lr * dW
    if weight_norm == "unit":
        Wn = Wn / Wn.norm(dim=1, keepdim=True)
    if dale:
        Wn = Wn.abs()
    return Wn.view_as(W), theta


CASES = [
    dict(update="outer"),
    dict(update="outer", competition="hard_wta", weight_norm="none"),
    dict(update="instar", competition="hard_wta", activation="cosine", weight_norm="none"),
    dict(update="instar", competition="none", normalise_update=False, weight_norm="none"),
    dict(update="bcm", competition="hard_wta", activation="cosine", theta_decay=0.3),
    dict(update="bcm", competition="hard_wta", activation="cosine", surround=True, sigma_e=1.0, sigma_i=1.2,
         surround_size=3, dale=True),
    dict(update="softhebb", competition="soft_wta", temperature=0.5, weight_norm="none"),
    dict(update="softhebb", competition="soft_wta", surround=True, normalise_update=False, lr=0.1),
    dict(update="softhebb", competition="soft_wta", temperature=2.0, adaptive_lr=True, weight_norm="none"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_hebbian_update_equals_the_formula(images, case):
    x = images[0][:3, :, 10:17, 9:16]  # (3, 3, 7, 7) real pixels
    layer = conv(3, 5, 3, "hebbian", stride=2, **case)
    W0, theta0 = layer.weight.detach().clone(), layer.rule.theta.clone()
    with rules.local_updates(layer):
        layer(x)
    surround = dog(case.get("surround_size", 5), case.get("sigma_e", 1.2), case.get("sigma_i", 1.4)) \
        if case.get("surround") else None
    kwargs = {k: v for k, v in case.items() if k not in ("surround", "sigma_e", "sigma_i", "surround_size")}
    W_ref, theta_ref = reference_hebbian(layer, x, W0, theta0, surround=surround, **kwargs)
    torch.testing.assert_close(layer.weight.detach(), W_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(layer.rule.theta, theta_ref, rtol=1e-9, atol=1e-12)
    assert not torch.equal(layer.weight.detach(), W0)


def test_bcm_threshold_slides_over_steps_and_starts_at_theta_init(images):
    x = images[0][:4, :, :8, :8]
    layer = conv(3, 6, 3, "hebbian", update="bcm", competition="hard_wta", activation="cosine",
                 theta_decay=0.5, theta_init=1.0)
    torch.testing.assert_close(layer.rule.theta, torch.ones(6, dtype=torch.float64))
    theta, W = layer.rule.theta.clone(), layer.weight.detach().clone()
    for _ in range(3):  # each step: theta <- theta/2 + mean(y_wta^2)/2, with the weights of that step
        with rules.local_updates(layer):
            layer(x)
        W, theta = reference_hebbian(layer, x, W, theta, "bcm", "hard_wta", "cosine", theta_decay=0.5)
        torch.testing.assert_close(layer.rule.theta, theta, rtol=1e-9, atol=1e-12)
    assert (theta < 0.2).all()  # cosine winners y <= 1: theta falls from 1 towards E[y_wta^2]


def test_depthwise_and_dilated_hebbian_matches_per_group_formula(images):
    """groups = channels (the separable convs of the search space): each filter sees its channel."""
    x = images[0][:2, :, 4:12, 4:12]
    layer = conv(3, 3, 3, "hebbian", padding=2, dilation=2, groups=3, update="instar", weight_norm="none")
    W0 = layer.weight.detach().clone()
    with rules.local_updates(layer):
        layer(x)
    for c in range(3):  # channel c alone is a 1-in, 1-out convolution: no competition
        single = nn.Conv2d(1, 1, 3, padding=2, dilation=2, bias=False).double()
        W_ref, _ = reference_hebbian(single, x[:, c:c + 1], W0[c:c + 1], torch.ones(1, dtype=torch.float64),
                                     "instar", weight_norm="none")
        P, _ = unfold(single, x[:, c:c + 1])
        # the update is normalised by the max over the whole tensor, so compare directions per filter
        d_got = (layer.weight.detach()[c] - W0[c]).flatten()
        d_ref = (W_ref[0] - W0[c]).flatten()
        torch.testing.assert_close(d_got / d_got.abs().max(), d_ref / d_ref.abs().max(), rtol=1e-9, atol=1e-12)


def test_hard_wta_lets_exactly_one_channel_per_location_update(images):
    """A 1x1 output map per image: with one image exactly one filter (the winner) changes."""
    x = images[0][:1, :, :5, :5]
    layer = conv(3, 8, 5, "hebbian", padding=0, update="instar", competition="hard_wta", weight_norm="none")
    W0 = layer.weight.detach().clone()
    winner = int(layer(x).argmax(1))
    with rules.local_updates(layer):
        layer(x)
    changed = [(layer.weight.detach()[c] != W0[c]).any().item() for c in range(8)]
    assert changed == [c == winner for c in range(8)]


def test_hebbian_options_are_checked_with_one_line_errors():
    with pytest.raises(ConfigError, match="update='oja'.*outer, instar, bcm, softhebb"):
        conv(3, 4, 3, "hebbian", update="oja")
    with pytest.raises(ConfigError, match="sigma_e < sigma_i"):
        conv(3, 4, 3, "hebbian", surround=True, sigma_e=2.0, sigma_i=1.0)
    with pytest.raises(ConfigError, match="competition"):
        conv(3, 4, 3, "hebbian", competition="max")
    with pytest.raises(ConfigError, match="learns convolutions only"):
        rules.convert(nn.Linear(3, 4), "hebbian")
    with pytest.raises(ConfigError, match="iterations must be a non-negative integer"):
        conv(3, 4, 3, "pc", iterations=-1)


# --- predictive coding -------------------------------------------------------------------------------

def conv_unfold(layer, x, Wt):
    """conv2d(x, Wt) through explicit patches: (N, C_out, H', W')."""
    P, (H, Wd) = unfold(layer, x)
    return torch.einsum("nld,cd->ncl", P, Wt.flatten(1)).reshape(x.shape[0], -1, H, Wd)


def transpose_fold(layer, r, Gt, x_shape):
    """G^T r by folding the per-position patch predictions back onto the input: (N, C_in, H, W)."""
    cols = torch.einsum("ncl,cd->ndl", r.flatten(2), Gt.flatten(1))  # (N, C_in k k, L)
    return F.fold(cols, x_shape[2:], layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                  stride=layer.stride)


def pc_energy(layer, x, G, r, r0, pi):
    e = x - transpose_fold(layer, r, G, x.shape)
    return (pi * e * e).sum() / 2 + ((r - r0) ** 2).sum() / 2


def reference_pc(layer, x, W, G, iterations, beta, pi):
    """Gradient descent on the energy (autograd of the explicit energy) from r0 = W x."""
    r0 = conv_unfold(layer, x, W)
    r = r0.detach().clone()
    for _ in range(iterations):
        r = r.requires_grad_()
        (grad,) = torch.autograd.grad(pc_energy(layer, x, G, r, r0.detach(), pi), r)
        r = (r - beta * grad).detach()
    return r0, r


@pytest.mark.parametrize("normalise", [False, True])
def test_pc_inference_output_and_both_weight_updates_equal_the_energy_gradients(images, normalise):
    x = images[0][:3, :, 3:10, 5:12]
    layer = conv(3, 4, 3, "pc", stride=2, iterations=4, inference_rate=0.05, gate=0.7, lr=0.1,
                 normalise=normalise)
    W0, G0 = layer.weight.detach().clone(), layer.rule.G.clone()
    pi = 1 / (x ** 2).mean((1, 2, 3), keepdim=True) if normalise else torch.ones(3, 1, 1, 1, dtype=torch.float64)
    r0, r = reference_pc(layer, x, W0, G0, 4, 0.05, pi)
    with rules.local_updates(layer):
        y = layer(x)
    torch.testing.assert_close(y, r0 + 0.7 * (r - r0), rtol=1e-9, atol=1e-12)

    M = r.shape[0] * r.shape[2] * r.shape[3]
    G = G0.clone().requires_grad_()
    (dE_dG,) = torch.autograd.grad(pc_energy(layer, x, G, r, r0, pi), G)
    torch.testing.assert_close(layer.rule.G, G0 - 0.1 * dE_dG / M, rtol=1e-9, atol=1e-12)
    W = W0.clone().requires_grad_()
    (dF_dW,) = torch.autograd.grad(((r - conv_unfold(layer, x, W)) ** 2).sum() / 2, W)
    torch.testing.assert_close(layer.weight.detach(), W0 - 0.1 * dF_dW / M, rtol=1e-9, atol=1e-12)


def test_pc_adaptive_step_is_the_exact_line_search_and_energy_never_rises(images):
    x = images[0][:2, :, :8, :8]
    steps = []
    for t in range(4):
        layer = conv(3, 6, 3, "pc", iterations=t, adaptive=True)
        with torch.no_grad():
            r0, r, _, pi = layer.rule.infer(layer, x, layer.weight, layer.rule.G)
        steps.append(r)
    G = layer.rule.G
    energies = [float(pc_energy(layer, x, G, r, r0, pi)) for r in steps]
    assert all(b < a for a, b in zip(energies, energies[1:]))
    # the step from r1 to r2 is the minimiser of E along its direction: fit the parabola E(r1 + s d)
    d = steps[2] - steps[1]  # = beta* times the descent direction, so the vertex must sit at s = 1
    e = [float(pc_energy(layer, x, G, steps[1] + s * d, r0, pi)) for s in (0.0, 1.0, 2.0)]
    vertex = 1.0 - 0.5 * (e[2] - e[0]) / (e[2] - 2 * e[1] + e[0])
    assert vertex == pytest.approx(1.0, abs=1e-8)


def test_pc_exact_mode_differentiates_the_inference_rule_mode_goes_through_w_transpose(images):
    x = images[0][:2, :, :6, :6].clone()
    layer = conv(3, 4, 3, "pc", iterations=3, inference_rate=0.1)
    W, G = layer.weight.detach().clone(), layer.rule.G.clone()
    pi = torch.ones(2, 1, 1, 1, dtype=torch.float64)
    probe = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def reference(xin):  # the same inference, differentiable in x, written with patches
        r0 = conv_unfold(layer, xin, W)
        r = r0
        for _ in range(3):
            e = xin - transpose_fold(layer, r, G, xin.shape)
            grad = -pi * conv_unfold(layer, e, G) + (r - r0)
            r = r - 0.1 * grad
        return (r * probe).sum()

    x_ref = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(reference(x_ref), x_ref)
    x_exact = x.clone().requires_grad_()
    with rules.exact_gradients(layer):
        (layer(x_exact) * probe).sum().backward()
    torch.testing.assert_close(x_exact.grad, g_ref, rtol=1e-9, atol=1e-12)
    assert layer.weight.grad is not None  # exact mode hides nothing from the loss
    layer.weight.grad = None

    x_rule = x.clone().requires_grad_()
    (layer(x_rule) * probe).sum().backward()
    x_plain = x.clone().requires_grad_()
    (conv_unfold(layer, x_plain, W) * probe).sum().backward()
    torch.testing.assert_close(x_rule.grad, x_plain.grad, rtol=1e-9, atol=1e-12)  # W^T, straight through
    assert (x_rule.grad - x_exact.grad).abs().max() > 1e-3
    assert layer.weight.grad is None  # rule mode: the loss never reaches the weights
    assert torch.equal(layer.weight.detach(), W)  # and no update outside the switch


# --- when local updates happen -------------------------------------------------------------------------

def local_state(model):
    """Copies of every local-rule weight and rule tensor (pc's G, hebbian's theta), by name."""
    state = {}
    for name, layer in rules.rule_layers(model):
        if layer.rule.kind == "local":
            state[f"{name}.weight"] = layer.weight.detach().clone()
            state.update({f"{name}.rule.{k}": v.clone() for k, v in layer.rule.state_dict().items()})
    return state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_search_updates_local_weights_only_in_weight_steps(images):
    x, y = images[0][:16, :, 8:24, 8:24].float(), images[1][:16]
    train, val = (x[:8], y[:8]), (x[8:], y[8:])
    net = Supernet(space_from_dict(LOCAL_SPACE), 3, 10, seed=0, shape=SHAPE)
    kinds = {layer.rule.name for _, layer in rules.rule_layers(net) if layer.rule.kind == "local"}
    assert kinds == {"hebbian", "pc"}
    before = local_state(net)
    for order in ("first", "second"):
        strategy = DartsStrategy(net, SearchConfig(epochs=2, strategy_options={"darts": {"order": order}}))
        strategy.update_architecture(train, val, step=0)
        assert_same(local_state(net), before)
    eg = EvolutionaryStrategy(net, SearchConfig(method="eg", epochs=2, strategy_options={"eg": {
        "warmup_epochs": 0, "population": 4, "generations": 1, "restarts": 1}}))
    eg.update_architecture(train, val, step=0)  # fitness scoring of the CMA-ES population
    assert_same(local_state(net), before)
    net.eval()
    with torch.no_grad():
        net(x)
    net.train()
    net(x)  # a training-mode forward outside a weight step
    assert_same(local_state(net), before)

    strategy.train_weights(train, step=1)
    after = local_state(net)
    for k in before:
        if k.endswith(".weight") or k.endswith(".G"):
            assert not torch.equal(after[k], before[k]), k  # every local layer learned in the weight step
    for name, layer in rules.rule_layers(net):
        if layer.rule.kind == "local":
            assert layer.weight.grad is None, name  # ... and never from the loss


@pytest.mark.parametrize("rule,options", [
    ("hebbian", {}),
    ("hebbian", dict(update="instar", competition="hard_wta", activation="cosine", weight_norm="none", lr=0.1)),
    ("hebbian", dict(update="bcm", competition="hard_wta", activation="cosine", surround=True, lr=0.1)),
    ("hebbian", dict(update="softhebb", competition="soft_wta", temperature=0.5, weight_norm="none", lr=0.05)),
    ("pc", dict(iterations=5, adaptive=True, normalise=True, lr=0.05)),
    ("pc", dict(iterations=5, inference_rate=0.2, lr=0.05)),
], ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())) or "defaults")
def test_local_weights_stay_finite_over_many_steps(images, rule, options):
    x = images[0].float()  # (20, 3, 32, 32)
    layer = rules.convert(nn.Conv2d(3, 16, 5, padding=2, bias=False), rule, seed=0, **options)
    start = layer.weight.detach().clone()
    with rules.local_updates(layer), torch.no_grad():
        for step in range(200):
            i = (step * 4) % 16
            layer(x[i:i + 4])
    assert torch.isfinite(layer.weight).all() and not torch.equal(layer.weight.detach(), start)
    assert float(layer.weight.detach().abs().max()) < 1e3
    assert all(torch.isfinite(v).all() for v in layer.rule.state_dict().values())
