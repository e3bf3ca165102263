"""The search loop end to end on tiny real CIFAR-10: genotypes, outputs, resume, config, CLI."""
import json

import dataclasses

import pytest
import torch
import yaml

from bionas.cli import main
from bionas.errors import BionasError, ConfigError
from bionas.genotype import load_genotype
from bionas.search import STRATEGIES, resolve_config, run_search
from bionas.space import load_space
from bionas.configs.options import parse_assignment
from bionas.search.config import SearchConfig
from bionas.engine import CHECKPOINT_FORMAT
from conftest import Killed

SPACE = """\
name: tiny
candidates:
  none: []
  max_pool_3x3: []
  skip_connect: [usf]
  sep_conv_3x3: [fa, brsf]
  dil_conv_3x3: [frsf]
supernet: {channels: 4, cells: 3, nodes: 2}
"""


@pytest.fixture
def tiny(tmp_path, cifar10_root):
    """A config for a search of a few seconds: 40 real images, 2 steps per epoch."""
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    return SearchConfig(space=str(space), dataset="cifar10", data_dir=str(cifar10_root), per_class=4,
                        batch_size=8, epochs=2, steps_per_epoch=2, progress=False, out=str(tmp_path / "run"))


def _replace(config, **kw):
    import dataclasses

    return dataclasses.replace(config, **kw)


@pytest.mark.parametrize("order", ["first", pytest.param("second", marks=pytest.mark.slow)])  # ~25 s: in -m slow
def test_two_step_search_on_the_bionas_space_gives_a_valid_genotype(tmp_path, cifar10_root, order):
    config = SearchConfig(space="bionas", dataset="cifar10", data_dir=str(cifar10_root), per_class=2,
                          batch_size=4, epochs=1, steps_per_epoch=2, channels=4, cells=3, strategy_options={"darts": {"order": order}},
                          progress=False, out=str(tmp_path / order))
    result = run_search(config)
    space = load_space("bionas")
    saved = load_genotype(tmp_path / order / "genotype.json", space)  # validated against the space
    assert saved == result.genotype and saved.space == "bionas"
    for edge in (*saved.normal, *saved.reduce):
        assert edge.candidate in space.candidates and edge.op != "none"
    assert len(saved.normal) == len(saved.reduce) == 8  # two inputs for each of 4 nodes
    weights = saved.weights
    assert weights["candidates"] == [str(c) for c in space.candidates]
    assert all(abs(sum(row) - 1) < 1e-5 for row in weights["normal"] + weights["reduce"])
    assert len(result.history) == 1 and set(result.history.columns) >= {
        "epoch", "train_loss", "train_acc", "arch_loss", "arch_acc", "val_loss", "val_acc", "lr", "seconds", "genotype"}


def test_outputs_logs_and_plots(tiny):
    result = run_search(tiny)
    out = result.out
    for name in ("config.yaml", "run_info.json", "checkpoint.pt", "search_log.csv", "arch_history.json", "genotype.json",
                 "genotype.txt", "mixing_weights.png", "cells.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("mixing_weights.png", "cells.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "arch_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]  # before training, then per epoch
    assert history["candidates"] == result.genotype.weights["candidates"]
    # the last logged architecture is the result
    assert history["epochs"][-1]["genotype"]["weights"] == result.genotype.weights
    # the DARTS literal reads back to the same genotype
    assert load_genotype(out / "genotype.txt", load_space(tiny.space)) == result.genotype
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == tiny.method and resolve_config(config_file=out / "config.yaml") == tiny
    assert torch.load(out / "checkpoint.pt", weights_only=False)["format"] == CHECKPOINT_FORMAT


@pytest.mark.parametrize("order", ["first", pytest.param("second", marks=pytest.mark.slow)])  # ~15 s: in -m slow
def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tiny, tmp_path, order, killed_after):
    config = _replace(tiny, epochs=3, strategy_options={"darts": {"order": order}})
    full = run_search(_replace(config, out=str(tmp_path / "full")))
    with pytest.raises(Killed):
        run_search(_replace(config, out=str(tmp_path / "killed")), on_epoch_end=killed_after(1))
    assert not (tmp_path / "killed" / "genotype.json").exists()
    resumed = run_search(_replace(config, out=str(tmp_path / "killed")), resume=True)

    assert resumed.genotype == full.genotype
    assert resumed.genotype.weights == full.genotype.weights
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=False)
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    drop = ["seconds"]
    assert (full.history.drop(columns=drop).to_dict("records") == resumed.history.drop(columns=drop).to_dict("records"))


