"""Learning-rule maths, checked against computations written out here (not the rules' code).

For a linear layer y = x W^T + b, feeding the one-hot output gradient e_i for a single sample
makes the input gradient the i-th row of the feedback matrix B, so B is *recovered* from the
layer's behaviour and then compared with what each rule promises. Convolutions are checked the
same way (a one-hot output gradient exposes one filter of B) and against
``torch.nn.grad.conv2d_input`` / ``conv2d_weight``.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from bionas import rules
from bionas.errors import ConfigError, UnknownNameError

FEEDBACK_RULES = [n for n in rules.RULES if issubclass(rules.RULES.get(n), rules.FeedbackRule)]


def recover_linear_feedback(layer: nn.Module, in_features: int, out_features: int) -> torch.Tensor:
    """B (out, in) read off the layer: row i is dL/dx for dL/dy = e_i."""
    x = torch.randn(1, in_features, dtype=torch.float64, requires_grad=True)
    y = layer(x)  # one forward: B of this draw
    rows = []
    for i in range(out_features):
        (g,) = torch.autograd.grad(y, x, grad_outputs=F.one_hot(torch.tensor([i]), out_features).double(),
                                   retain_graph=True)
        rows.append(g[0])
    return torch.stack(rows)


def make_linear(rule: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    lin = nn.Linear(7, 5).double()
    return rules.convert(lin, rule, seed=seed, **options)


def xavier(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


# --- linear layers: B recovered row by row -------------------------------------------------

def test_bp_feedback_is_w():
    layer = make_linear("bp")
    B = recover_linear_feedback(layer, 7, 5)
    torch.testing.assert_close(B, layer.weight.detach())


def test_fa_feedback_fixed_random_unrelated_to_w():
    layer = make_linear("fa")
    B1 = recover_linear_feedback(layer, 7, 5)
    with torch.no_grad():
        layer.weight.mul_(-3.0).add_(0.5)  # a large weight change must not move B
    B2 = recover_linear_feedback(layer, 7, 5)
    torch.testing.assert_close(B1, B2)
    assert not torch.allclose(B1, layer.weight.detach())
    bound = math.sqrt(3) * xavier(7, 5)  # Xavier-uniform support
    assert B1.abs().max() <= bound and B1.abs().max() > 0.3 * bound
    # and different seeds give different feedback
    B_other = recover_linear_feedback(make_linear("fa", seed=1), 7, 5)
    assert not torch.allclose(B1, B_other)


def test_fa_feedback_is_roughly_orthogonal_to_w_on_a_large_layer():
    torch.manual_seed(0)
    layer = rules.convert(nn.Linear(400, 300), "fa", seed=3)
    angle = rules.alignment_angles(layer)[""]
    assert 85 < angle < 95


@pytest.mark.parametrize("scale", ["xavier", 1.0, 0.25])
def test_usf_feedback_is_scaled_sign_of_current_w(scale):
    layer = make_linear("usf", scale=scale)
    s = xavier(7, 5) if scale == "xavier" else scale
    B = recover_linear_feedback(layer, 7, 5)
    torch.testing.assert_close(B, s * torch.sign(layer.weight.detach()))
    with torch.no_grad():
        layer.weight.neg_()  # flip every sign
    B2 = recover_linear_feedback(layer, 7, 5)
    torch.testing.assert_close(B2, -B)


def test_usf_rejects_bad_scale():
    with pytest.raises(ConfigError):
        make_linear("usf", scale=-1.0)


def test_frsf_fixed_magnitude_times_sign_of_w():
    layer = make_linear("frsf")
    B1 = recover_linear_feedback(layer, 7, 5)
    torch.testing.assert_close(torch.sign(B1), torch.sign(layer.weight.detach()))
    with torch.no_grad():
        layer.weight.mul_(torch.where(torch.rand(5, 7) < 0.5, -2.0, 3.0).double())
    B2 = recover_linear_feedback(layer, 7, 5)
    torch.testing.assert_close(B2.abs(), B1.abs())  # magnitude fixed
    torch.testing.assert_close(torch.sign(B2), torch.sign(layer.weight.detach()))  # signs follow W
    assert not torch.allclose(B1.abs(), layer.weight.detach().abs())  # magnitude not |W|


def test_brsf_signs_follow_w_magnitudes_redrawn_only_in_training():
    layer = make_linear("brsf")
    layer.train()
    B1 = recover_linear_feedback(layer, 7, 5)
    B2 = recover_linear_feedback(layer, 7, 5)
    for B in (B1, B2):
        torch.testing.assert_close(torch.sign(B), torch.sign(layer.weight.detach()))
    assert not torch.allclose(B1.abs(), B2.abs())  # a new draw each training forward
    bound = math.sqrt(3) * xavier(7, 5)
    assert B1.abs().max() <= bound
    layer.eval()
    E1 = recover_linear_feedback(layer, 7, 5)
    E2 = recover_linear_feedback(layer, 7, 5)
    torch.testing.assert_close(E1, E2)  # frozen in eval mode
    torch.testing.assert_close(E1, B2)  # ... at the last training draw


def test_brsf_draws_are_reproducible_and_restored_from_state_dict():
    a, b = make_linear("brsf", seed=5), make_linear("brsf", seed=5)
    x = torch.randn(3, 7, dtype=torch.float64)
    a(x), a(x)
    b.load_state_dict(a.state_dict())  # b resumes after a's two draws
    torch.testing.assert_close(recover_linear_feedback(a, 7, 5), recover_linear_feedback(b, 7, 5))


def test_brsf_leaves_global_rng_alone():
    layer = make_linear("brsf")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    layer(torch.ones(2, 7, dtype=torch.float64))
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_linear_weight_and_bias_gradients_are_exact(rule):
    layer = make_linear(rule)
    x = torch.randn(4, 3, 7, dtype=torch.float64, requires_grad=True)  # extra leading dims too
    delta = torch.randn(4, 3, 5, dtype=torch.float64)
    layer(x).backward(delta)
    torch.testing.assert_close(layer.weight.grad, delta.reshape(-1, 5).T @ x.detach().reshape(-1, 7))
    torch.testing.assert_close(layer.bias.grad, delta.reshape(-1, 5).sum(0))


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_linear_input_gradient_is_delta_times_feedback(rule):
    layer = make_linear(rule)
    layer.eval()  # brSF keeps one draw, so the recovered B applies to the next backward too
    B = recover_linear_feedback(layer, 7, 5)
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(6, 5, dtype=torch.float64)
    layer(x).backward(delta)
    torch.testing.assert_close(x.grad, delta @ B)


# --- convolutions --------------------------------------------------------------------------

CONV_CASES = {
    "plain": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "strided": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "dilated": dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, dilation=2),
    "grouped": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
    "depthwise_dilated_strided": dict(in_channels=6, out_channels=6, kernel_size=5, stride=2,
                                      padding=4, dilation=2, groups=6),
    "pointwise_no_bias": dict(in_channels=4, out_channels=6, kernel_size=1, bias=False),
    "asymmetric": dict(in_channels=3, out_channels=4, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0)),
}


def expected_conv_feedback(rule: str, layer) -> torch.Tensor:
    """B from the rule's defining formula and its stored random tensor (if any)."""
    W = layer.weight.detach()
    if rule == "bp":
        return W
    if rule == "fa":
        return layer.rule.B
    if rule == "usf":
        fan_in = W.shape[1] * W.shape[2] * W.shape[3]
        fan_out = W.shape[0] * W.shape[2] * W.shape[3]
        return xavier(fan_in, fan_out) * torch.sign(W)
    if rule in ("frsf", "brsf"):
        return layer.rule.magnitude.abs() * torch.sign(W)
    raise AssertionError(f"no reference for rule {rule}")


