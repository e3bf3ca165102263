"""Retraining: recipes, schedules, baselines, the training loop, resume, and the CLI.

Accuracy checks use the real shared CIFAR-10; the network sizes are tiny so each run takes seconds.
"""
import math

import pandas as pd
import pytest
import torch
import yaml

from bionas import rules
from bionas.cli import main
from bionas.configs.options import check
from bionas.errors import ConfigError
from bionas.models.resnet import MODELS, CifarResNet
from bionas.train import TrainConfig, learning_rate, load_trained, resolve_config, run_train
from bionas.train.model import DataShape, build_network

FEEDBACK_RULES = [n for n in rules.RULES if issubclass(rules.RULES.get(n), rules.FeedbackRule)]
CIFAR_SHAPE = DataShape("cifar10", 3, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def tiny(tmp_path, root, **overrides) -> TrainConfig:
    """A cell network of 4 channels and 3 cells on 160 real images: seconds per epoch."""
    options = {"genotype": "darts_v2", "dataset": "cifar10", "data_dir": str(root), "per_class": 16,
               "test_per_class": 10, "epochs": 2, "batch_size": 32, "channels": 4, "layers": 3,
               "eval_batch_size": 100, "out": str(tmp_path / "run"), "progress": False}
    options.update(overrides)
    return resolve_config(None, None, options)


# --- recipes and schedules -------------------------------------------------------------------------
def test_recipes_follow_the_paper_and_layers_override_in_order(tmp_path):
    cifar = resolve_config(None, None, {"genotype": "darts_v2"})
    assert (cifar.base_preset, cifar.batch_size, cifar.lr, cifar.epochs, cifar.channels, cifar.layers, cifar.cutout,
            cifar.drop_path, cifar.auxiliary_weight, cifar.grad_clip, cifar.schedule) == \
        ("cifar", 96, 0.025, 600, 36, 20, 16, 0.2, 0.4, 5.0, "cosine")
    im16 = resolve_config(None, None, {"genotype": "darts_v2", "dataset": "imagenet16-120"})
    assert (im16.base_preset, im16.batch_size, im16.lr, im16.schedule, im16.epochs, im16.channels, im16.layers,
            im16.label_smoothing, im16.drop_path) == ("imagenet16_120", 1024, 0.5, "linear", 250, 48, 14, 0.1, 0.0)
    resnet = resolve_config(None, None, {"model": "resnet56", "rule": "usf"})
    assert (resnet.base_preset, resnet.lr, resnet.weight_decay, resnet.epochs, resnet.milestones, resnet.init) == \
        ("resnet", 0.1, 1e-4, 250, [100, 150, 200], "xavier")
    # named preset over the paper's, file over preset, flags over file
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 7, "channels": 12}))
    c = resolve_config("smoke", path, {"genotype": "darts_v2", "channels": 10})
    assert (c.per_class, c.epochs, c.channels, c.lr) == (200, 7, 10, pytest.approx(0.025 * 32 / 96))  # batch 32
    with pytest.raises(ConfigError, match="unknown train option.*bogus"):
        resolve_config(None, None, {"genotype": "darts_v2", "bogus": 1})
    with pytest.raises(ConfigError, match="contradict"):
        resolve_config(None, None, {"genotype": "darts_v2", "rule": "fa", "random_rules": True})