def test_a_new_run_never_overwrites_an_old_one_and_resume_needs_a_run(tiny):
    run_search(_replace(tiny, epochs=1))
    before = (tiny.out + "/genotype.json", open(tiny.out + "/genotype.json").read())
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint.pt"):
        run_search(_replace(tiny, epochs=1))
    assert open(before[0]).read() == before[1]
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_search(_replace(tiny, out=tiny.out + "_elsewhere"), resume=True)


def test_resume_refuses_options_that_change_the_run(tiny):
    run_search(_replace(tiny, epochs=1))
    with pytest.raises(ConfigError, match=r"has strategy_options.darts.order=.*drop strategy_options.darts.order"):
        run_search(SearchConfig(out=tiny.out), resume=True, overrides={"strategy_options.darts.order": "second"})
    # repeating the saved value is fine, and a finished run resumes to its result at once
    result = run_search(SearchConfig(out=tiny.out, progress=False), resume=True, overrides={"epochs": 1})
    assert len(result.history) == 1


def test_config_resolution_order_and_errors(tmp_path):
    assert SearchConfig().lr == 0.1 and SearchConfig().options_for("darts").arch_betas == (0.5, 0.999)  # appendix 7.1, DARTS
    smoke = resolve_config("smoke")
    assert smoke.cells == 3 and smoke.epochs == 3
    file = tmp_path / "c.yaml"
    file.write_text("epochs: 7\nlr: 1\n")
    config = resolve_config("smoke", file, {"epochs": 9})
    assert config.epochs == 9 and config.lr == 1.0 and isinstance(config.lr, float) and config.cells == 3
    with pytest.raises(ConfigError, match="unknown search option 'learning_rate' in the command line"):
        resolve_config(overrides={"learning_rate": 0.1})
    from bionas import configs

    with pytest.raises(BionasError, match=f"unknown search preset 'fast'; choose from {', '.join(configs.presets('search'))}$"):
        resolve_config("fast")
    file.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        resolve_config(config_file=file)
    with pytest.raises(ConfigError, match="unknown order 'third'; choose one of: first, second"):
        resolve_config(overrides={"strategy_options.darts.order": "third"})
    with pytest.raises(ConfigError, match="unknown darts strategy option 'population'"):
        resolve_config(overrides={"strategy_options": {"darts": {"population": 8}}})
    with pytest.raises(BionasError, match="unknown search method 'random'"):
        resolve_config(overrides={"method": "random"})
    assert parse_assignment("rule_options={usf: {scale: 1.0}}") == ("rule_options", {"usf": {"scale": 1.0}})
    with pytest.raises(ConfigError, match="--set takes KEY=VALUE"):
        parse_assignment("lr")


def test_too_little_data_for_a_batch_is_a_clear_error(tiny):
    with pytest.raises(ConfigError, match="holds 20 images, fewer than one batch of 32; lower --batch-size"):
        run_search(_replace(tiny, batch_size=32))


