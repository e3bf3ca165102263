"""Data-parallel training on CPU (gloo): N processes compute what one process computes."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leave(rank: int) -> None:
    """Leave the two-process group as the package does (every rank at a barrier first)."""
    from bionas.distributed import Context, teardown

    teardown(Context(rank, 2))


def _bn_worker(rank: int, port: int, x: torch.Tensor, result: str) -> None:
    import torch.distributed as dist

    from bionas.distributed import convert_batchnorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = convert_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)).double(),
                            torch.device("cpu"))
    part = x[rank::2].clone().requires_grad_(True)
    out = net(part)
    # the global loss is the mean over both ranks of each rank's mean; DDP averages the same way
    loss = (out ** 3).mean() / 2
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    for g in grads:
        dist.all_reduce(g)
    if rank == 0:
        torch.save((out.detach(), part.grad, grads, net[1].running_var, net[3].running_mean), result)
    _leave(rank)


def test_global_batchnorm_equals_batchnorm_on_the_whole_batch(tmp_path):
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 + 1
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)).double()
    xin = x.clone().requires_grad_(True)
    out = ref(xin)
    (out ** 3).mean().backward()

    result = tmp_path / "rank0.pt"
    mp.start_processes(_bn_worker, args=(free_port(), x, str(result)), nprocs=2, start_method="spawn")
    got_out, got_dx, got_grads, got_rv, got_rm = torch.load(result)
    assert torch.allclose(got_out, out[0::2].detach(), atol=1e-12)
    assert torch.allclose(got_dx, xin.grad[0::2], atol=1e-12)
    for g, p in zip(got_grads, ref.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-12)
    assert torch.allclose(got_rv, ref[1].running_var, atol=1e-12)  # unbiased variance of the global batch
    assert torch.allclose(got_rm, ref[3].running_mean, atol=1e-12)


def _train(out: Path, cifar10_root: Path, extra: list[str], processes: int) -> dict:
    args = ["-m", "bionas", "train", "--genotype", "darts_v2", "--rule", "brsf", "--dataset", "cifar10",
            "--data-dir", str(cifar10_root), "--out", str(out), "--epochs", "2", "--batch-size", "16",
            "--lr", "0.01", "--no-progress", "--set", "per_class=4", "--set", "test_per_class=2",
            "--set", "channels=4", "--set", "layers=3", "--set", "drop_path=0.3", "--set", "steps_per_epoch=1",
            "--set", "eval_batch_size=10", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "checkpoint.pt", weights_only=False)


def test_two_process_torchrun_matches_one_process_on_the_same_global_batch(cifar10_root, tmp_path):
    """brSF (a feedback redraw every step), drop path, the auxiliary head and batch norm all
    have to agree across ranks for the weights to match. Float32 reductions in another order
    give differences of ~0.2% of the update (the same as one process run with other thread
    counts, measured); unsynchronised batch statistics give ~60%."""
    from bionas.train import build_network, load_trained

    one = _train(tmp_path / "one", cifar10_root, [], 1)
    two = _train(tmp_path / "two", cifar10_root, [], 2)
    trained = load_trained(tmp_path / "one" / "checkpoint.pt")
    start = build_network(trained.config, trained.data, trained.genotype).state_dict()
    names = [n for n, _ in trained.model.named_parameters()]
    update = max(float((one["model"][n] - start[n]).abs().max()) for n in names)
    gap = max(float((one["model"][n] - two["model"][n]).abs().max()) for n in names)
    assert update > 1e-3
    assert gap < 0.01 * update, (gap, update)
    # brSF drew the same number of feedback tensors in both runs
    draws = [k for k in one["model"] if k.endswith("_extra_state") and "draws" in str(one["model"][k])]
    assert draws and all(str(one["model"][k]) == str(two["model"][k]) for k in draws)
    assert one["history"][-1]["test_acc"] == pytest.approx(two["history"][-1]["test_acc"])


def _local_net() -> nn.Module:
    from bionas import rules

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).double()
    net[0] = rules.convert(net[0], "hebbian", seed=1, update="bcm", competition="hard_wta", activation="cosine", lr=0.1)
    net[2] = rules.convert(net[2], "pc", seed=2, adaptive=True, normalise=True, lr=0.1)
    return net


def _local_step(net: nn.Module, ddp: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    import torch.nn.functional as F

    from bionas import rules

    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        with rules.local_updates(net):
            loss = F.cross_entropy(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.clone() for k, v in net.state_dict().items()}


def _local_worker(rank: int, port: int, x: torch.Tensor, y: torch.Tensor, result: str) -> None:
    import torch.distributed as dist

    from bionas.distributed import wrap

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = _local_net()
    state = _local_step(net, wrap(net, torch.device("cpu"), sync_buffers=False), x[rank::2], y[rank::2])
    torch.save(state, f"{result}.{rank}")
    _leave(rank)


def test_local_rules_under_ddp_apply_the_one_process_update_on_every_rank(cifar10_root, tmp_path):
    """Hebbian (BCM, hard WTA) and pc layers sum their statistics over the ranks: two processes
    on half batches end with the weights, theta and G of one process on the whole batch; DDP
    ignores the local weights (it would otherwise wait for their gradients) and still averages
    the classifier's gradient."""
    from bionas.data import BatchLoader, load_dataset

    data = load_dataset("cifar10", cifar10_root, "train", per_class=1, seed=0)
    x, y = next(iter(BatchLoader(data, 10, shuffle=False)))
    x = x[:8, :, :12, :12].double()
    y = y[:8]
    net = _local_net()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    ref = _local_step(net, net, x, y)
    result = tmp_path / "state"
    mp.start_processes(_local_worker, args=(free_port(), x, y, str(result)), nprocs=2, start_method="spawn")
    for rank in range(2):
        got = torch.load(f"{result}.{rank}")
        for k in ref:
            assert torch.allclose(got[k], ref[k], rtol=1e-9, atol=1e-12), (rank, k)
    for k in ("0.weight", "0.rule.theta", "2.weight", "2.rule.G", "5.weight"):
        assert not torch.equal(ref[k], start[k]), k


