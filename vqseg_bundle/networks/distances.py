"""Pairwise distances between token features and codewords, in float32 and in bounded memory."""

from __future__ import annotations

import torch

__all__ = ["DISTANCES", "pairwise_distance", "no_autocast"]

DISTANCES = ("sqeuclidean", "cosine")


def no_autocast(device: torch.device):
    """Context manager disabling autocast on ``device`` (distances and argmins must stay float32)."""
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type="cpu", enabled=False)


def pairwise_distance(
    a: torch.Tensor, b: torch.Tensor, distance: str = "sqeuclidean", b_sqnorm: torch.Tensor | None = None
) -> torch.Tensor:
    """Distances between the rows of ``a (M, D)`` and ``b (K, D)`` as an ``(M, K)`` float32 matrix.

    ``"sqeuclidean"``: ``||a||^2 - 2 a.b + ||b||^2`` clamped at 0 (one GEMM, no ``(M, K, D)`` tensor);
    ``"cosine"``: ``1 - cos(a, b)`` (in [0, 2]).

    Args:
        a: ``(M, D)``; cast to float32.
        b: ``(K, D)``; cast to float32.
        distance: ``"sqeuclidean"`` or ``"cosine"``.
        b_sqnorm: optional precomputed ``(K,)`` squared norms of ``b`` (sqeuclidean only), reused over
            chunks.
    """
    a = a.float()
    b = b.float()
    if distance == "sqeuclidean":
        if b_sqnorm is None:
            b_sqnorm = (b * b).sum(1)
        d = torch.addmm(b_sqnorm[None, :], a, b.t(), beta=1.0, alpha=-2.0)
        return (d + (a * a).sum(1, keepdim=True)).clamp_min_(0.0)
    if distance == "cosine":
        a_n = torch.nn.functional.normalize(a, dim=1)
        b_n = torch.nn.functional.normalize(b, dim=1)
        return 1.0 - a_n @ b_n.t()
    raise ValueError(f"pairwise_distance: distance must be one of {DISTANCES}, got {distance!r}.")
