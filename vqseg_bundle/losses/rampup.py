"""Ramp-up of the pseudo-label loss weight over the first iterations of training.

Neither ignite nor MONAI has a weight schedule for a loss term (ignite's ``ParamScheduler`` sets
optimizer parameters only), so this small function is written here.
"""

from __future__ import annotations

import math

__all__ = ["RAMPUP_SHAPES", "rampup_factor"]

RAMPUP_SHAPES = ("sigmoid", "linear")


def rampup_factor(iteration: int, length: int, shape: str = "sigmoid") -> float:
    """Multiplier in ``[0, 1]`` of a loss weight at ``iteration`` (0-based) of a ramp-up of ``length`` iterations.

    ``"sigmoid"``: ``exp(-5 (1 - t)^2)`` with ``t = iteration / length`` (Laine & Aila's temporal
    ensembling, used by the SSL4MIS mean-teacher baselines); ``"linear"``: ``t``. ``length <= 0`` means no
    ramp-up (factor 1 from the first iteration, the VQ-Seg paper's constant lambda_u).

    Args:
        iteration: 0-based training iteration.
        length: ramp-up length in iterations.
        shape: ``"sigmoid"`` or ``"linear"``.

    Returns:
        The factor; 1.0 once ``iteration >= length``.
    """
    if shape not in RAMPUP_SHAPES:
        raise ValueError(f"ramp-up shape must be one of {RAMPUP_SHAPES}, got {shape!r}")
    if length <= 0 or iteration >= length:
        return 1.0
    t = max(0.0, float(iteration)) / float(length)
    return math.exp(-5.0 * (1.0 - t) ** 2) if shape == "sigmoid" else t