SMALL_SPACE = """name: small
candidates: {none: [], max_pool_3x3: [], skip_connect: [brsf], sep_conv_3x3: [fa, brsf]}
supernet: {channels: 4, cells: 3, nodes: 2}
"""


def _search(out: Path, cifar10_root: Path, extra: list[str], processes: int) -> dict:
    space = out.parent / "small.yaml"
    space.write_text(SMALL_SPACE)
    args = ["-m", "bionas", "search", "--preset", "smoke", "--dataset", "cifar10", "--data-dir", str(cifar10_root),
            "--out", str(out), "--epochs", "2", "--batch-size", "16", "--space", str(space), "--no-progress",
            "--set", "per_class=8", "--set", "steps_per_epoch=1", "--set", "channels_last=false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, *args] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "checkpoint.pt", weights_only=False)


@pytest.mark.parametrize("extra", [
    pytest.param(["--method", "darts"], id="darts"),
    pytest.param(["--method", "eg", "--set", "strategy_options.eg.restarts=1"], id="eg",  # evolves once, in epoch 2
                 marks=pytest.mark.slow),  # ~25 s; the same data-parallel code as darts', in -m slow
])
def test_two_process_search_matches_one_process_on_the_same_global_batch(cifar10_root, tmp_path, extra):
    """``torchrun`` search: weights and architecture logits of 2 processes equal those of 1
    process to float32 noise (the ranks agreeing with each other is checked by the run itself,
    after every epoch); brSF drew the same feedback tensors; the logged metrics are the global
    batch's; only rank 0 wrote. Two epochs of one step each (the epoch boundary, evaluation and
    checkpoint included): the sign-concordant rules' feedback ``sign(W)`` is discontinuous at
    ``W = 0``, so float32 noise grows ~30x per step once weights cross zero (measured: 1e-6 after
    2 steps, 1e-3 after 4), in one process across thread counts as across ranks. Second order is
    checked in float64 below."""
    one = _search(tmp_path / "one", cifar10_root, extra, 1)
    two = _search(tmp_path / "two", cifar10_root, extra, 2)
    logits = [k for k in one["model"] if k.startswith(("alpha_", "beta_"))]
    weights = [k for k, v in one["model"].items() if k not in logits and torch.is_tensor(v) and v.is_floating_point()
               and not k.endswith(("running_mean", "running_var"))]
    assert logits and weights
    from bionas.configs.options import resolve
    from bionas.search.config import SearchConfig
    from bionas.search.run import _Search

    start = _Search(resolve(SearchConfig, "search", None, tmp_path / "one" / "config.yaml")).model.state_dict()
    update = max(float((one["model"][k] - start[k]).abs().max()) for k in weights)
    gap = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in weights)
    assert update > 1e-2 and gap < 1e-3 * update, (gap, update)
    moved = max(float((one["model"][k] - start[k]).abs().max()) for k in logits)
    gap = max(float((one["model"][k] - two["model"][k]).abs().max()) for k in logits)
    # Adam scales each logit's step by its own gradient's size: noise in a nearly cancelling one is magnified
    assert moved > 1e-4 and gap < 1e-2 * moved, (gap, moved)
    draws = [k for k in one["model"] if k.endswith("_extra_state") and "draws" in str(one["model"][k])]
    assert draws and all(str(one["model"][k]) == str(two["model"][k]) for k in draws)
    for a, b in zip(one["history"], two["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"])
    if "eg" in extra:
        assert one["strategy"]["fitness_log"] and [r["selected_ce"] for r in one["strategy"]["fitness_log"]] == \
            pytest.approx([r["selected_ce"] for r in two["strategy"]["fitness_log"]], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def _darts_steps(root: str, hessian: str, rank: int, world: int) -> list[torch.Tensor]:
    """Three second-order DARTS steps (architecture, then weights) in float64 on real images,
    each rank on its share ``rank::world`` of every batch; the logits and weights after each."""
    import dataclasses

    from bionas import distributed
    from bionas.configs.options import check
    from bionas.data import BatchLoader, load_dataset
    from bionas.search.config import SearchConfig
    from bionas.search.darts import DartsStrategy
    from bionas.search.supernet import Supernet
    from bionas.space import space_from_dict

    space = space_from_dict(yaml.safe_load(SMALL_SPACE))
    data = load_dataset("cifar10", root, "train", per_class=2, seed=0)
    x, y = next(iter(BatchLoader(data, 16, shuffle=False)))
    net = Supernet(space, 3, 10, seed=0).double()
    config = check(dataclasses.replace(SearchConfig(), strategy_options={"darts": {"order": "second",
                                                                                   "hessian": hessian}}))
    strategy = DartsStrategy(net, config, distributed.Context(rank, world, 0))
    states = []
    for step in range(3):
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(step))
        train, val = perm[:8][rank::world], perm[8:][rank::world]
        strategy.step((x[train].double(), y[train]), (x[val].double(), y[val]), step)
        states.append(torch.cat([p.detach().flatten() for p in net.parameters()]).clone())
    return states


