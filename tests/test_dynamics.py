"""The learning-dynamics recorder: estimators against hand computations, alignment against
float64, and recording that leaves training unchanged and resumes without gaps."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bionas import rules
from bionas.dynamics import DynamicsRecorder, GradientWindow, angle_degrees, kurtosis
from bionas.engine import train_step


def test_gradient_window_equals_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    samples = [torch.randn(3, 4, generator=gen) * 0.5 + 1.0 for _ in range(7)]
    window = GradientWindow([torch.Size([3, 4])], torch.device("cpu"))
    for g in samples:
        window.add([g])
    stats = window.statistics()
    a = np.stack([g.numpy().astype(np.float64) for g in samples])  # (n, 3, 4)
    assert float(stats["grad_variance"][0]) == pytest.approx(a.var(axis=0, ddof=1).sum(), rel=1e-12)
    assert float(stats["grad_sq_norm"][0]) == pytest.approx((a ** 2).sum(axis=(1, 2)).mean(), rel=1e-12)
    assert float(stats["grad_mean_sq_norm"][0]) == pytest.approx((a.mean(axis=0) ** 2).sum(), rel=1e-12)


def test_recorded_gradient_variance_recovers_known_noise(tmp_path):
    """A layer whose gradient is exactly the batch's target xi ~ N(mu, sigma^2): the recorded
    variance is the sample variance of the xi (hand computation) and close to n sigma^2."""
    n_out, sigma, mu, steps = 50, 0.3, 2.0, 200
    layer = nn.Linear(1, n_out, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)  # stationary: the window sees pure noise
    recorder = DynamicsRecorder(layer, every=steps)
    gen = torch.Generator().manual_seed(1)
    xis = []
    for step in range(steps):
        xi = torch.randn(1, n_out, generator=gen) * sigma + mu
        xis.append(xi)
        train_step(layer, optimizer, torch.ones(1, 1), xi, step, loss_fn=lambda out, y: (out * y).sum(),
                   recorder=recorder)
    rows = pd.DataFrame(recorder.rows)
    got = rows[(rows.metric == "grad_variance") & (rows.layer == "(all)")]["value"].item()
    a = torch.cat(xis).double().numpy()
    assert got == pytest.approx(a.var(axis=0, ddof=1).sum(), rel=1e-9)
    assert got == pytest.approx(n_out * sigma ** 2, rel=0.15)
    ratio = rows[(rows.metric == "noise_ratio") & (rows.layer == "(all)")]["value"].item()
    assert ratio == pytest.approx(n_out * sigma ** 2 / (n_out * mu ** 2), rel=0.2)


def _record_noise_stream(every: int, epoch_steps: int, epochs: int, n_out: int, sigma: float, mu: float):
    """A layer whose gradient at each step is the batch's target xi ~ N(mu, sigma^2), recorded in
    windows of ``every`` steps cut at epoch ends; returns the rows and the xi of every step."""
    layer = nn.Linear(1, n_out, bias=False)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    recorder = DynamicsRecorder(layer, every=every)
    gen = torch.Generator().manual_seed(3)
    xis, step = [], 0
    for epoch in range(1, epochs + 1):
        for _ in range(epoch_steps):
            xi = torch.randn(1, n_out, generator=gen) * sigma + mu
            xis.append(xi)
            train_step(layer, optimizer, torch.ones(1, 1), xi, step, loss_fn=lambda out, y: (out * y).sum(),
                       recorder=recorder)
            step += 1
        recorder.end_epoch(epoch, step)
    rows = pd.DataFrame(recorder.rows)
    return rows[rows.layer == "(all)"], torch.cat(xis).double().numpy()


def test_signal_to_noise_is_unbiased_across_window_lengths_where_the_plug_in_ratio_is_not():
    """Epochs of 50 steps in windows of 40: windows of 40 and of 10 steps alternate. The true
    signal-to-noise per batch is mu^2 / sigma^2 = 0.09; grad_snr estimates it in both kinds of
    window, while the plug-in noise ratio tr(Sigma) / ||mean g||^2 reads 1 / (0.09 + 1 / n): about
    2x apart between the two (the zig-zag of a noise-ratio curve)."""
    n_out, sigma, mu = 50, 1.0, 0.3
    rows, xi = _record_noise_stream(every=40, epoch_steps=50, epochs=150, n_out=n_out, sigma=sigma, mu=mu)
    n = rows[rows.metric == "grad_window_steps"].set_index("step")["value"]
    assert sorted(set(n)) == [10, 40]
    snr = rows[rows.metric == "grad_snr"].set_index("step")["value"]
    ratio = rows[rows.metric == "noise_ratio"].set_index("step")["value"]
    for length in (10, 40):
        steps = n.index[n == length]
        assert snr[steps].mean() == pytest.approx(mu ** 2 / sigma ** 2, abs=0.01)
        assert ratio[steps].median() == pytest.approx(1 / (mu ** 2 / sigma ** 2 + 1 / length), rel=0.15)
    # the first window (steps 0..39) against a hand computation from the stream itself
    a = xi[:40]
    var = a.var(axis=0, ddof=1).sum()
    assert snr.iloc[0] == pytest.approx((((a.mean(axis=0)) ** 2).sum() - var / 40) / var, rel=1e-9)


def test_signal_to_noise_of_runs_recorded_without_it_is_recovered_from_their_sums():
    from bionas.analyze import with_snr

    rows, _ = _record_noise_stream(every=8, epoch_steps=20, epochs=3, n_out=6, sigma=1.0, mu=0.5)
    recorded = rows[rows.metric == "grad_snr"].set_index("step")["value"]
    legacy = rows[~rows.metric.isin(["grad_snr", "grad_window_steps"])]
    rebuilt = with_snr(legacy)
    got = rebuilt[(rebuilt.metric == "grad_snr") & (rebuilt.layer == "(all)")].set_index("step")["value"]
    assert len(got) == len(recorded) == 9
    assert np.allclose(got.sort_index().to_numpy(), recorded.sort_index().to_numpy(), rtol=1e-9)


def test_kurtosis_of_a_gaussian_is_three_and_of_a_uniform_nine_fifths():
    gen = torch.Generator().manual_seed(2)
    assert kurtosis(torch.randn(200_000, generator=gen)) == pytest.approx(3.0, abs=0.05)
    assert kurtosis(torch.rand(200_000, generator=gen)) == pytest.approx(1.8, abs=0.02)


class MLP(nn.Module):
    def __init__(self, width: int = 512):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, width), nn.Linear(width, width), nn.Linear(width, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _angles(net: nn.Module, exact: bool = False) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 20, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    x = x.to(next(net.parameters()).dtype)
    recorder = DynamicsRecorder(net, every=2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    with rules.exact_gradients(net) if exact else torch.enable_grad():
        train_step(net, optimizer, x, y, 0, recorder=recorder)
    rows = pd.DataFrame(recorder.rows)
    return rows[rows.metric.isin(["input_error_angle", "update_angle"])].set_index(["metric", "layer"])["value"]


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "brsf", "frsf"])
def test_alignment_is_zero_for_bp_and_for_any_rule_in_exact_mode(rule):
    torch.manual_seed(0)
    net = MLP(64)
    angles = _angles(rules.convert(net, rule, seed=0) if rule != "bp" else net, exact=rule != "bp")
    assert len(angles) == 5  # update angles of 3 layers, input errors of fc2 and fc3 (fc1's input has none)
    assert (angles.abs() < 1e-3).all(), angles


def test_a_fresh_random_fa_matrix_sends_errors_at_about_ninety_degrees_matching_float64():
    """fc3 learns by FA with a fresh random B: the error it sends to its input, B^T delta, is
    about 90 degrees from the true W^T delta on a wide layer; the recorded angle equals a direct
    float64 computation of it."""
    torch.manual_seed(0)
    net = MLP(512)
    net.fc3 = rules.convert(net.fc3, "fa", seed=5)
    angles = _angles(net.double())
    recorded = angles[("input_error_angle", "fc3")]
    assert recorded == pytest.approx(90.0, abs=6.0)
    # the same angle by hand: delta = d(mean CE)/d logits, error = delta B vs delta W
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 20, generator=gen).double(), torch.randint(0, 10, (32,), generator=gen)
    ref = MLP(512).double()
    h = F.relu(ref.fc2(F.relu(ref.fc1(x))))
    logits = ref.fc3(h)  # the weights before the recorded step moved them
    delta = (torch.softmax(logits, 1) - F.one_hot(y, 10).double()) / len(y)
    B = net.fc3.rule.B.detach().double()
    assert recorded == pytest.approx(angle_degrees(delta @ B, delta @ ref.fc3.weight.detach()), abs=1e-9)
    assert angles[("update_angle", "fc3")] == pytest.approx(0.0, abs=1e-3)  # FA's own weight gradient is true
    assert angles[("update_angle", "fc2")] > 30.0  # fc2's update follows fc3's random feedback


def _train(out: Path, cifar10_root: Path, dynamics: bool, resume: bool = False, stop_after: int | None = None):
    from bionas.train import resolve_config, run_train

    class Stop(Exception):
        pass

    def stop(epoch):
        if epoch == stop_after:
            raise Stop

    overrides = {"genotype": "darts_v2", "rule": "brsf", "dataset": "cifar10", "data_dir": str(cifar10_root),
                 "out": str(out), "epochs": 3, "batch_size": 8, "progress": False, "per_class": 4,
                 "test_per_class": 1, "channels": 4, "layers": 3, "drop_path": 0.3, "steps_per_epoch": 4,
                 "dynamics": dynamics, "dynamics_every": 3}
    try:
        run_train(resolve_config(overrides=overrides), resume=resume, overrides=overrides if resume else None,
                  on_epoch_end=stop)
    except Stop:
        pass
    return torch.load(out / "checkpoint.pt", weights_only=False)


def test_recording_leaves_training_bitwise_unchanged_and_resume_continues_the_series(cifar10_root, tmp_path):
    """brSF (a feedback draw per forward), drop path (the global RNG) and batch norm: the
    weights with and without recording are identical; a run stopped after epoch 2 -- with rows
    of epoch 3 already written, as if killed between its rows and its checkpoint -- resumes to
    the uninterrupted run's dynamics.csv, row for row."""
    a = _train(tmp_path / "plain", cifar10_root, dynamics=False)["model"]
    b = _train(tmp_path / "recorded", cifar10_root, dynamics=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else str(a[k]) == str(b[k]) for k in a)

    full = pd.read_csv(tmp_path / "recorded" / "dynamics.csv")
    assert set(full.epoch) == {0, 1, 2, 3}
    assert {"grad_variance", "noise_ratio", "input_error_angle", "update_angle", "weight_kurtosis"} <= set(full.metric)
    brsf = full[(full.metric == "input_error_angle") & (full.rule == "brsf")]["value"]
    assert len(brsf) and ((brsf > 0) & (brsf < 180)).all()
    assert np.isfinite(full[full.metric == "grad_variance"]["value"]).all()

    twin = tmp_path / "twin"
    _train(twin, cifar10_root, dynamics=True, stop_after=2)
    partial = pd.read_csv(twin / "dynamics.csv")
    assert set(partial.epoch) == {0, 1, 2}
    pd.concat([partial, full[full.epoch == 3].head(5)]).to_csv(twin / "dynamics.csv", index=False)  # the stray rows
    _train(twin, cifar10_root, dynamics=True, resume=True)
    resumed = pd.read_csv(twin / "dynamics.csv")
    pd.testing.assert_frame_equal(resumed, full)

    # a fresh run in a folder holding another run's series (killed before its first checkpoint,
    # or a finished run made again) starts them anew
    again = tmp_path / "again"
    again.mkdir()
    for name in ("dynamics.csv", "weight_histograms.csv"):
        (again / name).write_bytes((tmp_path / "recorded" / name).read_bytes())
    _train(again, cifar10_root, dynamics=True)
    for name in ("dynamics.csv", "weight_histograms.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(again / name), pd.read_csv(tmp_path / "recorded" / name))


def test_analyze_draws_the_figures_and_a_summary_from_recorded_runs(cifar10_root, tmp_path):
    from bionas.cli import main

    _train(tmp_path / "a", cifar10_root, dynamics=True)
    _train(tmp_path / "b", cifar10_root, dynamics=True)
    assert main(["analyze", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "fig"),
                 "--labels", "first", "second"]) == 0
    for name in ("gradient_variance.png", "weight_histograms.png", "alignment.png"):
        assert (tmp_path / "fig" / name).stat().st_size > 10_000, name
    summary = pd.read_csv(tmp_path / "fig" / "summary.csv")
    assert set(summary["run"]) == {"first", "second"} and {"all", "brsf", "bp"} <= set(summary["rule"])
    row = summary[(summary.run == "first") & (summary.rule == "all")].iloc[0]
    assert row["grad_variance_per_weight_mean"] > 0 and 0 < row["input_error_angle_median_last_epoch"] < 180
    # the same runs give the same numbers (the two runs are identical trainings)
    first, second = (summary[summary.run == r].drop(columns="run").reset_index(drop=True) for r in ("first", "second"))
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize("make,message", [
    (lambda d: None, "is not a run folder"),
    (lambda d: d.mkdir(), "has no dynamics.csv; rerun it with --dynamics"),
    (lambda d: (d.mkdir(), (d / "dynamics.csv").write_text("a,b\n1,2\n")), "lacks the columns"),
])
def test_analyze_refuses_what_is_not_a_recorded_run(tmp_path, capsys, make, message):
    from bionas.cli import main

    make(tmp_path / "run")
    assert main(["analyze", str(tmp_path / "run"), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_per_layer_gradients_and_chosen_histogram_epochs_are_options():
    torch.manual_seed(0)
    net = MLP(16)
    recorder = DynamicsRecorder(net, every=2, histogram_epochs=[1], layer_gradients=True)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(4)
    recorder.end_epoch(0, 0)
    for step in range(4):
        train_step(net, optimizer, torch.randn(8, 20, generator=gen), torch.randint(0, 10, (8,), generator=gen),
                   step, recorder=recorder)
    recorder.end_epoch(1, 4)
    rows = pd.DataFrame(recorder.rows)
    assert set(rows[rows.metric == "grad_variance"]["layer"]) == {"fc1", "fc2", "fc3", "(rule) bp", "(all)"}
    assert {h["epoch"] for h in recorder.histograms} == {1}
