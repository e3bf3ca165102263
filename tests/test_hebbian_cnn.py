"""`bionas hebbian`: the network, whitening, the read-out schedule and a small real run."""
import json

import pytest
import torch

from bionas.errors import ConfigError
from bionas import configs
from bionas.engine import load_checkpoint
from bionas.hebbian import HebbianCNN, Triangle, ZCA, resolve_config
from bionas.hebbian.run import classifier_lr, preprocess
from bionas.rules import rule_layers

SMALL = {"channels": [4, 8, 16], "per_class": 10, "test_per_class": 5, "classifier_epochs": 2,
         "backprop_epochs": 1, "hebbian_batch_size": 20, "progress": False}


def test_every_setup_builds_the_paper_network_with_its_rules():
    for name in configs.presets("hebbian"):
        config = resolve_config(name)
        net = HebbianCNN(3, 10, 32, config)
        assert net.feature_dim == 24576  # 1536 x 4 x 4
        assert net.features(torch.zeros(2, 3, 32, 32)).shape == (2, 24576)
        layers = dict(rule_layers(net))
        if config.learning == "hebbian":
            assert [layer.rule.name for layer in layers.values()] == ["hebbian"] * 3
            assert [layer.rule.competition for layer in layers.values()] == [o.get("competition", "none")
                                                                            for o in config.layers]
        else:
            assert not layers
    optimal = [layer.rule for _, layer in rule_layers(HebbianCNN(3, 10, 32, resolve_config("hard_wta_bcm_surround")))]
    assert [r.surround_kernel.shape[-1] for r in optimal] == [5, 3, 3]
    assert [r.theta_decay for r in optimal] == [0.30, 0.35, 0.35] and [r.lr for r in optimal] == [0.10, 0.08, 0.05]
    params = sum(p.numel() for p in HebbianCNN(3, 10, 32, resolve_config("backprop")).parameters())
    assert params == 3 * 96 * 25 + 96 * 384 * 9 + 384 * 1536 * 9 + 24576 * 10 + 10  # about 5.9 M


def test_triangle_is_relu_of_the_channel_centred_input_to_a_power():
    u = torch.tensor([[[[1.0]], [[2.0]], [[6.0]]]])  # (1, 3, 1, 1): mean 3
    torch.testing.assert_close(Triangle(0.7)(u), torch.tensor([[[[0.0]], [[0.0]], [[3.0 ** 0.7]]]]))