def _darts_worker(rank: int, port: int, root: str, hessian: str, result: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.save(_darts_steps(root, hessian, rank, 2), f"{result}.{rank}")
    _leave(rank)


@pytest.mark.slow  # ~35 s each on 2 cores; the float32 two-process search tests above stay in the default run
@pytest.mark.parametrize("hessian", ["exact", "finite_difference"])
def test_two_process_second_order_darts_equals_one_process_in_float64(cifar10_root, tmp_path, hessian):
    """The data-parallel second-order step -- the averaged virtual step, the double backward
    through global batch norm and its all-reduce (exact), or the averaged finite difference --
    is the one-process step on the whole batch, to float64 rounding, for three steps."""
    ref = _darts_steps(str(cifar10_root), hessian, 0, 1)
    result = tmp_path / "state"
    mp.start_processes(_darts_worker, args=(free_port(), str(cifar10_root), hessian, str(result)), nprocs=2,
                       start_method="spawn")
    for rank in range(2):
        got = torch.load(f"{result}.{rank}")
        for a, b in zip(ref, got):
            assert float((a - b).abs().max()) < 1e-10 * float(a.abs().max()), rank
    assert float((ref[-1] - ref[0]).abs().max()) > 1e-3  # the steps moved something


def _oja_wp_net():
    from bionas import rules

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3)).double()
    net[0] = rules.convert(net[0], "oja", seed=0, lr=0.1, post="relu")
    net[2] = rules.convert(net[2], "wp", seed=1, lr=0.2, sigma=0.05, mix=True, bias_gamma=0.5)
    return net


def _oja_wp_worker(rank: int, port: int, x: torch.Tensor, y: torch.Tensor, result: str) -> None:
    import torch.distributed as dist

    from bionas.engine import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = _oja_wp_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(3):
        train_step(net, opt, x[rank::2], y[rank::2], step)
    if rank == 0:
        torch.save({k: v for k, v in net.state_dict().items() if torch.is_tensor(v)}, result)
    _leave(rank)


def test_oja_and_wp_updates_over_two_processes_equal_the_global_batch_update(tmp_path):
    """Oja's sums and WP's loss change run over the global batch; the noise is the same on both."""
    from bionas.engine import train_step

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 6, dtype=torch.float64, generator=g), torch.randint(0, 3, (16,), generator=g)
    net = _oja_wp_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for step in range(3):
        train_step(net, opt, x, y, step)
    result = tmp_path / "rank0.pt"
    mp.start_processes(_oja_wp_worker, args=(free_port(), x, y, str(result)), nprocs=2, start_method="spawn")
    got = torch.load(result)
    for k, v in net.state_dict().items():
        if torch.is_tensor(v):
            assert torch.allclose(got[k], v, atol=1e-12), k
    assert not torch.equal(got["0.weight"], _oja_wp_net().state_dict()["0.weight"])  # they did learn
