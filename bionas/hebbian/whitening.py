"""ZCA whitening (Bell & Sejnowski 1997; the pre-processing of the Hebbian-CNN paper, section 3.2).

``x_white = (x - mean) U diag(1 / sqrt(lambda + eps)) U^T`` with ``U, lambda`` the eigenvectors and
eigenvalues of the training images' pixel covariance: decorrelated pixels, as close as possible
to the original image (the "zero-phase" rotation back). Fitted on training images only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ZCA:
    mean: Tensor  # (D,)
    matrix: Tensor  # (D, D), symmetric

    @classmethod
    def fit(cls, images: Tensor, eps: float, chunk: int = 5000) -> "ZCA":
        """images: (N, C, H, W) floats (pixels in [0, 1]); the covariance is accumulated in float64."""
        x = images.flatten(1)
        mean = x.double().mean(0)
        cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        for start in range(0, len(x), chunk):
            centred = x[start:start + chunk].double() - mean
            cov += centred.T @ centred
        cov /= len(x)
        eigenvalues, U = torch.linalg.eigh(cov)
        matrix = U @ torch.diag((eigenvalues.clamp_min(0) + eps).rsqrt()) @ U.T
        return cls(mean.to(images.dtype), matrix.to(images.dtype))

    def __call__(self, images: Tensor, chunk: int = 5000) -> Tensor:
        x = images.flatten(1)
        out = torch.empty_like(x)
        for start in range(0, len(x), chunk):
            out[start:start + chunk] = (x[start:start + chunk] - self.mean) @ self.matrix
        return out.view_as(images)