def make_conv(rule: str, case: str, seed: int = 0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**CONV_CASES[case]).double()
    layer = rules.convert(copy.deepcopy(conv), rule, seed=seed)
    layer.eval()  # fixes brSF's draw so B is known before backward
    return conv, layer


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_conv_gradients_match_torch_nn_grad(rule, case):
    conv, layer = make_conv(rule, case)
    x = torch.randn(2, conv.in_channels, 11, 9, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, conv(x))  # forward unchanged
    delta = torch.randn_like(y)
    y.backward(delta)
    B = expected_conv_feedback(rule, layer)
    kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    torch.testing.assert_close(x.grad, conv2d_input(x.shape, B, delta, **kw))
    torch.testing.assert_close(layer.weight.grad, conv2d_weight(x.detach(), conv.weight.shape, delta, **kw))
    if conv.bias is not None:
        torch.testing.assert_close(layer.bias.grad, delta.sum((0, 2, 3)))


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_conv_one_hot_output_gradient_exposes_a_feedback_filter(rule):
    """dL/dy = one-hot at (channel o, centre pixel) => dL/dx is filter o of B, dilated, in place."""
    _, layer = make_conv(rule, "depthwise_dilated_strided")
    x = torch.randn(1, 6, 15, 15, dtype=torch.float64, requires_grad=True)
    y = layer(x)  # (1, 6, 6, 6) after stride 2; output pixel (3, 3) reads rows 3*2-4+2k
    B = expected_conv_feedback(rule, layer)
    for o in range(6):
        g = torch.zeros_like(y)
        g[0, o, 3, 3] = 1.0
        (gx,) = torch.autograd.grad(y, x, g, retain_graph=True)
        window = gx[0, o, 2:11:2, 2:11:2]  # rows/cols 6 - 4 + 2k, k = 0..4 (dilation 2)
        torch.testing.assert_close(window, B[o, 0])
        window_mask = torch.zeros_like(gx, dtype=torch.bool)
        window_mask[0, o, 2:11:2, 2:11:2] = True
        assert gx[~window_mask].abs().max() == 0  # nothing leaks to other channels/pixels


