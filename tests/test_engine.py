"""The training engine: one step for every trainer, one checkpoint format with clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bionas import rules
from bionas.engine import CHECKPOINT_FORMAT, TrainingDiverged, checkpoint_to_resume, load_checkpoint, save_checkpoint, train_step
from bionas.errors import ConfigError
from bionas.search import SearchConfig


@pytest.fixture
def real_batch(cifar10_small):
    """16 real CIFAR-10 images pooled to 3 x 2 x 2 (12 inputs), labels folded onto 3 classes."""
    train, _ = cifar10_small
    x = nn.functional.adaptive_avg_pool2d(train.images[:16].float() / 255, 2)  # (16, 3, 2, 2)
    return x, train.labels[:16] % 3


def _net(rule="fa"):
    torch.manual_seed(0)
    return rules.convert(nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)), rule, seed=0)


def test_a_step_is_plain_sgd_on_the_rules_gradient_and_clips_to_the_global_norm(real_batch):
    x, y = real_batch
    net = _net()
    reference = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss, out = train_step(net, opt, x, y, step=0, grad_clip=0.01)
    # independently: the same loss, the rule's gradients scaled to norm 0.01, one SGD step
    logits = reference(x)
    expected = nn.functional.cross_entropy(logits, y)
    expected.backward()
    grads = [p.grad for p in reference.parameters()]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert loss == pytest.approx(float(expected.detach())) and torch.allclose(out, logits)
    for p, q, g in zip(net.parameters(), reference.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * g * min(1.0, 0.01 / float(norm + 1e-6)))


def test_divergence_stops_before_the_optimiser_moves(real_batch):
    x, y = real_batch
    net = _net("bp")
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match=r"search weight loss became nan \(gradient norm nan\) at step 7; try"):
        train_step(net, opt, x * float("nan"), y, step=7, what="search weight", fix="try")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_checkpoints_round_trip_and_bad_files_are_one_line_errors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, "search", SearchConfig(), 3, [{"epoch": 1}], model={"w": torch.ones(2)})
    state = load_checkpoint(path, "search")
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 3 and state["history"] == [{"epoch": 1}]
    assert state["config"]["lr"] == 0.1 and torch.equal(state["model"]["w"], torch.ones(2))
    with pytest.raises(ConfigError, match=r"is not a bionas train checkpoint \(it is a search checkpoint\)"):
        load_checkpoint(path, "train")
    assert checkpoint_to_resume(tmp_path, True, "search", "search", "genotype.json")["epoch"] == 3
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint.pt\); choose another --out, or pass --resume"):
        checkpoint_to_resume(tmp_path, False, "search", "search", "genotype.json")
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(ConfigError, match="cannot be read as a checkpoint .*truncated or not a bionas checkpoint"):
        load_checkpoint(path, "search")
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot be read as a checkpoint"):
        load_checkpoint(path, "search")
    torch.save([1, 2], path)
    with pytest.raises(ConfigError, match="is not a bionas search checkpoint$"):
        load_checkpoint(path, "search")


def test_an_unusable_output_folder_is_refused_before_any_work(tmp_path, capsys):
    from bionas.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out, message in ((blocker, "is a file, not a directory"), (blocker / "sub", f"{blocker} is a file")):
        for argv in (["search", "--preset", "smoke", "--dataset", "digits"],
                     ["train", "--genotype", "darts_v2", "--preset", "smoke", "--dataset", "digits"],
                     ["attack", "--checkpoint", str(tmp_path)], ["hebbian", "--dataset", "digits"],
                     ["quickstart", "--dataset", "digits"]):
            assert main(argv + ["--out", str(out)]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith("bionas: error: --out") and message in err and "\n" not in err, (argv, err)


def test_heartbeat_logs_only_without_a_bar_and_at_most_once_per_interval(caplog):
    import logging

    from bionas.engine import Heartbeat

    logger = logging.getLogger("bionas.test_heartbeat")
    with caplog.at_level(logging.INFO, logger="bionas.test_heartbeat"):
        Heartbeat(logger, enabled=False, seconds=0).beat(lambda: "with a bar")
        every = Heartbeat(logger, enabled=True, seconds=0)
        every.beat(lambda: "one")
        every.beat(lambda: "two")
        Heartbeat(logger, enabled=True, seconds=3600).beat(lambda: "too soon")
    assert [r.getMessage() for r in caplog.records] == ["one", "two"]