def test_zca_whitens_real_images(cifar10_root):
    from bionas.data import load_dataset

    x = load_dataset("cifar10", cifar10_root, "train", per_class=100, seed=0).images[:, :, :8, :8].double() / 255
    zca = ZCA.fit(x, eps=1e-13)
    white = zca(x).flatten(1)
    cov = (white - white.mean(0)).T @ (white - white.mean(0)) / len(white)
    torch.testing.assert_close(cov, torch.eye(cov.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(zca.matrix, zca.matrix.T)  # zero-phase: symmetric
    # a larger eps keeps more of the image: whitened images stay correlated with the originals
    soft = ZCA.fit(x, eps=1e-2)(x).flatten(1)
    assert torch.corrcoef(torch.stack([soft[0], x[0].flatten()]))[0, 1] > 0.5


def test_surround_forward_puts_the_dog_kernel_between_convolution_and_triangle(cifar10_root):
    import torch.nn.functional as F

    from bionas.data import load_dataset

    small = {"channels": [4, 8, 16]}
    net = HebbianCNN(3, 10, 32, resolve_config("hard_wta_bcm_surround", overrides={**small, "surround_forward": True}))
    plain = HebbianCNN(3, 10, 32, resolve_config("hard_wta_bcm_surround", overrides=small))
    assert [len(b) for b in net.blocks] == [5, 5, 5] and [len(b) for b in plain.blocks] == [4, 4, 4]
    x = load_dataset("cifar10", cifar10_root, "test", per_class=1, seed=0).images.float() / 255
    block = net.eval().blocks[0]
    u = block[1](block[0](x))
    r = torch.arange(5.0) - 2  # layer 1 of the optimal setup: sigma_e 1.2, sigma_i 1.3, 5 x 5
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    k = torch.exp(-d2 / (2 * 1.2**2)) / (2 * torch.pi * 1.2**2) - torch.exp(-d2 / (2 * 1.3**2)) / (2 * torch.pi * 1.3**2)
    k = k / k[2, 2]
    expected = torch.stack([F.conv2d(u[:, c:c + 1], k[None, None], padding=2)[:, 0] for c in range(4)], 1)
    torch.testing.assert_close(block[2](u), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(block[3], Triangle)
    with pytest.raises(ConfigError, match="surround_forward needs hebbian layers with surround"):
        resolve_config("hard_wta_bcm", overrides={"surround_forward": True})


def test_moved_filters_counts_turned_filters_not_rescaled_ones():
    from bionas.hebbian.run import moved_filters

    net = HebbianCNN(3, 10, 32, resolve_config("hard_wta_bcm", overrides={"channels": [4, 8, 16]}))
    initial = {name: layer.weight.detach().clone() for name, layer in rule_layers(net)}
    first = next(layer for _, layer in rule_layers(net))
    with torch.no_grad():
        w = first.weight
        w[0] = -w[0]  # turned 180 degrees: moved
        w[1] = 5 * w[1]  # rescaled only: not moved
        w[2] += 1e-4 * w[2].norm() * torch.ones_like(w[2]) / w[2].numel() ** 0.5  # well under 1 degree
        w[3] = w[3] + 0.5 * w[3].norm() * torch.eye(5)[None].expand_as(w[3]) / 15 ** 0.5  # ~27 degrees
    assert moved_filters(initial, net) == [0.5, 0.0, 0.0]


def test_classifier_lr_halves_every_two_epochs_from_epoch_ten():
    config = resolve_config("softhebb")
    assert [classifier_lr(config, e) for e in range(14)] == [1e-3] * 10 + [5e-4] * 2 + [2.5e-4] * 2


def test_setup_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown hebbian preset 'soft'"):
        resolve_config("soft")
    with pytest.raises(ConfigError, match="needs hebbian options for each of the 3 blocks"):
        resolve_config("hard_wta_bcm", overrides={"layers": [{}]})
    with pytest.raises(ConfigError, match="unknown hebbian option 'epoch'"):
        resolve_config("hard_wta_bcm", overrides={"epoch": 3})
    # --epochs is the read-out's epochs, or the backprop preset's
    assert resolve_config("hard_wta_bcm", overrides={"epochs": 3}).with_epochs_applied().classifier_epochs == 3
    bp = resolve_config("backprop", overrides={"epochs": 4}).with_epochs_applied()
    assert (bp.backprop_epochs, bp.classifier_epochs, bp.epochs) == (4, 20, None)


def test_small_real_runs_learn_locally_write_results_and_refuse_a_used_out(cifar10_root, tmp_path):
    from bionas.hebbian import run_hebbian

    base = {**SMALL, "data_dir": str(cifar10_root)}
    config = resolve_config("hard_wta_bcm_surround", overrides={**base, "out": str(tmp_path / "bcm")})
    start = {n: layer.weight.detach().clone() for n, layer in rule_layers(HebbianCNN(3, 10, 32, config))}
    result = run_hebbian(config)
    saved = load_checkpoint(tmp_path / "bcm" / "checkpoint.pt", "hebbian")["model"]
    for name, w0 in start.items():
        w = saved[name.removeprefix("blocks.") + ".weight"]
        assert torch.isfinite(w).all() and not torch.equal(w, w0), name  # the hebbian phase changed every layer
    results = json.loads((tmp_path / "bcm" / "results.json").read_text())
    assert results["train_images"] == 100 and results["test_images"] == 50
    assert 0 <= results["test_acc"] <= 1 and results["best_test_acc"] >= results["test_acc"]
    assert list(result.history["epoch"]) == [1, 2]
    assert {"hebbian_seconds", "feature_seconds", "classifier_seconds"} <= results.keys()
    assert len(results["moved_filters"]) == 3 and all(0 < f <= 1 for f in results["moved_filters"])
    with pytest.raises(ConfigError, match="already holds a finished hebbian run"):
        run_hebbian(config)

    bp = run_hebbian(resolve_config("backprop", overrides={**base, "out": str(tmp_path / "bp")}))
    assert list(bp.history["epoch"]) == [1] and "backprop_seconds" in bp.results


def test_backprop_setup_resumes_bit_for_bit_from_its_per_epoch_state(cifar10_root, tmp_path):
    from bionas.hebbian import run_hebbian
    from bionas.hebbian.run import unfinished

    base = {**SMALL, "data_dir": str(cifar10_root), "backprop_epochs": 2}
    straight = run_hebbian(resolve_config("backprop", overrides={**base, "out": str(tmp_path / "a")}))
    run_hebbian(resolve_config("backprop", overrides={**base, "backprop_epochs": 1, "out": str(tmp_path / "b")}))
    (tmp_path / "b" / "results.json").unlink()  # as if stopped after epoch 1: only its saved state is left
    assert unfinished(tmp_path / "b") and not unfinished(tmp_path / "a")
    config = resolve_config("backprop", overrides={**base, "out": str(tmp_path / "b")})
    with pytest.raises(ConfigError, match="unfinished hebbian run; add --resume"):
        run_hebbian(config)
    resumed = run_hebbian(config, resume=True)
    assert list(resumed.history["epoch"]) == [1, 2] and resumed.results["epochs"] == 2
    for column in ("train_loss", "train_acc", "test_acc"):
        assert list(resumed.history[column]) == list(straight.history[column]), column
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt", "hebbian")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt", "hebbian")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a finished run goes on to more epochs with --resume (and only then, and only to more)
    done = json.loads((tmp_path / "a" / "results.json").read_text())
    longer = resolve_config("backprop", overrides={**base, "backprop_epochs": 3, "out": str(tmp_path / "a")})
    with pytest.raises(ConfigError, match="already holds a finished hebbian run"):
        run_hebbian(longer)
    with pytest.raises(ConfigError, match="already holds 2 backprop epochs; ask for more"):
        run_hebbian(resolve_config("backprop", overrides={**base, "out": str(tmp_path / "a")}), resume=True)
    extended = run_hebbian(longer, resume=True)
    assert list(extended.history["epoch"]) == [1, 2, 3] and extended.results["epochs"] == 3
    assert list(extended.history["test_acc"][:2]) == list(straight.history["test_acc"])
    assert extended.results["backprop_seconds"] > done["backprop_seconds"] > 0
    assert extended.results["wall_seconds"] > done["wall_seconds"]


def test_preprocess_without_whitening_normalises_by_the_dataset_statistics():
    config = resolve_config("softhebb")
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    train, _ = preprocess(images, images, config, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(train, torch.full((2, 3, 4, 4), 2.0))
