"""bionas reproduce: plans, tables against hand computation, every experiment at smoke scale on real
CIFAR-10 end to end, and a second sitting that skips finished runs and resumes killed ones."""
import json
from pathlib import Path

import pandas as pd
import pytest

from bionas.cli import main
from bionas.errors import ConfigError
from bionas.reproduce import plan


def test_the_plan_holds_each_claims_runs_per_seed():
    runs = plan("mixed_vs_single", "mini", [0, 1, 2]).runs
    names = [r.name for r in runs]
    assert len(names) == len(set(names)) == 3 * 10
    variants = {r.labels["variant"] for r in runs if r.command == "train"}
    assert variants == {"mixed", "bp", "fa", "usf", "brsf", "frsf", "random_rules", "random_cell"}
    # every training of a searched cell reads its own seed's search
    assert all(r.options["genotype"] == f"@search_s{r.labels['seed']}/genotype.json" for r in runs
               if r.command == "train" and r.labels["variant"] != "random_cell")


def test_dry_run_lists_runs_and_cost_and_bad_names_are_one_line(tmp_path, capsys):
    assert main(["reproduce", "mixed_vs_single", "--scale", "mini", "--seeds", "0", "--root", str(tmp_path),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 12 and out[-2].startswith("10 of 10 runs left, about")
    assert out[-1].startswith("spent so far: 0.0 CPU core-hours")
    assert not any((tmp_path / "mini").iterdir()) if (tmp_path / "mini").exists() else True
    # what the runs measured: a training's epochs (5400 s) and a search's (1800 + 1800 s)
    (tmp_path / "mini" / "train_s0_bp").mkdir(parents=True)
    (tmp_path / "mini" / "train_s0_bp" / "results.json").write_text(json.dumps({"train_seconds": 5400.0}))
    (tmp_path / "mini" / "search_s0").mkdir()
    pd.DataFrame({"epoch": [1, 2], "seconds": [1800.0, 1800.0]}).to_csv(tmp_path / "mini" / "search_s0" /
                                                                        "search_log.csv", index=False)
    assert main(["reproduce", "mixed_vs_single", "--scale", "mini", "--seeds", "0", "--root", str(tmp_path),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("9 of 10 runs left") and out[-1].startswith("spent so far: 2.5 CPU core-hours")
    assert main(["reproduce", "table9", "--root", str(tmp_path)]) == 2
    assert "unknown experiment 'table9'" in capsys.readouterr().err
    assert main(["reproduce", "mixed_vs_single", "--scale", "huge", "--root", str(tmp_path)]) == 2
    assert "unknown scale 'huge'" in capsys.readouterr().err


def test_run_locks_exclude_a_second_claim_and_take_over_a_dead_ones(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from bionas.reproduce import RunLock

    first, second = RunLock(tmp_path, "search_s0"), RunLock(tmp_path, "search_s0")
    assert first.acquire() and not second.acquire()
    second.owner = "elsewhere 1"
    second.release()  # not its claim: nothing happens
    assert (tmp_path / ".locks" / "search_s0").is_file()
    first.release()
    assert second.acquire()
    second.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".locks" / "x").write_text(f"{first.owner.split()[0]} {dead.pid}")
    assert RunLock(tmp_path, "x").acquire()  # a claim of a dead process on this host is taken over
    (tmp_path / ".locks" / "y").write_text("another-host 1")
    assert not RunLock(tmp_path, "y").acquire()  # another host's live claim (recently refreshed): respected
    old = time.time() - RunLock.STALE_SECONDS - 1
    os.utime(tmp_path / ".locks" / "y", (old, old))
    assert RunLock(tmp_path, "y").acquire()  # ... until nobody refreshed it for STALE_SECONDS
    held = RunLock(tmp_path, "z")
    held.REFRESH_SECONDS = 0.05
    assert held.acquire()
    os.utime(held.path, (old, old))
    time.sleep(0.3)
    assert time.time() - held.path.stat().st_mtime < 5  # its holder keeps it fresh
    held.release()
    assert not held.path.exists()


def test_a_process_waits_for_a_run_another_one_holds_and_names_a_missing_input(tmp_path, monkeypatch, caplog):
    import logging
    import socket
    import subprocess
    import sys
    import threading

    import bionas.reproduce as reproduce
    from bionas.errors import ConfigError
    from bionas.reproduce import Run, run_all

    monkeypatch.setattr(reproduce, "POLL_SECONDS", 0.2)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2.0)"])
    (tmp_path / ".locks").mkdir()
    (tmp_path / ".locks" / "random_cell_s0").write_text(f"{socket.gethostname()} {other.pid}")
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):  # --no-wait: leave it to the holder
        run_all([Run("random_cell_s0", "random_cell", {"seed": 0})], "smoke", tmp_path, None, "cpu", wait=False)
    assert caplog.records[-1].getMessage() == "left to other processes: random_cell_s0"
    assert not (tmp_path / "random_cell_s0").exists() and other.poll() is None  # returned while it lived
    caplog.clear()
    reaper = threading.Thread(target=other.wait)
    reaper.start()
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
        run_all([Run("random_cell_s0", "random_cell", {"seed": 0})], "smoke", tmp_path, None, "cpu")
    reaper.join()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("waiting for other processes: random_cell_s0") for m in messages)
    assert (tmp_path / "random_cell_s0" / "genotype.json").is_file()  # made once the holder died
    with pytest.raises(ConfigError, match="train_x needs .*nothing/genotype.json, which no run of the experiment"):
        run_all([Run("train_x", "train", {"genotype": "@nothing/genotype.json"})], "smoke", tmp_path, None, "cpu")


def test_a_run_waits_for_its_input_runs_to_finish_not_for_their_files_to_appear(tmp_path, monkeypatch, caplog):
    """A training in progress already has a checkpoint (of its last epoch): an attack reading it
    must wait for the training to finish."""
    import logging
    import socket
    import subprocess
    import sys

    import bionas.reproduce as reproduce
    from bionas.reproduce import Run, run_all

    started = []
    monkeypatch.setattr(reproduce, "execute", lambda run, *args: started.append(run.name))
    train = Run("train_x", "train", {"model": "resnet20"})
    attack = Run("attack_x", "attack", {"checkpoints": ["@train_x/checkpoint.pt"]})
    (tmp_path / "train_x").mkdir()
    (tmp_path / "train_x" / "checkpoint.pt").write_bytes(b"epoch 3 of 10")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".locks").mkdir()
        (tmp_path / ".locks" / "train_x").write_text(f"{socket.gethostname()} {other.pid}")
        with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
            run_all([train, attack], "smoke", tmp_path, None, "cpu", wait=False)
    finally:
        other.kill()
        other.wait()
    assert started == []
    assert caplog.records[-1].getMessage() == "left to other processes: train_x, attack_x"
    (tmp_path / "train_x" / "results.json").write_text("{}")  # finished: now the attack runs
    run_all([train, attack], "smoke", tmp_path, None, "cpu")
    assert started == ["attack_x"]