@pytest.mark.parametrize("padding,padding_mode", [("same", "zeros"), (1, "reflect"), (1, "circular")])
def test_conv_padding_modes_keep_forward_and_feedback(padding, padding_mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=padding, padding_mode=padding_mode).double()
    layer = rules.convert(copy.deepcopy(conv), "usf", seed=0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, conv(x))
    delta = torch.randn_like(y)
    y.backward(delta)
    # Reference: the same padded convolution with its weight replaced by B, differentiated by autograd.
    ref = copy.deepcopy(conv)
    with torch.no_grad():
        ref.weight.copy_(expected_conv_feedback("usf", layer))
    x2 = x.detach().clone().requires_grad_(True)
    ref(x2).backward(delta)
    torch.testing.assert_close(x.grad, x2.grad)


# --- conversion, exact gradients, alignment --------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("rule", list(rules.RULES))
def test_convert_keeps_parameters_and_forward(rule):
    torch.manual_seed(0)
    net = Net()
    params_before = dict(net.named_parameters())
    x = torch.randn(2, 3, 8, 8)
    y0 = net(x)
    out = rules.convert(net, rule, seed=0)
    assert out is net
    assert {n: id(p) for n, p in net.named_parameters()} == {n: id(p) for n, p in params_before.items()}
    cls = rules.RULES.get(rule)
    learnable = {"features.0": rule, "features.2": rule, "head": rule}
    if nn.Linear not in cls.layer_types:  # the convolution-only local rules leave the head as it was
        del learnable["head"]
        assert type(net.head) is nn.Linear
    assert rules.rules_in(net) == learnable
    if cls.preserves_forward:
        assert torch.equal(net(x), y0)
    with rules.exact_gradients(net):  # exact mode computes the rule's function with plain autograd
        torch.testing.assert_close(net(x), out(x))


