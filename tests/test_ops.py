"""Every (op, rule) pair builds, keeps shapes, stays finite and gives every parameter a gradient
(or, for a local rule's layers, a local update and no gradient)."""
import pytest
import torch

from bionas import ops, rules
from bionas.candidate import Candidate
from bionas.errors import UnknownNameError
from bionas.registry import Registry

PAIRS = [(op, rule) for op in ops.OPS for rule in rules.RULES]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("op,rule", PAIRS)
def test_every_op_rule_pair(op, rule, stride):
    torch.manual_seed(0)
    C = 8
    m = Candidate(op, rule).build(C, stride, seed=0)
    m.train()
    local = rules.RULES.get(rule).kind == "local"
    local_weights = {f"{n}.weight" for n, layer in rules.rule_layers(m)} if local else set()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = torch.randn(3, C, 9, 9, requires_grad=True)  # odd size: the reduction must cope
    with rules.local_updates(m, local):
        y = m(x)
    assert y.shape == (3, C, 5, 5) if stride == 2 else y.shape == x.shape
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert op == "none" or x.grad.abs().sum() > 0  # the error reaches the input (W^T for local rules)
    for name, p in m.named_parameters():
        if name in local_weights:
            assert p.grad is None and torch.isfinite(p).all(), name
            # wp's update comes from the engine after the step (its forward only keeps statistics)
            in_forward = rules.RULES.get(rule).updates_in_forward
            assert torch.equal(p.detach(), before[name]) != in_forward, f"{name}: local update in forward?"
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
    # every convolution learns by the requested rule; ops without weights have none
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert all(isinstance(c, rules.RuleConv2d) and c.rule.name == rule for c in convs)
    plain = ops.create_op(op, C, stride)  # the op as built, before any rule
    assert len(convs) == sum(isinstance(mod, torch.nn.Conv2d) for mod in plain.modules())
    assert ops.has_weights(op) == any(isinstance(mod, torch.nn.Conv2d) for s in (1, 2)
                                      for mod in ops.create_op(op, C, s).modules())


def test_op_channels_and_parameter_counts_match_darts():
    # DARTS sep_conv_3x3 at C=16: 2 x (9*16 depthwise + 16*16 pointwise) + 2 BN(16) affine
    assert sum(p.numel() for p in ops.create_op("sep_conv_3x3", 16, 1).parameters()) == 2 * (9 * 16 + 256 + 32)
    assert sum(p.numel() for p in ops.create_op("dil_conv_5x5", 16, 1).parameters()) == 25 * 16 + 256 + 32
    assert sum(p.numel() for p in ops.create_op("skip_connect", 16, 2, affine=False).parameters()) == 2 * 16 * 8
    # NAS-Bench-201: one dense convolution + affine BN
    assert sum(p.numel() for p in ops.create_op("conv_3x3", 16, 1).parameters()) == 9 * 16 * 16 + 32
    assert sum(p.numel() for p in ops.create_op("conv_1x1", 16, 2).parameters()) == 16 * 16 + 32


def test_candidate_text_round_trip_and_errors():
    assert Candidate.parse("sep_conv_3x3|usf") == Candidate("sep_conv_3x3", "usf")
    assert Candidate.parse("max_pool_3x3") == Candidate("max_pool_3x3", "bp")
    assert str(Candidate("dil_conv_3x3", "fa")) == "dil_conv_3x3|fa"
    with pytest.raises(UnknownNameError, match="unknown op 'conv_7x7'"):
        Candidate.parse("conv_7x7|fa")
    with pytest.raises(UnknownNameError, match="unknown learning rule 'xyz'"):
        Candidate.parse("sep_conv_3x3|xyz")
    with pytest.raises(UnknownNameError, match="empty rule"):
        Candidate.parse("sep_conv_3x3|")


def test_registry_rejects_duplicates_and_bad_names():
    reg = Registry("thing")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(object)
    with pytest.raises(ValueError, match="lower-case"):
        reg.register("Upper")
    with pytest.raises(UnknownNameError, match="choose one of: a"):
        reg.get("b")
