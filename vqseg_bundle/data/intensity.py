"""Per-volume intensity normalisation applied by the readers (once, at load time)."""

from __future__ import annotations

import numpy as np

__all__ = ["NORMALIZATION_MODES", "check_normalization", "normalize_intensity"]

#: Accepted values of the ``normalization`` argument of the readers.
NORMALIZATION_MODES = ("minmax", "zscore", "percentile", "none")


def check_normalization(mode: str) -> str:
    """``mode`` when it is one of :data:`NORMALIZATION_MODES`.

    Raises:
        ValueError: for another value.
    """
    if mode not in NORMALIZATION_MODES:
        raise ValueError(f"normalization must be one of {NORMALIZATION_MODES}, got {mode!r}")
    return mode


def normalize_intensity(
    volume: np.ndarray, mode: str = "minmax", percentiles: tuple[float, float] = (0.5, 99.5)
) -> np.ndarray:
    """Normalise the intensities of one volume (any shape) as a whole.

    Args:
        volume: image array, e.g. ``(H, W, D)``; statistics are taken over all its voxels so that
            every slice of a volume is scaled the same way.
        mode: ``"minmax"`` -> ``[0, 1]`` (the SSL4MIS ACDC preprocessing; a constant volume becomes 0),
            ``"zscore"`` -> zero mean, unit variance (a constant volume becomes 0),
            ``"percentile"`` -> clipped to the given percentiles then scaled to ``[0, 1]``
            (robust to a few hot voxels), ``"none"`` -> unchanged.
        percentiles: lower and upper percentile for ``"percentile"``.

    Returns:
        A new float32 array of the same shape.

    Raises:
        ValueError: for an unknown ``mode`` or invalid ``percentiles``.
    """
    check_normalization(mode)
    out = np.asarray(volume, dtype=np.float32)
    if mode == "none":
        return out.copy()
    if mode == "zscore":
        mean, std = float(out.mean(dtype=np.float64)), float(out.std(dtype=np.float64))
        return ((out - mean) / std if std > 0 else out - mean).astype(np.float32)
    if mode == "percentile":
        lo_p, hi_p = percentiles
        if not 0 <= lo_p < hi_p <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        lo, hi = (float(v) for v in np.percentile(out, [lo_p, hi_p]))
        out = np.clip(out, lo, hi)
    else:
        lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        return np.zeros_like(out)
    return ((out - lo) / (hi - lo)).astype(np.float32)