def test_a_finished_run_whose_checkpoint_is_gone_is_made_again_for_the_run_that_reads_it(
        cifar10_root, tmp_path, monkeypatch, caplog):
    """A fresh clone holds finished trainings without their checkpoints (not in git): an attack that
    needs one makes that training again, and says whether it matched the first time."""
    import logging

    import bionas.reproduce as reproduce
    from bionas.reproduce import Run, estimate, run_all

    real_execute, seen = reproduce.execute, []

    def execute(run, *args):
        if run.name == "attack_x":  # stands for the attack: records what it finds
            seen.append((run.name, (tmp_path / "train_x" / "checkpoint.pt").is_file()))
            (tmp_path / "attack_x").mkdir(exist_ok=True)
            (tmp_path / "attack_x" / "results.csv").write_text("attack\n")
            return
        seen.append((run.name, None))
        real_execute(run, *args)

    monkeypatch.setattr(reproduce, "execute", execute)
    train = Run("train_x", "train", {"model": "resnet20", "rule": "bp", "seed": 0})
    attack = Run("attack_x", "attack", {"checkpoints": ["@train_x/checkpoint.pt"]})
    run_all([train], "smoke", tmp_path, str(cifar10_root), "cpu")
    first = json.loads((tmp_path / "train_x" / "results.json").read_text())
    (tmp_path / "train_x" / "checkpoint.pt").unlink()
    states = {r["run"]: r["state"] for r in estimate([train, attack], "smoke", tmp_path)[0]}
    assert states == {"train_x": "to remake", "attack_x": "to run"}  # --dry-run says so, and counts it
    seen.clear()
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
        run_all([train, attack], "smoke", tmp_path, str(cifar10_root), "cpu")
    assert seen == [("train_x", None), ("attack_x", True)]  # made again, before the attack
    messages = [r.getMessage() for r in caplog.records]
    assert "train_x made again: the same results as the first time" in messages
    assert json.loads((tmp_path / "train_x" / "results.json").read_text())["test_acc"] == first["test_acc"]
    assert not (tmp_path / "train_x" / "results.previous.json").exists()
    # made on another machine, the first results differed: both are kept, the difference is said
    (tmp_path / "train_x" / "checkpoint.pt").unlink()
    (tmp_path / "attack_x" / "results.csv").unlink()
    (tmp_path / "train_x" / "results.json").write_text(json.dumps({**first, "test_acc": 0.999}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
        run_all([train, attack], "smoke", tmp_path, str(cifar10_root), "cpu")
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and f"test_acc 0.999 -> {first['test_acc']}" in warning[0]
    assert json.loads((tmp_path / "train_x" / "results.previous.json").read_text())["test_acc"] == 0.999

def test_a_resumed_attack_needs_only_the_checkpoints_of_models_with_rows_left(tmp_path):
    """An attack killed after finishing model a: a's training has lost its checkpoint (a fresh
    clone) but is not made again; b's, also gone, is -- and --dry-run says so."""
    from bionas.reproduce import Run, estimate

    runs = [Run(f"train_{m}", "train", {"model": "resnet20", "rule": "bp", "seed": 0}) for m in "ab"]
    attack = Run("attack_x", "attack", {"checkpoints": ["@train_a/checkpoint.pt", "@train_b/checkpoint.pt"]})
    for m in "ab":
        _fake_training(tmp_path, f"train_{m}", 0.5)
    out = tmp_path / "attack_x"
    out.mkdir()
    (out / "config.yaml").write_text(f"checkpoints: [{tmp_path}/train_a/checkpoint.pt, {tmp_path}/train_b]\n"
                                     "attacks: [fgsm]\nsource: null\n")
    (out / "run_info.json").write_text(json.dumps({"models": {m: {"gradients": ["exact"]}
                                                              for m in ("train_a", "train_b")}}))
    pd.DataFrame([{"model": "train_a", "attack": a, "gradient": g} for a, g in (("Clean", "none"), ("FGSM", "exact"))]
                 + [{"model": "train_b", "attack": "Clean", "gradient": "none"}]).to_csv(out / "partial_results.csv")
    states = {r["run"]: r["state"] for r in estimate([*runs, attack], "smoke", tmp_path)[0]}
    assert states == {"train_a": "done", "train_b": "to remake", "attack_x": "resumable"}


def test_every_experiment_plans_its_rows_and_shares_runs():
    names = {e: [r.name for r in plan(e, "mini", [0, 1, 2]).runs] for e in ("table1", "dynamics", "robustness")}
    assert len(names["table1"]) == len(set(names["table1"])) == 3 * 17
    assert {"search_eg_s1", "search_hlpc_s1", "train_s1_darts_v2", "train_s1_resnet56_frsf"} <= set(names["table1"])
    attack = [r for r in plan("robustness", "mini", [1]).runs if r.command == "attack"][0]
    assert attack.options["source"] == "@train_s1_resnet20_bp/checkpoint.pt"  # not a target: no self-transfer
    assert "@train_s1_resnet20_bp/checkpoint.pt" not in attack.options["checkpoints"]
    assert len(attack.options["checkpoints"]) == 6
    every = [r.name for r in plan("all", "mini", [0]).runs]
    assert len(every) == len(set(every))  # a run shared by experiments is made once
    assert set(every) == {n for e in ("mixed_vs_single", "table1", "dynamics", "robustness")
                          for n in (r.name for r in plan(e, "mini", [0]).runs)}

    # several experiments: their runs in the order named, each once; 'all' only alone
    two = [r.name for r in plan(["robustness", "mixed_vs_single"], "mini", [0, 1]).runs]
    robust = [r.name for r in plan("robustness", "mini", [0, 1]).runs]
    assert two[:len(robust)] == robust and len(two) == len(set(two))
    assert set(two) == set(robust) | {r.name for r in plan("mixed_vs_single", "mini", [0, 1]).runs}
    with pytest.raises(ConfigError, match="'all' already names every experiment"):
        plan(["all", "table1"], "mini", [0])


def test_several_experiments_from_the_cli_write_each_table_and_an_index(tmp_path, capsys):
    assert main(["reproduce", "dynamics", "mixed_vs_single", "--scale", "mini", "--seeds", "0", "--root",
                 str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    # dynamics' 7 runs first, then the 3 that mixed_vs_single adds
    assert " train_s0_frsf " in out[6] and " train_s0_random_rules " in out[7] and out[-2].startswith("10 of 10 runs")
    _fake_training(tmp_path / "mini", "train_s0_mixed", 0.5)
    assert main(["reproduce", "dynamics", "mixed_vs_single", "--scale", "mini", "--seeds", "0", "--root",
                 str(tmp_path), "--table-only"]) == 0
    index = (tmp_path / "mini" / "dynamics+mixed_vs_single" / "table.md").read_text()
    assert "* dynamics:" in index and "* mixed_vs_single:" in index
    assert (tmp_path / "mini" / "mixed_vs_single" / "table.md").read_text().splitlines()[2].startswith("| mixed | 1 |")


def test_dynamics_table_pairs_mixed_with_each_rule_over_the_run_and_at_its_end(tmp_path, monkeypatch):
    import bionas.analyze

    # per seed, the gradient variance per weight (mean over windows, last window) of each retraining
    variance = {0: {"mixed": (2e-5, 1e-6), "bp": (1e-5, 1e-5)}, 1: {"mixed": (4e-5, 2e-6), "bp": (4e-5, 1e-6)}}

    def fake_analyze(folders, out, labels):
        seed = int(Path(out).name.split("_")[1])
        out.mkdir(parents=True)
        pd.DataFrame([{"run": v, "rule": "all", "grad_variance_per_weight_mean": variance[seed][v][0],
                       "grad_variance_per_weight_last": variance[seed][v][1], "grad_snr_mean": 0.01,
                       "update_angle_median_last_epoch": 0.0, "weight_kurtosis_final": 3.0} for v in labels]
                     ).to_csv(out / "summary.csv", index=False)
        return out

    monkeypatch.setattr(bionas.analyze, "analyze", fake_analyze)
    exp = plan("dynamics", "mini", [0, 1])
    for seed in (0, 1):
        for v in ("mixed", "bp"):
            _fake_training(tmp_path, f"train_s{seed}_{v}", 0.5)
            (tmp_path / f"train_s{seed}_{v}" / "dynamics.csv").write_text("step\n")
    table = exp.aggregate(exp.runs, tmp_path, tmp_path / "out")
    # last window: mixed 1e-6 and 2e-6, mean 1.5e-6, sd 7.07e-7
    assert "| mixed | 2 | 3.00e-05 +- 1.41e-05 | 1.50e-06 +- 7.07e-07 | +0.0100 +- 0.0000 |" in table
    # log10(2e-5 / 1e-5) = +0.30, log10(4e-5 / 4e-5) = 0; log10(1e-6 / 1e-5) = -1, log10(2e-6 / 1e-6) = +0.30
    assert "| bp | mean over windows | +0.30, +0.00 | +0.15 | no |" in table
    assert "| bp | last window | -1.00, +0.30 | -0.35 | no |" in table


def _fake_training(root, name, acc, parameters=1000):
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps({"test_acc": acc, "test_loss": 1.0, "train_seconds": 1.0}))
    (root / name / "run_info.json").write_text(json.dumps({"parameters_without_auxiliary": parameters}))


def test_mixed_vs_single_table_against_hand_computation(tmp_path):
    exp = plan("mixed_vs_single", "mini", [0, 1, 2])
    accs = {"mixed": [0.60, 0.62, 0.64], "bp": [0.58, 0.57, 0.62], "fa": [0.61, 0.60, 0.66]}
    for variant, values in accs.items():
        for seed, acc in enumerate(values):
            _fake_training(tmp_path, f"train_s{seed}_{variant}", acc)
    table = exp.aggregate(exp.runs, tmp_path, tmp_path / "out").splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table[2:]}
    assert list(rows) == ["mixed", "bp", "fa"]
    # mixed: mean 0.62, sample sd 0.02
    assert rows["mixed"][:2] == ["3", "0.620 +- 0.020"]
    # bp: mean 0.59, sd sqrt(((-.01)^2 + (-.02)^2 + .03^2) / 2) = sqrt(0.0007) = 0.0265
    # differences mixed - bp: +0.02, +0.05, +0.02 -> mean 0.03, sd 0.01732, SE 0.01, 0.03 > 2 SE
    assert rows["bp"] == ["3", "0.590 +- 0.026", "+0.020, +0.050, +0.020", "+0.030", "yes"]
    # fa: differences -0.01, +0.02, -0.02 -> mean -0.0033, sd 0.0208, SE 0.0120: within 2 SE
    assert rows["fa"] == ["3", "0.623 +- 0.032", "-0.010, +0.020, -0.020", "-0.003", "no"]
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(runs) == 9 and set(runs.columns) >= {"seed", "variant", "test_acc", "parameters"}


def test_table1_reads_errors_and_search_costs_from_saved_runs(tmp_path):
    exp = plan("table1", "mini", [0, 1])
    for seed, acc in enumerate([0.80, 0.90]):
        _fake_training(tmp_path, f"train_s{seed}_mixed", acc, parameters=2_500_000)
        _fake_training(tmp_path, f"train_s{seed}_resnet56_usf", acc - 0.1)
        for name, val in [("search", 0.5), ("search_eg", 0.4)]:
            (tmp_path / f"{name}_s{seed}").mkdir()
            (tmp_path / f"{name}_s{seed}" / "genotype.json").write_text("{}")
            pd.DataFrame({"epoch": [1, 2], "val_acc": [0.1, val + seed / 10], "seconds": [1800.0, 1800.0 * (1 + seed)],
                          "mixing_entropy": [0.99, 0.9]}).to_csv(tmp_path / f"{name}_s{seed}" / "search_log.csv",
                                                                  index=False)
    table = exp.aggregate(exp.runs, tmp_path, tmp_path / "out")
    # errors 20% and 10%: mean 15, sd 7.07; ResNet-56 uSF 30 and 20: mean 25
    assert "| BioNAS-DARTS | 4.84 | 15.00 +- 7.07 | 2 | 2.50 |" in table
    assert "| ResNet56 usf | 8.20 | 25.00 +- 7.07 | 2 |" in table
    # search val 50% and 60%; cost 1 h and 1.5 h (sum of epochs)
    assert "| BioNAS-DARTS | 85.83 | 55.00 +- 7.07 | 1.37 | 1.25 +- 0.35 | 0.900 +- 0.000 | 2 |" in table
    assert "| BioNAS-EG | 81.16 | 45.00 +- 7.07 | 0.35 |" in table
    assert "HL-PC |" not in table.split("Table 3")[1]  # no finished HL-PC search: no row


@pytest.fixture(scope="module")
def smoke_root(cifar10_root, tmp_path_factory):
    """Every experiment at smoke scale, one seed, made once for the tests below (~2-3 min)."""
    root = tmp_path_factory.mktemp("reproduce")
    argv = ["reproduce", "all", "--scale", "smoke", "--seeds", "0", "--root", str(root), "--data-dir",
            str(cifar10_root)]
    assert main(argv) == 0
    return root, argv


def test_smoke_scale_writes_every_table_from_real_runs(smoke_root):
    root, _ = smoke_root
    smoke = root / "smoke"
    runs = pd.read_csv(smoke / "mixed_vs_single" / "runs.csv")
    assert set(runs["variant"]) == {"mixed", "bp", "fa", "usf", "brsf", "frsf", "random_rules", "random_cell"}
    assert runs["test_acc"].between(0, 1).all()
    table = (smoke / "mixed_vs_single" / "table.md").read_text()
    assert table.splitlines()[2].startswith("| mixed | 1 |") and "| random_cell | 1 |" in table
    assert (smoke / "mixed_vs_single" / "accuracy.png").stat().st_size > 5_000
    table1 = (smoke / "table1" / "table.md").read_text()
    for row in ["BioNAS-DARTS", "BioNAS-EG", "BioNAS-DARTS-HL-PC", "DARTS V2 (bp)", "ResNet20 fa", "ResNet56 bp"]:
        assert f"| {row} |" in table1, row
    assert len(pd.read_csv(smoke / "table1" / "searches.csv")) == 3
    dynamics = (smoke / "dynamics" / "table.md").read_text()
    assert all(f"| {v} | 1 |" in dynamics for v in ["mixed", "bp", "fa", "usf", "brsf", "frsf"])
    assert (smoke / "dynamics" / "seed_0" / "gradient_variance.png").is_file()
    robust = pd.read_csv(smoke / "robustness" / "runs.csv")
    assert set(robust["model"]) == {"ResNet56 fa", "ResNet56 usf", "ResNet56 frsf", "ResNet56 brsf", "ResNet56 bp",
                                    "BioNAS-DARTS"}
    assert {"Clean", "OP1", "FGSM", "PGD", "Square", "Transfer"} <= set(robust["attack"])
    assert (robust[robust.attack == "Transfer"]["gradient"] == "source-exact").all()
    assert len(robust[robust.attack == "Transfer"]) == 6  # every target, the source is none of them
    assert "| Transfer |" in (smoke / "robustness" / "table.md").read_text()


def test_a_second_sitting_skips_finished_runs_and_redoes_only_the_killed(smoke_root, caplog, monkeypatch):
    import logging
    import shutil
    import socket
    import subprocess
    import sys
    import threading

    import bionas.reproduce as reproduce

    root, argv = smoke_root
    smoke = root / "smoke"
    tables = {e: (smoke / e / "table.md").read_text() for e in ("mixed_vs_single", "table1", "robustness")}
    runs = plan("all", "smoke", [0]).runs
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
        assert main(argv) == 0  # nothing left to run: the tables are rebuilt from the saved runs
    assert sum("done already" in r.getMessage() for r in caplog.records) == len(runs)
    assert {e: (smoke / e / "table.md").read_text() for e in tables} == tables
    for e in tables:
        (smoke / e / "table.md").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
        assert main([*argv, "--table-only"]) == 0  # rebuilt from the saved runs, nothing looked at or run
    assert {e: (smoke / e / "table.md").read_text() for e in tables} == tables
    assert not any("done already" in r.getMessage() or "running" in r.getMessage() for r in caplog.records)
    # a training lost entirely and an attack killed after its first rows: only they run again
    shutil.rmtree(smoke / "train_s0_resnet20_fa")
    attack = smoke / "attack_s0"
    rows = pd.read_csv(attack / "results.csv")
    rows.iloc[:5].to_csv(attack / "partial_results.csv", index=False)
    for name in ("results.csv", "table.md"):
        (attack / name).unlink()
    # ... and the lost training is claimed by another process of this host, which dies after a
    # second: this one passes it over, makes the rest, waits, then takes the dead claim over
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    reaper = threading.Thread(target=other.wait)  # reaped when it ends (a zombie would count as alive)
    reaper.start()
    (smoke / ".locks").mkdir(exist_ok=True)
    (smoke / ".locks" / "train_s0_resnet20_fa").write_text(f"{socket.gethostname()} {other.pid}")
    monkeypatch.setattr(reproduce, "POLL_SECONDS", 0.5)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
        assert main(argv) == 0
    reaper.join()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("done already" in m for m in messages) == len(runs) - 2
    assert "running train_s0_resnet20_fa (train)" in messages and "resuming attack_s0 (attack)" in messages
    claimed = [i for i, m in enumerate(messages) if m.startswith("train_s0_resnet20_fa is being made by another")]
    assert claimed and claimed[0] < messages.index("resuming attack_s0 (attack)")  # passed over first
    assert not any((smoke / ".locks").iterdir())  # every claim released
    # the redone training is bitwise the same run, the resumed attack kept its first rows
    assert (smoke / "table1" / "table.md").read_text() == tables["table1"]
    resumed = pd.read_csv(attack / "results.csv")
    pd.testing.assert_frame_equal(resumed.iloc[:5].reset_index(drop=True), rows.iloc[:5].reset_index(drop=True))
    keys = ["model", "attack", "gradient"]
    pd.testing.assert_frame_equal(resumed.sort_values(keys)[keys + ["robust_acc"]].reset_index(drop=True),
                                  rows.sort_values(keys)[keys + ["robust_acc"]].reset_index(drop=True))


def test_search_summary_measures_how_far_mixing_weights_left_uniform(load_script):
    import math

    summary = load_script("search_summary")
    # edge 1 uniform over 4; edge 2: 0.7 / 0.1 x 3 (stored scaled by 2, as partial channels store them)
    weights = [[0.25] * 4, [1.4, 0.2, 0.2, 0.2]]
    h2 = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1)) / math.log(4)
    assert summary.edge_entropies(weights) == pytest.approx([1.0, h2])
    assert summary.top_over_uniform(weights) == pytest.approx([1.0, 2.8])


def test_robustness_table_shows_an_unfinished_attacks_rows_so_far(tmp_path):
    exp = plan("robustness", "mini", [0])
    assert exp.aggregate(exp.runs, tmp_path, tmp_path / "out") == "no attack rows yet\n"
    (tmp_path / "attack_s0").mkdir()
    pd.DataFrame({"model": ["train_s0_resnet56_fa"] * 3, "attack": ["Clean", "OP1", "OP1"],
                  "gradient": ["none"] * 3, "robust_acc": [0.18, 0.17, 0.17], "n_images": [100] * 3}
                 ).iloc[:2].to_csv(tmp_path / "attack_s0" / "partial_results.csv", index=False)
    table = exp.aggregate(exp.runs, tmp_path, tmp_path / "out")
    assert "| Clean | 18.0 (65.8) |" in table and "| OP1 | 17.0 (47.8) |" in table
    assert "Unfinished, its rows so far: attack_s0" in table
