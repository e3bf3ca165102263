"""Does weight perturbation learn a classifier on fixed features, at the sparse-nets paper's step?

The classifier (2,000 -> 10) of the ``mlp`` model learns by ``wp`` with eq. 4's mix (eta 5e-4,
sigma^2 1.6e-4, alpha 0.04, gamma 0.04) and a chosen beta, on top of a frozen random hidden layer
(Xavier, never updated), on real CIFAR-10 (500 training images per class, 100 test images per
class, batches of 100): test loss and accuracy after every epoch. A probe of the rule's step
size, not a table: it separates "WP does not learn at this step" from "the hidden layer's
Hebbian learning breaks the classifier".

    BIONAS_DATA=../shared/data/cifar10 python scripts/wp_step_probe.py --beta 87500 8750 875 --epochs 4
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from bionas import rules
from bionas.data import load_dataset
from bionas.engine import initialise_weights, train_step
from bionas.models.mlp import MLP


def probe(beta: float, epochs: int, root: str) -> list[tuple[float, float]]:
    tr = load_dataset("cifar10", root, "train", per_class=500, seed=0)
    te = load_dataset("cifar10", root, "test", per_class=100, seed=0)
    X, Y = tr.images.float().div(255).flatten(1), tr.labels
    Xt, Yt = te.images.float().div(255).flatten(1), te.labels
    torch.manual_seed(0)
    net = MLP(10, X.shape[1])
    net.classifier = rules.convert(net.classifier, "wp", seed=1, lr=5e-4, sigma=1.6e-4 ** 0.5, mix=True,
                                   hebbian_weight=0.04, wp_weight=beta, bias_gamma=0.04)
    initialise_weights(net, "xavier", torch.Generator().manual_seed(0))
    net.hidden.requires_grad_(False)  # fixed random features
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    g, step, history = torch.Generator().manual_seed(0), 0, []
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for b in range(len(X) // 100):
            idx = perm[b * 100:(b + 1) * 100]
            train_step(net, opt, X[idx], Y[idx], step)
            step += 1
        with torch.no_grad():
            logits = net(Xt)
        history.append((float(F.cross_entropy(logits, Yt)), float((logits.argmax(1) == Yt).float().mean())))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beta", type=float, nargs="+", default=[87500.0, 8750.0, 875.0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    root = os.environ.get("BIONAS_DATA")
    if not root:
        raise SystemExit("wp_step_probe: set BIONAS_DATA to a CIFAR-10 directory (torchvision layout)")
    print("| beta | " + " | ".join(f"epoch {e + 1}: test loss / acc" for e in range(args.epochs)) + " |")
    print("|---:|" + "---|" * args.epochs)
    for beta in args.beta:
        cells = " | ".join(f"{loss:.3f} / {100 * acc:.1f}%" for loss, acc in probe(beta, args.epochs, root))
        print(f"| {beta:g} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
