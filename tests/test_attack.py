"""The robustness suite: honest gradients, isolated randomness, results tables, one-line errors.

Checkpoints are made here by ``bionas train`` on real CIFAR-10 (ResNet-20, 500 images, a few
epochs: about a minute for all); attacks run on 50 test images.
"""
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from bionas.attack import (ATTACKS, AttackModel, craft, gradient_mode, isolated_random_state, load_target, markdown_table,
                           masking_warnings, resolve_config, run_attack, variants)
from bionas.attack.onepixel import BatchedOnePixel, distinct_partners, population_size
from bionas.cli import main
from bionas.errors import ConfigError
from bionas.rules.convert import rule_layers
from bionas.train import TrainConfig, build_network, resolve_config as train_config, run_train
from bionas.train.model import DataShape

N = 50


@pytest.fixture(scope="module")
def checkpoints(cifar10_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    # bp must learn (PGD is checked to drive a trained network near 0); fa only needs to be a
    # trained fa network, whose exact and rule gradients differ
    for rule, per_class, epochs in (("bp", 300, 4), ("fa", 100, 2)):
        config = train_config(None, None, {"model": "resnet20", "rule": rule, "dataset": "cifar10",
                                           "data_dir": str(cifar10_root), "per_class": per_class,
                                           "test_per_class": 5, "epochs": epochs, "batch_size": 50, "lr": 0.05,
                                           "out": str(root / rule), "progress": False})
        run_train(config)
        paths[rule] = root / rule
    return paths


def small_suite(checkpoints, out, **overrides):
    options = {"checkpoints": [str(checkpoints["bp"]), str(checkpoints["fa"])], "n": N, "out": str(out),
               "attacks": list(ATTACKS),  # every registered attack: a new one is tested for free
               "source": str(checkpoints["bp"]), "apgd_steps": 10, "square_queries": 50, "onepixel_pixels": [1, 3],
               "progress": False, "batch_size": 25}
    options.update(overrides)
    return resolve_config("quick", None, options)


def test_every_attack_runs_and_never_beats_clean_accuracy(checkpoints, tmp_path):
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    result = run_attack(small_suite(checkpoints, tmp_path / "a"))
    # no random stream outside the attacks moved (APGD and Square reseed torch's global RNG)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    table = pd.read_csv(tmp_path / "a" / "results.csv")
    for column in ["model", "attack", "gradient", "clean_acc", "robust_acc", "success_rate", "n_images", "seconds",
                   "params", "eps", "alpha", "steps", "n_queries", "pixels", "popsize", "members", "eot_iter", "source"]:
        assert column in table.columns, column
    attacks = set(table["attack"])
    assert attacks == {"Clean", *(v.label for v in variants(small_suite(checkpoints, tmp_path / "b")))}
    assert attacks >= {"Clean", "FGSM", "PGD", "TPGD", "APGD", "Square", "OP1", "OP3", "Transfer"}
    assert (table["n_images"] == N).all()
    # bp: exact gradients only; fa: both modes for white-box, one row for black-box attacks
    fa = table[table["model"] == "fa"]
    assert set(fa[fa["attack"] == "PGD"]["gradient"]) == {"exact", "rule"}
    assert set(fa[fa["attack"] == "Square"]["gradient"]) == {"none"}
    assert set(table[(table["model"] == "bp") & (table["attack"] == "PGD")]["gradient"]) == {"exact"}
    # the transfer source (bp) is not attacked by its own examples; the other model is
    assert "Transfer" not in set(table[table["model"] == "bp"]["attack"])
    assert "Transfer" in set(fa["attack"])
    # Attacks that ascend the loss of the true label (FGSM, PGD, APGD with exact gradients) only
    # remove correct answers, up to one image; the others may also turn a wrong answer right by
    # chance (TPGD pushes away from the model's own prediction, random search and one-pixel act on
    # weak models), so for them robust <= clean up to the sampling noise of N images
    ascent = table["attack"].isin(["FGSM", "PGD", "APGD"]) & (table["gradient"] == "exact")
    assert (table[ascent]["robust_acc"] <= table[ascent]["clean_acc"] + 1.0 / N + 1e-9).all()
    p = table["clean_acc"]
    noise = 2 * np.sqrt(p * (1 - p) / N) + 1.0 / N
    assert (table["robust_acc"] <= p + noise).all(), table[["model", "attack", "gradient", "clean_acc", "robust_acc"]]
    assert table["success_rate"].between(0, 1).all()
    # PGD through the exact gradient drives a backprop network close to 0
    bp_pgd = table[(table["model"] == "bp") & (table["attack"] == "PGD")]["robust_acc"].item()
    bp_clean = table[table["model"] == "bp"]["clean_acc"].iloc[0]
    assert bp_clean >= 0.3 and bp_pgd <= 0.1, (bp_clean, bp_pgd)
    # the parameters are recorded
    pgd = json.loads(table[(table["model"] == "bp") & (table["attack"] == "PGD")]["params"].item())
    assert pgd == {"eps": pytest.approx(8 / 255), "alpha": pytest.approx(2 / 255), "steps": 10, "random_start": True}
    md = (tmp_path / "a" / "table.md").read_text()
    assert md.splitlines()[0] == "| Attack | bp | fa |" and "| Transfer |" in md and " / " in md
    assert result.warnings == masking_warnings(table)


def test_exact_and_rule_gradients_differ_for_fa_and_exact_is_the_true_gradient(checkpoints, cifar10_root):
    target = load_target(str(checkpoints["fa"]), torch.device("cpu"))
    from bionas.attack.run import test_images

    x, y = test_images(target, resolve_config("quick", None, {"checkpoints": ["x"], "n": 20}), torch.device("cpu"))
    fgsm = variants(resolve_config("quick", None, {"checkpoints": ["x"], "attacks": ["fgsm"]}))[0]
    exact = craft(target.model, fgsm, fgsm.params, "exact", x, y, 20)
    rule = craft(target.model, fgsm, fgsm.params, "rule", x, y, 20)
    assert (exact != rule).float().mean() > 0.2  # FGSM's sign pattern follows a different gradient
    # exact mode equals autograd through the same weights learning by plain backprop
    plain = build_network(target.trained.config.__class__(model="resnet20", rule="bp"), target.trained.data, None)
    plain.load_state_dict(target.trained.model.state_dict(), strict=False)
    reference = AttackModel(plain, target.trained.data.mean, target.trained.data.std)
    grads = []
    for model, mode in ((target.model, "exact"), (reference, "exact"), (target.model, "rule")):
        xi = x.clone().requires_grad_(True)
        with gradient_mode(model, mode):
            torch.nn.functional.cross_entropy(model(xi), y).backward()
        grads.append(xi.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-9)
    assert not torch.allclose(grads[0], grads[2], rtol=0.1)


def test_brsf_rule_mode_averages_redraws_but_leaves_the_models_draws_untouched(cifar10_small):
    config = TrainConfig(model="resnet20", rule="brsf")
    data = DataShape("cifar10", 3, 32, 10, cifar10_small[1].mean, cifar10_small[1].std)
    model = AttackModel(build_network(config, data, None), data.mean, data.std)
    layers = [layer for _, layer in rule_layers(model.net)]
    draws = [layer.rule.draws for layer in layers]
    magnitude = layers[3].rule.magnitude.clone()
    x = cifar10_small[1].images[:8].float() / 255
    y = cifar10_small[1].labels[:8]
    apgd = variants(resolve_config("quick", None, {"checkpoints": ["x"], "attacks": ["apgd"], "apgd_steps": 3}))[0]
    from bionas.attack.run import effective_params

    params = effective_params(apgd, model, "rule", resolve_config("quick", None, {"checkpoints": ["x"]}))
    assert params["eot_iter"] == 5
    # inside the attack the feedback is redrawn on every forward ...
    seen = []
    with isolated_random_state(model), gradient_mode(model, "rule"):
        model(x)
        seen.append(layers[3].rule.draws)
        model(x)
        seen.append(layers[3].rule.draws)
    assert seen[1] == seen[0] + 1
    # ... and afterwards the model's own draws are as they were
    craft(model, apgd, params, "rule", x, y, 8)
    assert [layer.rule.draws for layer in layers] == draws
    assert torch.equal(layers[3].rule.magnitude, magnitude)


def test_batched_one_pixel_changes_exactly_k_pixels_and_repeats(checkpoints, cifar10_small):
    target = load_target(str(checkpoints["bp"]), torch.device("cpu"))
    x = cifar10_small[1].images[:16].float() / 255
    y = cifar10_small[1].labels[:16]
    a = BatchedOnePixel(target.model, pixels=3, steps=5, popsize=10, seed=1)(x, y)
    b = BatchedOnePixel(target.model, pixels=3, steps=5, popsize=10, seed=1)(x, y)
    assert torch.equal(a, b)
    changed = ((a - x).abs().sum(1) > 0).sum((1, 2))  # pixels changed per image
    assert (changed <= 3).all() and (changed >= 1).all()
    assert a.min() >= 0 and a.max() <= 1


def test_one_pixel_population_and_partners_follow_torchattacks_and_scipy():
    # torchattacks' OnePixel(popsize=10) on RGB: SciPy gets max(1, 10 // 5k) x 5k members
    assert [population_size(10, k) for k in range(1, 6)] == [10, 10, 15, 20, 25]
    assert population_size(10, 1, channels=1) == 9 and population_size(2, 1, channels=1) == 5  # SciPy's floor
    gen = torch.Generator().manual_seed(0)
    r1, r2 = distinct_partners(5, 4000, gen)
    own = torch.arange(5)[None].expand_as(r1)
    assert ((r1 != own) & (r2 != own) & (r1 != r2)).all()
    assert r1.min() == 0 and r1.max() == 4 and r2.min() == 0 and r2.max() == 4
    # uniform over the 12 ordered pairs (r1, r2) a member can have: each pair ~1/12 of 4000 draws
    pairs = torch.stack([r1[:, 0], r2[:, 0]], 1)
    counts = torch.unique(pairs, dim=0, return_counts=True)[1]
    assert len(counts) == 12 and counts.min() > 4000 / 12 * 0.75 and counts.max() < 4000 / 12 * 1.25


def test_one_pixel_attack_uses_the_reference_population(checkpoints, cifar10_small, monkeypatch):
    target = load_target(str(checkpoints["bp"]), torch.device("cpu"))
    x, y = cifar10_small[1].images[:4].float() / 255, cifar10_small[1].labels[:4]
    seen = []
    attack = BatchedOnePixel(target.model, pixels=3, steps=1, popsize=10, seed=0)
    original = attack._true_class_probability
    monkeypatch.setattr(attack, "_true_class_probability", lambda i, g, lab: seen.append(g.shape[1]) or original(i, g, lab))
    attack(x, y)
    assert seen and set(seen) == {15}
    seen.clear()
    attack.members = 7
    attack(x, y)
    assert set(seen) == {7}


def test_masking_warning_and_table_layout():
    rows = [{"model": "m", "attack": a, "gradient": g, "robust_acc": r, "n_images": 100}
            for a, g, r in [("Clean", "none", 0.9), ("PGD", "exact", 0.1), ("PGD", "rule", 0.6),
                            ("APGD", "rule", 0.48),  # within 2 standard errors (0.098) of Square: noise
                            ("TPGD", "exact", 0.7),  # KL objective, not a misclassification attack
                            ("Square", "none", 0.4), ("OP1", "none", 0.8)]]
    frame = pd.DataFrame(rows)
    warnings = masking_warnings(frame)
    assert len(warnings) == 1 and "PGD with rule gradients" in warnings[0] and "40.0%" in warnings[0]
    frame.loc[frame["attack"] == "APGD", "robust_acc"] = 0.51  # beyond the noise now
    assert len(masking_warnings(frame)) == 2
    md = markdown_table(frame, warnings)
    lines = md.splitlines()
    assert lines[2] == "| Clean | 90.0 |" and lines[3] == "| OP1 | 80.0 |" and lines[4] == "| PGD | 10.0 / 60.0 |"
    assert "possible gradient masking" in md


def test_bad_arguments_fail_with_one_line(checkpoints, tmp_path, capsys):
    digits = train_config(None, None, {"model": "resnet20", "dataset": "digits", "per_class": 10, "epochs": 1,
                                       "batch_size": 20, "out": str(tmp_path / "digits"), "progress": False})
    run_train(digits)
    for argv, message in [
        (["attack", "--checkpoint", str(checkpoints["bp"]), "--attacks", "deepfool"], "unknown attack 'deepfool'"),
        (["attack", "--checkpoint", str(checkpoints["bp"]), str(tmp_path / "digits")], "different datasets"),
        (["attack", "--checkpoint", str(tmp_path / "nothing")], "not found"),
        (["attack"], "nothing to attack"),
        (["attack", "--checkpoint", str(checkpoints["bp"]), "--suite", "huge"], "unknown attack preset 'huge'"),
    ]:
        assert main(argv + ["--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("bionas: error: ") and message in err[-1], (argv, err[-1])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError):
        resolve_config("quick", None, {"checkpoints": ["x"], "eps": 2.0})


def interrupted_at_craft(config, calls_before_stop: int, monkeypatch) -> None:
    """Run ``config``'s attack and stop it (as a kill would) when its ``calls_before_stop + 1``-th
    crafting starts; the rows finished before stay in partial_results.csv."""
    import bionas.attack.run as attack_run

    real_craft, calls = attack_run.craft, []

    def craft_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) > calls_before_stop:
            raise KeyboardInterrupt
        return real_craft(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(attack_run, "craft", craft_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_attack(config)


def test_an_interrupted_attack_run_resumes_to_the_uninterrupted_results(checkpoints, tmp_path, monkeypatch):
    """Rows are written as they complete; --resume skips them and computes the rest, giving the
    rows of a run that was never interrupted (timings aside)."""
    from bionas.attack.config import AttackConfig

    options = {"attacks": ["fgsm", "pgd", "square"], "source": None}
    whole = run_attack(small_suite(checkpoints, tmp_path / "whole", **options)).results
    interrupted_at_craft(small_suite(checkpoints, tmp_path / "cut", **options), 3, monkeypatch)
    kept = pd.read_csv(tmp_path / "cut" / "partial_results.csv")
    assert len(kept) == 5 and not (tmp_path / "cut" / "results.csv").exists()  # Clean + 3 attack rows of bp, Clean of fa
    with pytest.raises(ConfigError, match="already holds an attack run"):
        run_attack(small_suite(checkpoints, tmp_path / "cut", **options))
    resumed = run_attack(AttackConfig(out=str(tmp_path / "cut"), progress=False), resume=True).results
    columns = [c for c in whole.columns if c != "seconds"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut" / "results.csv")[columns],
                                  pd.read_csv(tmp_path / "whole" / "results.csv")[columns])
    assert len(resumed) == len(whole) and not (tmp_path / "cut" / "partial_results.csv").exists()


def test_a_resumed_attack_reads_no_checkpoint_of_a_model_it_has_finished(checkpoints, tmp_path, monkeypatch):
    """Checkpoints are not kept with results: a resumed run loads only the models with rows still
    to compute (and the transfer source while a transfer row is missing), so a finished model's
    weights may be gone; the rows are those of an uninterrupted run."""
    import shutil

    from bionas.attack.config import AttackConfig
    from bionas.attack.run import checkpoints_done, outstanding

    for name, rule in (("first", "bp"), ("second", "fa"), ("source", "bp")):
        shutil.copytree(checkpoints[rule], tmp_path / name)
    copies = {"bp": tmp_path / "first", "fa": tmp_path / "second"}
    options = {"attacks": ["fgsm", "transfer"], "source": str(tmp_path / "source")}
    whole = run_attack(small_suite(copies, tmp_path / "whole", **options)).results
    # crafted: the transfer source's PGD, FGSM on first; stopped at FGSM on second
    interrupted_at_craft(small_suite(copies, tmp_path / "cut", **options), 2, monkeypatch)
    kept = pd.read_csv(tmp_path / "cut" / "partial_results.csv")
    assert list(kept["model"]) == ["first"] * 3 + ["second"]  # Clean, FGSM, Transfer; Clean
    # first is finished: its weights are not needed; the source is, for second's transfer row
    assert checkpoints_done(tmp_path / "cut") == {(tmp_path / "first" / "checkpoint.pt").resolve()}
    shutil.rmtree(tmp_path / "first")
    run_attack(AttackConfig(out=str(tmp_path / "cut"), progress=False), resume=True)
    columns = [c for c in whole.columns if c != "seconds"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut" / "results.csv")[columns],
                                  pd.read_csv(tmp_path / "whole" / "results.csv")[columns])
    # every row done: nothing left, the source included
    models = json.loads((tmp_path / "cut" / "run_info.json").read_text())["models"]
    config = small_suite(copies, tmp_path / "x", **options)
    assert outstanding(config, models, whole.to_dict("records")) == ([], False)
    assert outstanding(config, models, kept.to_dict("records")) == ([str(tmp_path / "second")], True)
