"""kill -9 at random points of a smoke search, training and attack -- including while a checkpoint
is being written -- always leaves a run that the same command (with --resume once there is
something to resume) finishes with the results of an uninterrupted run, and no temporary files.

Slow (a few minutes): ``python -m pytest -m slow tests/test_kill_resume.py``.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _command(kind: str, out: Path, root: Path, checkpoint: Path | None) -> list[str]:
    data = ["--dataset", "cifar10", "--data-dir", str(root)]
    if kind == "search":
        return ["search", "--preset", "smoke", *data, "--epochs", "4", "--channels", "4",
                "--set", "steps_per_epoch=2", "--out", str(out)]
    if kind == "train":
        return ["train", "--model", "resnet20", "--rule", "brsf", *data, "--preset", "smoke", "--epochs", "4",
                "--set", "per_class=150", "--set", "test_per_class=10", "--out", str(out)]
    return ["attack", "--checkpoint", str(checkpoint), "--set", "n=100", "--set", "attacks=[fgsm, pgd, square, apgd]",
            "--set", "square_queries=50", "--set", "batch_size=25", "--out", str(out)]


def _run(args: list[str], kill_after: float | None = None, kill_on_tmp: Path | None = None) -> float | None:
    """Run ``bionas ARGS``; with ``kill_after`` SIGKILL it after that many seconds (or as soon as
    a checkpoint temporary appears in ``kill_on_tmp``); its wall time, None when killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bionas", *args, "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.perf_counter()
    while proc.poll() is None:
        waited = time.perf_counter() - start
        writing = kill_on_tmp is not None and any(kill_on_tmp.glob(".checkpoint.pt.*.tmp"))
        if (kill_after is not None and waited > kill_after) or writing:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(0.005 if kill_on_tmp is not None else 0.05)
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-2000:]
    return time.perf_counter() - start


def _finish_with_kills(kind: str, out: Path, root: Path, checkpoint: Path | None, rng: random.Random,
                       whole_seconds: float) -> int:
    """Kill the run at random moments of an uninterrupted run's ``whole_seconds`` (and once while
    a checkpoint is written), resume until done."""
    kills = 0
    for attempt in range(20):
        resumable = (out / "checkpoint.pt").exists() or (kind == "attack" and (out / "config.yaml").exists())
        args = _command(kind, out, root, checkpoint) + (["--resume"] if resumable else [])
        if attempt < 3:
            code = _run(args, kill_after=rng.uniform(0.3, 0.8) * whole_seconds)
        elif attempt == 3:
            code = _run(args, kill_after=300, kill_on_tmp=out)  # while a checkpoint is being written
        else:
            code = _run(args)
        if code is None:
            kills += 1
            continue
        return kills
    raise AssertionError("the run never finished")


def _results(kind: str, out: Path) -> object:
    if kind == "search":
        log = pd.read_csv(out / "search_log.csv").drop(columns=["seconds"])
        return json.loads((out / "genotype.json").read_text()), log
    if kind == "train":
        model = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
        return json.loads((out / "results.json").read_text())["test_acc"], model
    return pd.read_csv(out / "results.csv").drop(columns=["seconds"])


@pytest.fixture(scope="module")
def attacked_checkpoint(cifar10_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "fa"
    _run(["train", "--model", "resnet20", "--rule", "fa", "--dataset", "cifar10", "--data-dir", str(cifar10_root),
          "--preset", "smoke", "--epochs", "1", "--set", "per_class=20", "--set", "test_per_class=4",
          "--out", str(out)])
    return out


@pytest.mark.parametrize("kind", ["search", "train", "attack"])
def test_kill_9_anywhere_resumes_to_the_uninterrupted_result(kind, cifar10_root, tmp_path, attacked_checkpoint):
    checkpoint = attacked_checkpoint if kind == "attack" else None
    seconds = _run(_command(kind, tmp_path / "whole", cifar10_root, checkpoint))
    kills = _finish_with_kills(kind, tmp_path / "cut", cifar10_root, checkpoint, random.Random(kind), seconds)
    assert kills >= 2
    whole, cut = _results(kind, tmp_path / "whole"), _results(kind, tmp_path / "cut")
    if kind == "search":
        assert whole[0] == cut[0]
        pd.testing.assert_frame_equal(whole[1], cut[1])
    elif kind == "train":
        assert whole[0] == cut[0]
        assert all(torch.equal(whole[1][k], cut[1][k]) if torch.is_tensor(whole[1][k])
                   else str(whole[1][k]) == str(cut[1][k]) for k in whole[1])
    else:
        pd.testing.assert_frame_equal(whole, cut)
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # no temporary files left behind