def test_convert_a_single_layer_and_reconvert():
    conv = nn.Conv2d(3, 4, 3)
    layer = rules.convert(conv, "fa", seed=0)
    assert isinstance(layer, rules.RuleConv2d) and layer.weight is conv.weight
    again = rules.convert(layer, "usf", seed=0)
    assert again is layer and layer.rule.name == "usf"


def test_convert_same_seed_same_feedback_different_seed_different():
    a = rules.convert(Net(), "fa", seed=7)
    b = rules.convert(Net(), "fa", seed=7)
    c = rules.convert(Net(), "fa", seed=8)
    assert torch.equal(a.head.rule.B, b.head.rule.B)
    assert not torch.equal(a.head.rule.B, c.head.rule.B)
    assert not torch.equal(a.features[0].rule.B.flatten()[:8], a.head.rule.B.flatten()[:8])


def test_convert_rejects_unknown_rule_and_option():
    with pytest.raises(UnknownNameError, match="unknown learning rule 'nope'.*bp"):
        rules.convert(Net(), "nope")
    with pytest.raises(ConfigError, match="rule 'fa' does not take option.s. scale; it takes: none"):
        rules.convert(Net(), "fa", scale=2.0)
    with pytest.raises(ConfigError, match="it takes: scale"):
        rules.convert(Net(), "usf", sclae=2.0)


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_exact_gradients_restores_true_gradient_then_rule(rule):
    torch.manual_seed(0)
    plain = Net().double()
    net = rules.convert(copy.deepcopy(plain), rule, seed=0)
    net.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def input_grad(model):
        xi = x.clone().requires_grad_(True)
        model(xi).square().sum().backward()
        return xi.grad

    true = input_grad(plain)
    with rules.exact_gradients(net):
        torch.testing.assert_close(input_grad(net), true)
    after = input_grad(net)
    if rule == "bp":
        torch.testing.assert_close(after, true)
    else:
        assert not torch.allclose(after, true), "the rule must be in force again after the block"
    assert not any(layer.exact_gradients for _, layer in rules.rule_layers(net))


def test_exact_gradients_restores_flags_after_an_error():
    net = rules.convert(Net(), "fa", seed=0)
    with pytest.raises(RuntimeError):
        with rules.exact_gradients(net):
            raise RuntimeError("boom")
    assert not any(layer.exact_gradients for _, layer in rules.rule_layers(net))


def test_alignment_angles_match_closed_forms():
    torch.manual_seed(0)
    assert all(a == pytest.approx(0.0, abs=1e-5) for a in rules.alignment_angles(rules.convert(Net(), "bp")).values())
    net = rules.convert(Net(), "usf")
    for name, angle in rules.alignment_angles(net).items():
        W = net.get_submodule(name).weight.detach().flatten().double()
        # cos(W, s sign W) = sum|W| / (||W|| sqrt(n)), independent of s
        expected = math.degrees(math.acos(float(W.abs().sum() / (W.norm() * math.sqrt(W.numel())))))
        assert angle == pytest.approx(expected, abs=1e-6)


