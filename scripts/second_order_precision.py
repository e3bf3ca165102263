"""How far float32 second-order DARTS is from float64, per batch, layout and batch-norm formula.

The exact second-order architecture gradient (``hessian: exact``) differentiates the training
gradient once more; its Hessian-vector term is sensitive to rounding. This script computes that
gradient on a small supernet (fa/usf candidates: their forward and feedback do not depend on the
dtype, unlike brSF's random draws) for several real CIFAR-10 batches in float64 and in float32,
contiguous and channels-last, with torch's batch norm and with the composite formula that
data-parallel search uses (:func:`bionas.distributed.global_moments`, here in one process), and
prints the relative error ``||g32 - g64|| / ||g64||`` of each.

    python scripts/second_order_precision.py --batches 4            # writes results/second_order_precision.csv
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bionas.configs.options import check  # noqa: E402
from bionas.data import BatchLoader, load_dataset  # noqa: E402
from bionas.distributed import GlobalBatchNorm2d, global_moments  # noqa: E402
from bionas.io import save_csv  # noqa: E402
from bionas.search.config import SearchConfig  # noqa: E402
from bionas.search.darts import DartsStrategy  # noqa: E402
from bionas.search.supernet import Supernet  # noqa: E402
from bionas.space import SupernetShape, space_from_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACE = {"name": "fa_usf", "candidates": {"none": [], "max_pool_3x3": [], "skip_connect": ["usf"],
                                          "sep_conv_3x3": ["fa", "usf"]}}


def _composite_forward(self, x):
    """GlobalBatchNorm2d's data-parallel formula, taken in one process."""
    xf = x if x.dtype == torch.float64 else x.float()
    mean, var, _ = global_moments(xf, (0, 2, 3))
    y = (xf - mean) * torch.rsqrt(var + self.eps)
    if self.affine:
        y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
    return y.to(x.dtype)


@contextmanager
def batchnorm_formula(name: str):
    native = GlobalBatchNorm2d.forward
    if name == "composite":
        GlobalBatchNorm2d.forward = _composite_forward
    try:
        yield
    finally:
        GlobalBatchNorm2d.forward = native


def hypergradient(x, y, dtype, layout, shape) -> torch.Tensor:
    net = Supernet(space_from_dict(SPACE), 3, 10, seed=0, shape=shape).to(dtype)
    x = x.to(dtype)
    if layout == "channels_last":
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    config = check(dataclasses.replace(SearchConfig(), strategy_options={"darts": {"order": "second"}}))
    half = len(y) // 2
    grads, _, _ = DartsStrategy(net, config).unrolled_gradient((x[:half], y[:half]), (x[half:], y[half:]))
    return torch.cat([g.flatten() for g in grads]).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="images per batch (half train, half validation)")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("BIONAS_DATA"), help="CIFAR-10 (default: $BIONAS_DATA)")
    parser.add_argument("--out", default=str(REPO / "results" / "second_order_precision.csv"))
    args = parser.parse_args()
    shape = SupernetShape(channels=args.channels, cells=args.cells, nodes=4)
    data = load_dataset("cifar10", args.data_dir, "train", per_class=-(-args.batch * args.batches // 10), seed=0)
    rows = []
    for b, (x, y) in enumerate(BatchLoader(data, args.batch, seed=0, drop_last=True)):
        if b == args.batches:
            break
        reference = hypergradient(x, y, torch.float64, "contiguous", shape)
        for formula in ("native", "composite"):
            for layout in ("contiguous", "channels_last"):
                with batchnorm_formula(formula):
                    got = hypergradient(x, y, torch.float32, layout, shape)
                rows.append({"batch": b, "batchnorm": formula, "layout": layout,
                             "relative_error": float((got - reference).norm() / reference.norm())})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    save_csv(table, args.out)
    print(table.pivot_table(index="batch", columns=["batchnorm", "layout"], values="relative_error")
          .to_string(float_format=lambda v: f"{v:.1e}"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
