"""bionas reproduce: plans, a smoke run end to end on real CIFAR-10, skipping what is done."""
import pandas as pd

from bionas.cli import main
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
    assert len(out) == 11 and out[-1].startswith("10 of 10 runs left, about")
    assert not any((tmp_path / "mini").iterdir()) if (tmp_path / "mini").exists() else True
    assert main(["reproduce", "table9", "--root", str(tmp_path)]) == 2
    assert "unknown experiment 'table9'" in capsys.readouterr().err
    assert main(["reproduce", "mixed_vs_single", "--scale", "huge", "--root", str(tmp_path)]) == 2
    assert "unknown scale 'huge'" in capsys.readouterr().err


def test_smoke_scale_end_to_end_then_every_run_is_skipped(cifar10_root, tmp_path, capsys, caplog):
    import logging

    argv = ["reproduce", "mixed_vs_single", "--scale", "smoke", "--seeds", "0", "--root", str(tmp_path),
            "--data-dir", str(cifar10_root)]
    assert main(argv) == 0
    out = tmp_path / "smoke" / "mixed_vs_single"
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["variant"]) == {"mixed", "bp", "fa", "usf", "brsf", "frsf", "random_rules", "random_cell"}
    assert runs["test_acc"].between(0, 1).all()
    table = (out / "table.md").read_text()
    assert table.splitlines()[2].startswith("| mixed | 1 |") and "| random_cell | 1 |" in table
    assert (out / "accuracy.png").stat().st_size > 5_000
    first = table
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="bionas.reproduce"):
        assert main(argv) == 0  # a second sitting: nothing left to run
    assert sum("done already" in r.getMessage() for r in caplog.records) == 10
    assert (out / "table.md").read_text() == first