def test_learning_rate_schedules_match_torch_schedulers():
    param = torch.nn.Parameter(torch.zeros(1))
    for schedule, make in [
        ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=0.001)),
        ("step", lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [5, 12], gamma=0.1)),
        ("exponential", lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)),
        ("linear", lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 - e / 20)),
    ]:
        config = TrainConfig(genotype="x", lr=0.1, epochs=20, schedule=schedule, lr_min=0.001, milestones=[5, 12],
                             gamma=0.1 if schedule == "step" else 0.97)
        opt = torch.optim.SGD([param], lr=0.1)
        sched = make(opt)
        for epoch in range(20):
            assert learning_rate(config, epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
            opt.step()
            sched.step()
    warm = TrainConfig(genotype="x", lr=0.5, epochs=10, schedule="linear", warmup_epochs=4)
    assert [learning_rate(warm, e) for e in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert learning_rate(warm, 5) == pytest.approx(0.5 * (1 - 5 / 10))


# --- the ResNet baselines --------------------------------------------------------------------------
def test_resnets_have_the_published_sizes_and_depths():
    for name, params, convs in [("resnet20", 0.27e6, 19), ("resnet56", 0.85e6, 55)]:
        net = MODELS.get(name)(10)
        assert isinstance(net, CifarResNet)
        assert sum(p.numel() for p in net.parameters()) == pytest.approx(params, rel=0.01)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == convs  # depth = convs + classifier
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_subsamples_and_zero_pads():
    from bionas.models.resnet import BasicBlock

    block = BasicBlock(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2])
    assert not s[:, :8].any() and not s[:, 24:].any()


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_resnet20_learns_by_one_rule_everywhere(rule, cifar10_small):
    config = check(TrainConfig(model="resnet20", rule=rule, seed=3))
    net = build_network(config, CIFAR_SHAPE, None)
    layer_rules = rules.rules_in(net)
    assert len(layer_rules) == 20 and set(layer_rules.values()) == {rule}
    # Xavier-uniform initialisation: every weight inside the Glorot bound
    conv = net.layers[4].conv1
    fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert conv.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
    from bionas.data import BatchLoader

    x, y = next(iter(BatchLoader(cifar10_small[0], 32, seed=0)))
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# --- training runs ---------------------------------------------------------------------------------
def test_training_writes_everything_and_measures_the_test_split(cifar10_root, tmp_path):
    config = tiny(tmp_path, cifar10_root, rule="usf")
    result = run_train(config)
    out = result.out
    for name in ["config.yaml", "run_info.json", "genotype.json", "checkpoint.pt", "train_log.csv", "curves.png",
                 "results.json"]:
        assert (out / name).is_file(), name
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["epoch"]) == [1, 2]
    assert {"lr", "drop_path", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"} <= set(log.columns)
    assert log["drop_path"].tolist() == pytest.approx([0.0, 0.1])  # 0.2 * epoch / epochs, from 0
    assert yaml.safe_load((out / "config.yaml").read_text())["rule"] == "usf"
    # the checkpoint rebuilds the network with its rules; its accuracy on the 100 test images
    # (10 per class of the test split) is the logged one
    trained = load_trained(out / "checkpoint.pt")
    cell_rules = rules.rules_in(trained.model.cells)  # every weighted edge learns by usf ...
    assert set(cell_rules.values()) == {"usf"} and all(".ops." in name for name in cell_rules)
    assert not rules.rules_in(trained.model.stem)  # ... stem, pre-processing and classifier by plain bp
    from bionas.data import BatchLoader, load_dataset

    test = load_dataset("cifar10", cifar10_root, "test", per_class=10, seed=0)
    correct = sum(int((trained.model(x).argmax(1) == y).sum()) for x, y in BatchLoader(test, 50, shuffle=False))
    assert correct / len(test) == pytest.approx(result.test_acc)
    assert len(test) == 100 and result.test_acc == log["test_acc"].iloc[-1]


def test_resume_after_a_kill_equals_the_uninterrupted_run(cifar10_root, tmp_path, killed_after):
    from conftest import Killed

    options = dict(rule="brsf", epochs=3, drop_path=0.3)  # brSF redraws and drop path draw every step
    full = run_train(tiny(tmp_path / "a", cifar10_root, **options))
    with pytest.raises(Killed):
        run_train(tiny(tmp_path / "b", cifar10_root, **options), on_epoch_end=killed_after(1))
    resumed = run_train(TrainConfig(out=str(tmp_path / "b" / "run"), progress=False), resume=True)
    a = torch.load(full.out / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed.out / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        if torch.is_tensor(value):
            assert torch.equal(value, b["model"][key]), key
    cols = ["train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    assert full.history[cols].equals(resumed.history[cols])


def test_resume_refuses_changed_options_and_a_new_run_refuses_a_used_directory(cifar10_root, tmp_path):
    config = tiny(tmp_path, cifar10_root, epochs=1)
    run_train(config)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_train(config)
    with pytest.raises(ConfigError, match="--resume continues the saved run.*lr"):
        run_train(TrainConfig(out=config.out), resume=True, overrides={"lr": 0.5})
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_train(TrainConfig(out=str(tmp_path / "none")), resume=True)


def test_random_rules_draw_from_the_space_and_depend_on_the_seed(cifar10_root, tmp_path):
    from bionas.train import training_genotype

    genotypes = [training_genotype(TrainConfig(genotype="darts_v2", random_rules=True, seed=s)) for s in range(4)]
    weighted = [[e.rule for e in g.normal if e.op.endswith("conv_3x3")] for g in genotypes]
    assert all(set(w) <= set(FEEDBACK_RULES) for w in weighted)
    assert len({tuple(w) for w in weighted}) > 1  # seeds differ
    assert len({r for w in weighted for r in w}) >= 3  # not one rule everywhere
    # and the network built from it has exactly those rules on its edges
    net = build_network(TrainConfig(genotype="darts_v2", random_rules=True, seed=1, channels=4, layers=3),
                        CIFAR_SHAPE, genotypes[1])
    cell = net.cells[0]
    for (target, source), op, edge in zip(cell.edges, cell.ops, genotypes[1].normal):
        assert {r for r in rules.rules_in(op).values()} <= {edge.rule}


def test_divergence_stops_with_one_line_and_leaves_no_results(cifar10_root, tmp_path, capsys):
    code = main(["train", "--genotype", "darts_v2", "--dataset", "cifar10", "--data-dir", str(cifar10_root),
                 "--out", str(tmp_path / "nan"), "--lr", "1e12", "--epochs", "1", "--set", "per_class=8",
                 "--set", "channels=4", "--set", "layers=3", "--set", "grad_clip=0", "--batch-size", "16",
                 "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bionas: error: training loss became") and "lr" in err
    assert not (tmp_path / "nan" / "checkpoint.pt").exists() and not (tmp_path / "nan" / "results.json").exists()


def test_bf16_autocast_trains_every_rule_on_cpu(cifar10_small):
    from bionas.data import BatchLoader
    from bionas.models.genotypes import resolve_genotype, with_rule

    x, y = next(iter(BatchLoader(cifar10_small[0], 16, seed=0)))
    for rule in FEEDBACK_RULES:
        config = TrainConfig(genotype="darts_v2", rule=rule, channels=4, layers=3)
        net = build_network(config, CIFAR_SHAPE, with_rule(resolve_genotype("darts_v2"), rule))
        net.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, aux = net.forward_with_aux(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y) + 0.4 * torch.nn.functional.cross_entropy(aux.float(), y)
        loss.backward()
        grads = [p.grad for p in net.parameters()]
        assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads), rule


def test_cli_smoke_training_of_a_resnet_baseline(cifar10_root, tmp_path, capsys):
    out = tmp_path / "r20"
    code = main(["train", "--model", "resnet20", "--rule", "frsf", "--preset", "smoke", "--dataset", "cifar10",
                 "--data-dir", str(cifar10_root), "--out", str(out), "--epochs", "1", "--set", "per_class=20",
                 "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "results.json" in printed
    import json

    info = json.loads((out / "run_info.json").read_text())
    assert info["rule_counts"] == {"frsf": 20} and info["test_images"] == 1000
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # the recipe's 0.1 at batch 128, scaled to the smoke preset's batch of 32
    assert saved["base_preset"] == "resnet" and saved["lr"] == 0.025 and saved["model"] == "resnet20"


@pytest.mark.parametrize("rule", ["hebbian", "pc"])
def test_local_rules_learn_in_training_steps_only_and_the_checkpoint_keeps_their_state(rule, cifar10_root,
                                                                                       tmp_path):
    config = tiny(tmp_path, cifar10_root, rule=rule, epochs=1, steps_per_epoch=2)
    result = run_train(config)
    trained = load_trained(result.out / "checkpoint.pt")
    start = build_network(trained.config, trained.data, trained.genotype)
    local = {name: layer for name, layer in rules.rule_layers(trained.model) if layer.rule.kind == "local"}
    assert local and {layer.rule.name for layer in local.values()} == {rule}
    initial = dict(rules.rule_layers(start))
    for name, layer in local.items():  # the two training steps moved every local layer ...
        assert not torch.equal(layer.weight, initial[name].weight), name
    saved = {k: v.clone() for k, v in trained.model.state_dict().items() if torch.is_tensor(v)}
    from bionas.data import BatchLoader, load_dataset

    test = load_dataset("cifar10", cifar10_root, "test", per_class=10, seed=0)
    x, y = next(iter(BatchLoader(test, 50, shuffle=False)))
    trained.model.eval()
    correct = sum(int((trained.model(x).argmax(1) == y).sum()) for x, y in BatchLoader(test, 50, shuffle=False))
    assert correct / len(test) == pytest.approx(result.test_acc)  # rule state (theta, G) restored exactly
    trained.model.train()
    trained.model(x)  # ... and nothing outside a training step moves them
    for k, v in saved.items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(trained.model.state_dict()[k], v), k
