"""The command line: help, listings, the quickstart end to end, one-line errors."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from bionas import ops, rules
from bionas.cli import main


@pytest.mark.parametrize("command", [[], ["quickstart"], ["search"], ["train"], ["attack"], ["rules"], ["ops"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: bionas" in text
    if command == ["search"]:
        assert all(opt in text for opt in ["--method", "--space", "--order", "--resume", "--preset"])


def test_listings_name_every_registered_entry(capsys):
    for command, names in (("rules", [*rules.RULES.names(), "modifiers,", *rules.MODIFIERS.names()]),
                           ("ops", ops.OPS.names())):
        assert main([command]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in lines if not line.startswith(" ")] == names  # one line each


@pytest.mark.parametrize("argv,message", [
    (["train"], "nothing to train: give --genotype"),
    (["train", "--model", "resnet18"], "unknown model 'resnet18'"),
    (["train", "--model", "resnet20", "--genotype", "darts_v2"], "takes --rule only"),
    (["train", "--genotype", "darts_v2", "--rule", "hebbo"], "unknown learning rule 'hebbo'"),
    (["train", "--genotype", "no_such_cell"], "unknown genotype 'no_such_cell'"),
    (["quickstart", "--rules", "bp", "hebbo"], "unknown rule(s) hebbo"),
    (["quickstart", "--dataset", "cifar10", "--data-dir", "/no/such/dir"], "does not exist"),
    (["quickstart", "--dataset", "mnist"], "unknown dataset 'mnist'"),
])
def test_bad_input_gives_one_line_and_status_2(argv, message, capsys, tmp_path):
    assert main(argv + (["--out", str(tmp_path)] if argv[0] in ("quickstart", "train") else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bionas: error: ") and message in err[-1]
    assert not any(tmp_path.iterdir())  # nothing written, config.json included


def test_quickstart_end_to_end_on_real_cifar10(cifar10_root, tmp_path, capsys):
    out = tmp_path / "qs"
    code = main(["quickstart", "--dataset", "cifar10", "--data-dir", str(cifar10_root), "--steps", "8",
                 "--train-per-class", "20", "--test-per-class", "10", "--out", str(out), "--no-progress"])
    assert code == 0
    results = pd.read_csv(out / "results.csv")
    assert list(results["network"]) == ["bp", "fa", "usf", "brsf", "frsf", "mixed"]
    assert results.loc[results.network == "mixed", "rules"].item() == "bp+brsf+fa+frsf+usf"
    assert results["test_acc"].between(0, 1).all() and results["first_loss"].notna().all()
    assert len(pd.read_csv(out / "curves.csv")) == 6 * 8
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "cifar10" and config["config"]["seed"] == 0 and "bionas_version" in config
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_console_script_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "bionas", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("bionas ")


def test_divergence_is_one_line_and_writes_no_results(tmp_path, capsys):
    code = main(["quickstart", "--dataset", "digits", "--rules", "fa", "--lr", "1e12", "--steps", "30",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("bionas: error: training loss became nan (gradient norm nan) at step") and "--lr" in last
    assert not any(tmp_path.iterdir())  # nothing written, config.json included


def test_a_failed_rerun_leaves_the_earlier_run_intact(tmp_path, capsys):
    out = str(tmp_path)
    base = ["quickstart", "--dataset", "digits", "--rules", "bp", "--steps", "5", "--out", out, "--no-progress"]
    assert main(base) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"config.json", "results.csv", "curves.csv", "loss_curves.png"} <= set(before)
    assert main(base) == 2  # a rerun into the same folder is refused ...
    assert "already holds quickstart results" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # byte for byte, no stray temp files
    fresh = tmp_path.parent / f"{tmp_path.name}_diverging"
    diverging = ["quickstart", "--dataset", "digits", "--rules", "bp", "--steps", "30", "--lr", "1e12",
                 "--out", str(fresh), "--no-progress"]
    assert main(diverging) == 2  # ... and a run that fails part-way writes nothing
    assert not fresh.exists() or not any(fresh.iterdir())
