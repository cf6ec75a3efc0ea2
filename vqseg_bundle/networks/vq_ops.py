"""Stateless operations of vector quantization that guard against codebook collapse.

* :func:`rotation_trick`: the gradient estimator of Fifty et al. 2024 ("Restructuring vector quantization with
  the rotation trick"), an alternative to the straight-through estimator.
* :func:`kmeans`: Lloyd's k-means (Euclidean or spherical) for data-driven codebook initialisation
  (as in Łańcucki et al. 2020 and vector-quantize-pytorch's ``kmeans_init``).

Written here rather than imported from vector-quantize-pytorch because the bundle's quantizer keeps its own
chunked float32 search, its SimVQ codebook and an export path that TorchScript tracing and ONNX accept; these two
functions are a few lines each on top of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .distances import no_autocast

__all__ = ["rotation_trick", "kmeans"]


def rotation_trick(z: torch.Tensor, q: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Forward value ``q``, gradient through a rotation and rescaling that maps ``z`` onto ``q``.

    With ``e = z / |z|``, ``u = q / |q|``, ``r = (e + u) / |e + u|`` and ``lam = |q| / |z|`` (all detached),
    the output is ``lam * (z - 2 r (r . z) + 2 u (e . z))`` = ``lam * R z`` where ``R`` (a rotation taking
    ``e`` to ``u``) is treated as a constant: its value is ``q`` (up to rounding) and ``d out / d z = lam R``,
    so the encoder gradient keeps the angle between the token and its codeword instead of being copied
    unchanged (straight-through).

    Args:
        z: encoder features, e.g. ``(B, D, h, w)``.
        q: the selected codewords, same shape (any gradient they carry is dropped here).
        dim: the feature axis.
        eps: norm floor.

    Returns:
        A tensor of ``z``'s shape and dtype.
    """
    if z.shape != q.shape:
        raise ValueError(f"rotation_trick: z {tuple(z.shape)} and q {tuple(q.shape)} must match.")
    with no_autocast(z.device):
        z32 = z.float()
        q32 = q.detach().float()
        z_norm = z32.detach().norm(dim=dim, keepdim=True).clamp_min(eps)
        q_norm = q32.norm(dim=dim, keepdim=True).clamp_min(eps)
        e = z32.detach() / z_norm
        u = q32 / q_norm
        r = F.normalize(e + u, dim=dim, eps=eps)
        out = (q_norm / z_norm) * (
            z32 - 2.0 * r * (r * z32).sum(dim, keepdim=True) + 2.0 * u * (e * z32).sum(dim, keepdim=True)
        )
    return out.to(z.dtype)


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    iterations: int = 10,
    cosine: bool = False,
    generator: torch.Generator | None = None,
    max_chunk_elements: int = 2**24,
) -> torch.Tensor:
    """Lloyd's k-means of ``x (N, D)`` into ``num_clusters`` centroids ``(num_clusters, D)`` (float32).

    Centroids start at rows of ``x`` drawn uniformly (with replacement when ``N < num_clusters``; the
    duplicates get a small jitter so that they can separate); a centroid that loses all its points keeps its
    position. ``cosine`` runs spherical k-means (rows and centroids l2-normalised, nearest by dot product).
    The ``(N, num_clusters)`` similarity block is computed in chunks of at most ``max_chunk_elements``.
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"kmeans: expected a non-empty (N, D) matrix, got {tuple(x.shape)}.")
    if num_clusters < 1 or iterations < 0:
        raise ValueError(f"kmeans: num_clusters must be >= 1 and iterations >= 0, got {num_clusters}, {iterations}.")
    with no_autocast(x.device):
        x = x.detach().float()
        if cosine:
            x = F.normalize(x, dim=1)
        n, d = x.shape
        if n >= num_clusters:
            pick = torch.randperm(n, generator=generator, device="cpu")[:num_clusters].to(x.device)
        else:
            pick = torch.randint(n, (num_clusters,), generator=generator, device="cpu").to(x.device)
        centroids = x[pick].clone()
        if n < num_clusters:
            scale = x.std(0, unbiased=False).mean().clamp_min(1e-6) * 1e-2
            noise = torch.randn(centroids.shape, generator=generator, device="cpu").to(x.device)
            centroids[n:] += scale * noise[n:]
        rows = max(1, max_chunk_elements // num_clusters)
        for _ in range(iterations):
            if cosine:
                centroids = F.normalize(centroids, dim=1)
            c_sq = (centroids * centroids).sum(1)
            assign = torch.cat(
                [
                    torch.addmm(c_sq[None], x[s : s + rows], centroids.t(), beta=1.0, alpha=-2.0).argmin(1)
                    for s in range(0, n, rows)
                ]
            )
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            counts = torch.zeros(num_clusters, device=x.device).index_add_(0, assign, torch.ones(n, device=x.device))
            hit = counts > 0
            centroids[hit] = sums[hit] / counts[hit, None]
        if cosine:
            centroids = F.normalize(centroids, dim=1)
        return centroids
