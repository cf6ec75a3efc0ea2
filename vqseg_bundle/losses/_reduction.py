"""Shared argument checks for the loss functions of this package."""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, where: str) -> str:
    """Return ``reduction`` if it is one of ``"mean"``, ``"sum"``, ``"none"``, else raise ``ValueError``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    return reduction


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to a tensor of per-element losses."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values