def test_cli_search_and_resume(tiny, capsys):
    argv = ["search", "--space", tiny.space, "--dataset", "cifar10", "--data-dir", tiny.data_dir, "--out", tiny.out,
            "--epochs", "1", "--batch-size", "8", "--set", "per_class=4", "--set", "steps_per_epoch=1",
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "genotype: Genotype(normal=[" in printed and "wrote" in printed
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["search", "--out", tiny.out, "--resume", "--order", "second"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bionas: error: --resume continues the saved run") and "\n" not in err
    assert main(["search", "--out", tiny.out, "--resume", "--no-progress"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["search", "--space", "nope"], "unknown search space 'nope'"),
    (["search", "--method", "random"], "unknown search method 'random'"),
    (["search", "--preset", "huge"], "unknown search preset 'huge'"),
    (["search", "--set", "epochs=0"], "epochs must be at least 1, got 0"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # nothing written for a run that never started


def test_cli_bad_space_file_is_one_line(tmp_path, capsys, cifar10_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ncandidates: {sep_conv_3x3: [hebb]}\n")
    assert main(["search", "--space", str(bad), "--data-dir", str(cifar10_root), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "op 'sep_conv_3x3' lists unknown rule 'hebb'" in err and "\n" not in err


def test_without_a_data_directory_the_smoke_search_runs_on_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BIONAS_DATA", raising=False)
    out = tmp_path / "digits"
    assert main(["search", "--preset", "smoke", "--channels", "4", "--set", "epochs=1", "--set",
                 "steps_per_epoch=1", "--out", str(out), "--no-progress"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["dataset"] == "digits"  # what "auto" meant
    info = json.loads((out / "run_info.json").read_text())
    assert info["dataset"] == "digits" and info["weight_images"] == info["architecture_images"] == 200
    load_genotype(out / "genotype.json", load_space("bionas"))


def test_cell_pictures_colour_edges_by_the_rule_registry_and_give_weightless_ops_no_rule(tmp_path):
    import shutil

    import matplotlib.image

    from bionas.models.genotypes import resolve_genotype, with_rule
    from bionas.rules import RULES
    from bionas.search import plots

    genotype = with_rule(resolve_genotype("darts_v2"), "usf")
    dot = plots.cell_dot(genotype, "reduce")  # darts_v2's reduction cell: max pools and skips only ...
    assert "|" not in dot and "style=dashed" in dot and "style=solid" not in dot  # ... so no rule anywhere
    normal = plots.cell_dot(genotype, "normal")
    assert f'label="sep_conv_3x3|usf", color="{RULES.get("usf").color}"' in normal
    assert 'label="skip_connect", color="#888888"' in normal
    engines = ["matplotlib"] + (["dot"] if shutil.which("dot") else [])
    for engine in engines:
        plots.draw_cells(genotype, tmp_path / f"{engine}.png", engine=engine)
        image = matplotlib.image.imread(tmp_path / f"{engine}.png")
        assert image.shape[0] > 500 and image.shape[1] > 500 and image.std() > 0.05, engine


@pytest.mark.parametrize("partial_channels", [pytest.param(1, marks=pytest.mark.slow), 2])  # 1: in -m slow
@pytest.mark.parametrize("method", list(STRATEGIES))
def test_every_registered_strategy_searches_resumes_and_derives_a_valid_genotype(tiny, method, partial_channels,
                                                                                killed_after):
    """Run each strategy for 2 epochs (first epoch architecture-free where a strategy warms up:
    ``warmup_epochs`` 1 if it has one), straight and killed after epoch 1 then resumed, on the
    full-channel supernet and on PC-DARTS' partial-channel one."""
    fields = {f.name for f in dataclasses.fields(STRATEGIES.get(method).Options)}
    options = {"warmup_epochs": 1} if "warmup_epochs" in fields else {}
    config = _replace(tiny, method=method, strategy_options={method: options}, partial_channels=partial_channels)
    straight = run_search(config)
    with pytest.raises(Killed):
        run_search(_replace(config, out=tiny.out + "_k"), on_epoch_end=killed_after(1))
    resumed = run_search(_replace(config, out=tiny.out + "_k"), resume=True)
    assert resumed.genotype == straight.genotype and resumed.genotype.weights == straight.genotype.weights
    straight.genotype.validate(load_space(tiny.space))
    first, last = straight.genotype.weights, load_genotype(straight.out / "genotype.json").weights
    assert first == last and len(straight.history) == 2


def test_mixing_entropy_is_one_at_the_uniform_start_and_falls_as_edges_settle():
    from bionas.search.run import mixing_entropy
    from bionas.search.supernet import Supernet
    from bionas.space import SupernetShape, space_from_dict

    net = Supernet(space_from_dict(yaml.safe_load(SPACE)), 3, 10, seed=0, shape=SupernetShape(channels=4, cells=3,
                                                                                               nodes=2))
    assert mixing_entropy(net) == pytest.approx(1.0, abs=1e-5)  # logits 1e-3 N(0, 1): nearly uniform
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.alpha_normal[:, 0] = 50.0  # every normal edge settled on one candidate
    assert mixing_entropy(net) == pytest.approx(0.5, abs=1e-5)  # the reduction edges still uniform
