"""Config fields check themselves: types, ranges, choices and layering, for every command's config."""
from __future__ import annotations

import dataclasses

import pytest

from bionas.attack import AttackConfig
from bionas.cli import main
from bionas.configs import options, presets
from bionas.errors import ConfigError
from bionas.hebbian import HebbianConfig
from bionas.quickstart import QuickstartConfig
from bionas.search import STRATEGIES, SearchConfig
from bionas.train import TrainConfig

CONFIGS = [SearchConfig, TrainConfig, AttackConfig, HebbianConfig, QuickstartConfig,
           *(STRATEGIES.get(name).Options for name in STRATEGIES)]


@pytest.mark.parametrize("config_type", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_declares_help_and_its_default_passes_its_own_checks(config_type):
    for f in dataclasses.fields(config_type):
        assert f.metadata.get("help"), f"{config_type.__name__}.{f.name} has no help text"
    config = config_type()
    checked = options.check(dataclasses.replace(config, **{k: v for k, v in _needed(config_type).items()}))
    assert dataclasses.asdict(checked).keys() == dataclasses.asdict(config).keys()


def _needed(config_type) -> dict:
    """The fields a config cannot do without (what to train or attack)."""
    return {TrainConfig: {"genotype": "darts_v2"}, AttackConfig: {"checkpoints": ["x.pt"]},
            HebbianConfig: {"learning": "none"}}.get(config_type, {})


@pytest.mark.parametrize("field,value,message", [
    ("lr", "abc", "lr must be a number, got 'abc'"),
    ("lr", "nan", "lr must be a finite number"),  # YAML reads nan as a string
    ("lr", "-inf", "lr must be a finite number"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("lr", float("inf"), "lr must be a finite number"),
    ("lr", 0, "lr must be greater than 0"),
    ("momentum", 1.5, "momentum must be less than 1"),
    ("seed", "abc", "seed must be an integer, got 'abc'"),
    ("seed", 1.5, "seed must be an integer, got 1.5"),
    ("epochs", True, "epochs must be an integer, got True"),
    ("augment", "yes", "augment must be true or false"),
    ("train_portion", "half", "train_portion must be a number"),
    ("per_class", 0, "per_class must be at least 1"),
    ("rule_options", [1], "rule_options must be a mapping"),
    ("method", "random", "unknown search method 'random'"),
])
def test_wrong_values_are_one_line_errors_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        options.check(dataclasses.replace(SearchConfig(), **{field: value}))


def test_values_are_coerced_where_lossless():
    c = options.check(dataclasses.replace(SearchConfig(), lr=1, epochs=3.0))
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.epochs == 3 and isinstance(c.epochs, int)
    # YAML 1.1 reads exponents without a dot as strings: --set lr=2e-2 is still a number
    assert options.resolve(SearchConfig, "search", None, None, {"lr": options.parse_assignment("lr=2e-2")[1]}).lr == 0.02
    darts = STRATEGIES.get("darts").options_from({"arch_betas": [0, 0.5]})
    assert darts.arch_betas == (0.0, 0.5) and all(isinstance(b, float) for b in darts.arch_betas)
    with pytest.raises(ConfigError, match="arch_betas must be a list, got 5"):
        STRATEGIES.get("darts").options_from({"arch_betas": 5})
    with pytest.raises(ConfigError, match="every item of milestones must be an integer"):
        options.check(dataclasses.replace(TrainConfig(genotype="darts_v2"), milestones=[1, "x"]))


def test_dotted_keys_set_one_entry_of_a_mapping_and_layers_apply_in_order(tmp_path):
    config = options.resolve(SearchConfig, "search", "smoke", None, {"strategy_options.eg.population": 12,
                                                                      "rule_options.usf.scale": 1.0})
    assert config.strategy_options["eg"] == {"warmup_epochs": 1, "population": 12, "restarts": 2, "score_chunk": 8}
    assert config.rule_options == {"usf": {"scale": 1.0}} and config.options_for("eg").population == 12
    file = tmp_path / "c.yaml"
    file.write_text("epochs: 7\nbatch_size: 16\n")
    config = options.resolve(SearchConfig, "search", "smoke", file, {"epochs": 9})
    assert (config.epochs, config.batch_size, config.cells) == (9, 16, 3)  # flags > file > preset
    with pytest.raises(ConfigError, match="lr.x in the command line: lr is not a mapping"):
        options.resolve(SearchConfig, "search", None, None, {"lr.x": 1})


@pytest.mark.parametrize("command", ["search", "train", "attack", "hebbian"])
def test_every_preset_of_every_command_resolves(command):
    config_type = {"search": SearchConfig, "train": TrainConfig, "attack": AttackConfig, "hebbian": HebbianConfig}[command]
    for name in presets(command):
        overrides = {k: v for k, v in _needed(config_type).items() if k != "learning"}
        config = options.resolve(config_type, command, name, None, overrides)
        assert isinstance(config, config_type)


@pytest.mark.parametrize("argv,message", [
    (["search", "--set", "lr=abc"], "lr must be a number, got 'abc'"),
    (["train", "--genotype", "darts_v2", "--set", "drop_path=high"], "drop_path must be a number"),
    (["attack", "--checkpoint", "x.pt", "--set", "eps=abc"], "eps must be a number"),
    (["hebbian", "--set", "dropout=lots"], "dropout must be a number"),
    (["search", "--device", "gpu"], "unknown device 'gpu'"),
])
def test_cli_wrong_types_are_one_line(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bionas: error: ") and message in err and "\n" not in err


def test_a_preset_that_changes_the_recipes_batch_scales_its_learning_rate_linearly():
    from bionas.train import resolve_config

    resnet = resolve_config("smoke", None, {"model": "resnet20", "rule": "fa"})  # recipe: 0.1 at batch 128
    assert resnet.batch_size == 32 and resnet.lr == pytest.approx(0.1 * 32 / 128)
    cell = resolve_config("smoke", None, {"genotype": "darts_v2"})  # recipe: 0.025 at batch 96
    assert cell.lr == pytest.approx(0.025 * 32 / 96)
    assert resolve_config("smoke", None, {"model": "resnet20", "lr": 0.2}).lr == 0.2  # a given rate is kept
    assert resolve_config(None, None, {"model": "resnet20", "batch_size": 128}).lr == 0.1
