"""Vector-quantization losses: codebook + commitment MSE and the code-usage entropy loss.

Both are pure functions. The quantizer (`vqseg_bundle.networks.quantizer.VectorQuantizer`) calls them, and
they can be used on their own (e.g. to monitor a frozen network).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ._reduction import check_reduction, reduce

__all__ = ["VQLoss", "vq_codebook_commitment_loss", "codebook_usage_entropy_loss"]


class VQLoss(NamedTuple):
    """Result of :func:`vq_codebook_commitment_loss`.

    Attributes:
        total: ``codebook + beta * commitment``.
        codebook: MSE pulling the (selected) codewords towards the detached encoder features.
        commitment: MSE pulling the encoder features towards the detached codewords (not yet scaled by beta).
    """

    total: torch.Tensor
    codebook: torch.Tensor
    commitment: torch.Tensor


def vq_codebook_commitment_loss(
    z: torch.Tensor, z_q: torch.Tensor, beta: float = 0.25, reduction: str = "mean"
) -> VQLoss:
    """VQ-VAE codebook and commitment losses (van den Oord et al. 2017).

    ``codebook = || sg[z] - z_q ||^2`` trains the codebook (here: the SimVQ mapping), ``commitment =
    || z - sg[z_q] ||^2`` keeps the encoder close to its codewords; ``total = codebook + beta * commitment``.
    Computed in float32 whatever the input dtype.

    Args:
        z: encoder features, any shape, e.g. ``(B, D, H, W)`` or ``(N, D)``.
        z_q: the selected codewords, same shape as ``z`` (NOT the straight-through tensor: the gradient
            of the codebook term must reach the codebook).
        beta: commitment weight, >= 0 (0.25 in VQ-VAE and VQ-Seg's code).
        reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"`` (element-wise, shape of ``z``).

    Returns:
        :class:`VQLoss` with ``total``, ``codebook`` and ``commitment`` reduced alike.

    Raises:
        ValueError: shapes differ, ``beta`` < 0 or unknown ``reduction``.
    """
    check_reduction(reduction, "vq_codebook_commitment_loss")
    if z.shape != z_q.shape:
        raise ValueError(f"vq_codebook_commitment_loss: z {tuple(z.shape)} and z_q {tuple(z_q.shape)} must match.")
    if beta < 0:
        raise ValueError(f"vq_codebook_commitment_loss: beta must be >= 0, got {beta}.")
    z32, zq32 = z.float(), z_q.float()
    codebook = reduce(F.mse_loss(zq32, z32.detach(), reduction="none"), reduction)
    commitment = reduce(F.mse_loss(z32, zq32.detach(), reduction="none"), reduction)
    return VQLoss(codebook + beta * commitment, codebook, commitment)


def _entropy_chunk(z: torch.Tensor, codebook: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token entropy of softmax(-||z - c||^2 / T) and the sum over tokens of those probabilities."""
    d = (z * z).sum(1, keepdim=True) - 2.0 * z @ codebook.t() + (codebook * codebook).sum(1)[None]
    logp = torch.log_softmax(-d / temperature, dim=1)
    p = logp.exp()
    return -(p * logp).sum(1), p.sum(0)


def codebook_usage_entropy_loss(
    z: torch.Tensor,
    codebook: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    max_chunk_elements: int = 2**22,
) -> torch.Tensor:
    """Code-usage entropy loss: mean per-token entropy minus the entropy of the batch-mean assignment.

    With ``p_n = softmax(-||z_n - c_k||^2 / T)`` over the K codes, the loss is
    ``mean_n H(p_n) - H(mean_n p_n)``: minimising it makes each assignment confident while spreading the
    batch over many codes (fights codebook collapse). Computed in float32, over chunks of tokens with
    activation checkpointing, so that memory stays ``O(max_chunk_elements)`` instead of ``O(N K)``.

    Args:
        z: token features ``(N, D)``.
        codebook: codewords ``(K, D)`` (the mapped codebook, gradients flow to it).
        temperature: softmax temperature, > 0.
        reduction: ``"mean"`` gives the loss above, ``"sum"`` N times it, ``"none"`` the per-token values
            ``H(p_n) - H(mean p)`` of shape ``(N,)``.
        max_chunk_elements: bound on the size of one ``(chunk, K)`` block.

    Returns:
        The loss (scalar, or ``(N,)`` for ``reduction="none"``).

    Raises:
        ValueError: bad shapes, non-positive temperature or unknown reduction.
    """
    check_reduction(reduction, "codebook_usage_entropy_loss")
    if z.ndim != 2 or codebook.ndim != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(
            "codebook_usage_entropy_loss: expected z (N, D) and codebook (K, D) with the same D, got "
            f"{tuple(z.shape)} and {tuple(codebook.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"codebook_usage_entropy_loss: temperature must be > 0, got {temperature}.")
    z, codebook = z.float(), codebook.float()
    n, k = z.shape[0], codebook.shape[0]
    rows = max(1, int(max_chunk_elements) // k)
    entropies, prob_sum = [], z.new_zeros(k)
    for start in range(0, n, rows):
        chunk = z[start : start + rows]
        if torch.is_grad_enabled() and (chunk.requires_grad or codebook.requires_grad):
            h, ps = checkpoint(_entropy_chunk, chunk, codebook, temperature, use_reentrant=False)
        else:
            h, ps = _entropy_chunk(chunk, codebook, temperature)
        entropies.append(h)
        prob_sum = prob_sum + ps
    mean_p = prob_sum / max(n, 1)
    batch_entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
    return reduce(torch.cat(entropies) - batch_entropy, reduction)