def test_feedback_rules_train_under_bf16_autocast():
    torch.manual_seed(0)
    net = rules.convert(Net(), "frsf", seed=0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


# --- the local-rule half of the abstraction, exercised by a rule defined here -----------------

class PlainHebb(rules.LocalRule):
    """dW = lr * y^T x (test-only; the real Hebbian rules arrive with their own issue)."""

    name = "test_hebb"

    def __init__(self, weight, generator, lr: float = 0.1, detach_input_error: bool = False):
        super().__init__(weight, generator, detach_input_error=detach_input_error)
        self.lr = lr

    def update(self, layer, x, y):
        layer.weight.add_(self.lr * y.T @ x)


@pytest.fixture
def hebb_rule():
    rules.RULES.register("test_hebb")(PlainHebb)
    yield "test_hebb"
    rules.RULES.unregister("test_hebb")


def test_local_rule_weights_get_no_loss_gradient_and_update_only_when_switched_on(hebb_rule):
    torch.manual_seed(0)
    layer = rules.convert(nn.Linear(3, 2, bias=False).double(), hebb_rule, seed=0)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    W0 = layer.weight.detach().clone()
    layer(x).sum().backward()
    assert layer.weight.grad is None
    torch.testing.assert_close(layer.weight.detach(), W0)  # no update outside the switch
    torch.testing.assert_close(x.grad, torch.ones(4, 2, dtype=torch.float64) @ W0)  # error via W^T
    with rules.local_updates(layer):
        y = layer(x)
    torch.testing.assert_close(layer.weight.detach(), W0 + 0.1 * (x @ W0.T).T.detach() @ x.detach())
    torch.testing.assert_close(y, x @ W0.T)
    assert not layer.local_updates


def test_local_rule_can_cut_the_input_error_and_exact_gradients_overrides(hebb_rule):
    layer = rules.convert(nn.Linear(3, 2).double(), hebb_rule, seed=0, detach_input_error=True)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = layer(x).sum()
    assert not out.requires_grad  # nothing upstream to learn from
    with rules.exact_gradients(layer), rules.local_updates(layer):
        W0 = layer.weight.detach().clone()
        layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.detach(), W0)  # exact mode applies no local update
    torch.testing.assert_close(x.grad, torch.ones(4, 2, dtype=torch.float64) @ W0)
    assert layer.weight.grad is not None


def ks_statistic_uniform(samples: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance between the samples' ECDF and U(0, 1)."""
    x = samples.flatten().double().sort().values
    i = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    return max(float((i / x.numel() - x).max()), float((x - (i - 1) / x.numel()).max()))


@pytest.mark.parametrize("shape", [(400, 500), (200, 250)])  # 16-bit grid path, float-draw path
def test_brsf_magnitudes_are_uniform_on_zero_to_xavier_bound(shape):
    """Magnitudes must be U(0, a) on both draw paths: range, moments, KS, and each 16-bit lane."""
    torch.manual_seed(0)
    out_f, in_f = shape
    layer = rules.convert(nn.Linear(in_f, out_f), "brsf", seed=11)
    a = math.sqrt(6.0 / (in_f + out_f))
    draws = []
    for _ in range(5):
        layer(torch.ones(1, in_f))  # training-mode forwards redraw
        draws.append(layer.rule.magnitude.flatten().double() / a)  # samples of U(0, 1)
    m = torch.cat(draws)
    assert 0 < float(m.min()) and float(m.max()) < 1
    assert float(m.mean()) == pytest.approx(0.5, abs=0.0015)  # sd of the mean: <= 0.0006
    assert float(m.var()) == pytest.approx(1 / 12, abs=0.0005)
    assert ks_statistic_uniform(m) < 1.95 / math.sqrt(m.numel())  # KS at the 0.1% level
    for lane in range(4):  # every 16-bit slice of the 64-bit words is uniform too
        part = m.view(-1, 4)[:, lane]
        assert ks_statistic_uniform(part) < 1.95 / math.sqrt(part.numel())
    assert not torch.equal(draws[0], draws[1])
    odd = rules.convert(nn.Linear(3, 3), "brsf", seed=0)  # 9 weights: not a multiple of 4
    odd(torch.ones(1, 3))
    assert odd.rule.magnitude.shape == (3, 3) and float(odd.rule.magnitude.min()) > 0


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_state_dict_round_trip_restores_the_feedback(rule):
    """A checkpoint carries each layer's feedback state: loading it reproduces B exactly."""
    torch.manual_seed(0)
    a = make_linear(rule, seed=0)
    a(torch.ones(2, 7, dtype=torch.float64))  # advance brSF's draws
    b = make_linear(rule, seed=1)  # different weights and feedback
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.eval()
    torch.testing.assert_close(recover_linear_feedback(b, 7, 5), recover_linear_feedback(a, 7, 5))
