"""Shared helpers of the speed-path tests: test images and a two-sample comparison of statistics."""

from __future__ import annotations

import math

import torch

SIZE = 32


def marker_image(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """An asymmetric test slice ``(1, S, S)`` in [0, 1] and its label ``(1, S, S)`` (3 classes).

    A bright off-centre square (class 2) on a smooth ramp (class 1 where > 0.3), so that flips,
    rotations and zooms all move measurable statistics (centroid, mass, padded area).
    """
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = 0.2 + 0.4 * xx * yy
    image[size // 5 : size // 2, size // 6 : size // 3 + 2] = 1.0
    label = (image > 0.3).long() + (image > 0.9).long()
    return image[None].float(), label[None]


def weak_stats(image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample geometry statistics ``(B, k)`` of ``(B, 1, S, S)`` images (and labels)."""
    b, _, h, w = image.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    m = image[:, 0].clamp_min(0)
    mass = m.sum((1, 2))
    stats = [
        mass / (h * w),
        (m * xx).sum((1, 2)) / mass,  # centroid: flips and rotations move it
        (m * yy).sum((1, 2)) / mass,
        (image[:, 0] == 0).float().mean((1, 2)),  # zero padding: rotation and zoom-out
        (image[:, 0] > 0.9).float().mean((1, 2)),  # bright square area: zoom
    ]
    if label is not None:
        lab = label.reshape(b, h, w)
        stats += [(lab == c).float().mean((1, 2)) for c in (0, 1, 2)]
    return torch.stack(stats, 1)


def strong_stats(image: torch.Tensor) -> torch.Tensor:
    """Per-sample intensity statistics ``(B, k)``: mean, std, min, max, high-frequency energy."""
    x = image[:, 0]
    lap = x[:, 1:-1, 1:-1] * 4 - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    flat = x.reshape(x.shape[0], -1)
    return torch.stack([flat.mean(1), flat.std(1), flat.amin(1), flat.amax(1), lap.pow(2).mean((1, 2)).sqrt()], 1)


def assert_same_distribution(a: torch.Tensor, b: torch.Tensor, names: list[str], z: float = 4.5, atol: float = 1e-3):
    """Means and standard deviations of each column of ``a (n, k)`` and ``b (m, k)`` agree within ``z``
    standard errors (plus ``atol`` for the small systematic differences of resampling)."""
    a, b = a.double(), b.double()
    n, m = a.shape[0], b.shape[0]
    for j, name in enumerate(names):
        ma, mb = a[:, j].mean(), b[:, j].mean()
        sa, sb = a[:, j].std(), b[:, j].std()
        se_mean = math.sqrt(float(sa**2 / n + sb**2 / m))
        assert (
            abs(float(ma - mb)) <= z * se_mean + atol
        ), f"{name}: mean {float(ma):.5f} vs {float(mb):.5f} (se {se_mean:.5f})"
        # the standard error of a standard deviation is about s / sqrt(2 (n - 1))
        se_std = math.sqrt(float(sa**2 / (2 * (n - 1)) + sb**2 / (2 * (m - 1))))
        assert (
            abs(float(sa - sb)) <= z * se_std + atol
        ), f"{name}: std {float(sa):.5f} vs {float(sb):.5f} (se {se_std:.5f})"
