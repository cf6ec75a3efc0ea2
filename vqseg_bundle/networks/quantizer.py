"""SimVQ vector quantizer: frozen random base codebook + learnable linear codebook mapping.

Written here because no installed library offers a VQ layer with a chunked float32 nearest-code search,
straight-through output, per-term losses and resettable usage statistics together (MONAI's
``VectorQuantizer`` wraps an EMA codebook without the SimVQ mapping).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.vq import codebook_usage_entropy_loss, vq_codebook_commitment_loss
from .distances import no_autocast

__all__ = ["QuantizerOutput", "VectorQuantizer", "exporting"]


def exporting() -> bool:
    """True during TorchScript tracing / scripting or ONNX export (shape-dependent Python loops must go)."""
    try:
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return True
    except AttributeError:  # pragma: no cover - torch builds without torch.jit
        pass
    return bool(getattr(torch.onnx, "is_in_onnx_export", lambda: False)())


class QuantizerOutput(NamedTuple):
    """Result of :meth:`VectorQuantizer.forward`.

    Attributes:
        quantized: ``(B, D, *spatial)`` straight-through output: value = codewords, gradient = identity to z.
        codes: ``(B, D, *spatial)`` the selected codewords themselves (gradient flows to the codebook).
        indices: ``(B, *spatial)`` int64 code indices.
        codebook: ``(K, D)`` the mapped codebook used for the search (for QPM's distances). Detached unless
            the usage-entropy loss is on; differentiable codewords come from :meth:`VectorQuantizer.lookup`.
        loss: scalar, ``codebook + beta * commitment + usage_entropy_weight * usage_entropy``.
        loss_terms: the three weighted contributions above (they sum to ``loss``).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    indices: torch.Tensor
    codebook: torch.Tensor
    loss: torch.Tensor
    loss_terms: dict[str, torch.Tensor]


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantizer with a SimVQ codebook (frozen base ``E`` + learnable ``Linear(D, D)``).

    The codebook is ``C = W E + b`` with ``E ~ N(0, D^-1/2)`` a frozen buffer and ``(W, b)`` learnable
    (SimVQ, used by VQ-Seg's released code): the whole codebook moves with every update, which keeps usage
    high. Assignment is by squared L2 in float32 (autocast disabled) over chunks of tokens so that the
    ``(tokens, K)`` distance block never exceeds ``max_chunk_elements``.

    Args:
        embedding_dim: feature channels D.
        num_embeddings: codebook size K (16384 in the paper).
        commitment_beta: commitment weight beta (0.25).
        usage_entropy_weight: weight of the code-usage entropy loss (0 disables it; it then costs nothing).
        usage_entropy_temperature: softmax temperature of that loss.
        max_chunk_elements: upper bound on one float32 ``(tokens, K)`` distance block (default 2^24 = 64 MiB).
        track_usage: accumulate code counts in training mode (see :meth:`codebook_usage`).
        seed: seed of the base codebook draw (a local generator: no global RNG state is touched), so that
            student and teacher or a rebuilt network get the same frozen codebook; ``None`` uses the
            global RNG.

    Usage counts live in a non-persistent buffer (not in ``state_dict``); under DDP each process counts its
    own tokens.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_embeddings: int = 16384,
        commitment_beta: float = 0.25,
        usage_entropy_weight: float = 0.0,
        usage_entropy_temperature: float = 1.0,
        max_chunk_elements: int = 2**24,
        track_usage: bool = True,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        if int(embedding_dim) < 1:
            raise ValueError(f"VectorQuantizer: embedding_dim must be >= 1, got {embedding_dim}.")
        if int(num_embeddings) < 2:
            raise ValueError(
                f"VectorQuantizer: num_embeddings (codebook size) must be >= 2, got {num_embeddings}."
            )
        if commitment_beta < 0:
            raise ValueError(f"VectorQuantizer: commitment_beta must be >= 0, got {commitment_beta}.")
        if usage_entropy_weight < 0:
            raise ValueError(
                f"VectorQuantizer: usage_entropy_weight must be >= 0, got {usage_entropy_weight}."
            )
        if usage_entropy_temperature <= 0:
            raise ValueError(
                f"VectorQuantizer: usage_entropy_temperature must be > 0, got {usage_entropy_temperature}."
            )
        if int(max_chunk_elements) < 1:
            raise ValueError(f"VectorQuantizer: max_chunk_elements must be >= 1, got {max_chunk_elements}.")
        self.embedding_dim = int(embedding_dim)
        self.num_embeddings = int(num_embeddings)
        self.commitment_beta = float(commitment_beta)
        self.usage_entropy_weight = float(usage_entropy_weight)
        self.usage_entropy_temperature = float(usage_entropy_temperature)
        self.max_chunk_elements = int(max_chunk_elements)
        self.track_usage = bool(track_usage)

        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        base = torch.randn(self.num_embeddings, self.embedding_dim, generator=gen) / math.sqrt(
            self.embedding_dim
        )
        # stored in float16 (a random frozen codebook loses nothing by it) and used in float32: it halves
        # the checkpoint share of this buffer (16384 x 256: 8 MiB instead of 16), keeping model.pt of the
        # default U-Net under the Model Zoo's 25 MB limit
        self.register_buffer("base_codebook", base.half())
        self.codebook_mapping = nn.Linear(self.embedding_dim, self.embedding_dim)
        self.register_buffer("usage_counts", torch.zeros(self.num_embeddings), persistent=False)

    # ------------------------------------------------------------------ codebook
    def mapped_codebook(self) -> torch.Tensor:
        """The effective codebook ``(K, D)`` = ``codebook_mapping(base_codebook)`` (differentiable), float32
        even under autocast (a bf16 codebook would blur the nearest-code search and QPM's distances)."""
        with no_autocast(self.base_codebook.device):
            return F.linear(
                self.base_codebook.float(),
                self.codebook_mapping.weight.float(),
                self.codebook_mapping.bias.float(),
            )

    def lookup(self, indices: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """Codewords of ``indices (B, *spatial)`` as a channel-first map ``(B, D, *spatial)``.

        Without ``codebook`` only the selected rows are mapped, ``W E[i] + b``: the same values and the same
        gradient to ``(W, b)`` as gathering from the full differentiable codebook, without building (and
        back-propagating through) the ``K x D`` mapped codebook (2 x 16384 x 256 x 256 multiply-adds per
        call; with a 64 px U-Net that was most of the quantizer's cost). With ``codebook`` the rows are
        gathered from it.
        """
        if codebook is None:
            with no_autocast(indices.device):
                codes = F.linear(
                    F.embedding(indices, self.base_codebook).float(),
                    self.codebook_mapping.weight.float(),
                    self.codebook_mapping.bias.float(),
                )
        else:
            codes = F.embedding(indices, codebook)  # (B, *spatial, D)
        nd = codes.ndim  # explicit permutation: ONNX export rejects movedim's negative axes
        return codes.permute(0, nd - 1, *range(1, nd - 1))

    @staticmethod
    def straight_through(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``z + sg[codes - z]``: the value of ``codes``, the gradient of ``z`` (dtype of ``z`` kept)."""
        return z + (codes.to(z.dtype) - z).detach()

    @torch.no_grad()
    def nearest_indices(self, z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """``argmin_k ||z_n - c_k||^2`` for ``z_flat (N, D)`` against ``codebook (K, D)``, float32, chunked.

        ``||z_n||^2`` is dropped (it does not change the argmin); each chunk is one GEMM + argmin.
        """
        with no_autocast(z_flat.device):
            z32 = z_flat.detach().float()
            c32 = codebook.detach().float()
            c_sq = (c32 * c32).sum(1)[None, :]
            n, k = z32.shape[0], c32.shape[0]
            rows = max(1, self.max_chunk_elements // k)
            if n <= rows or exporting():
                return torch.addmm(c_sq, z32, c32.t(), beta=1.0, alpha=-2.0).argmin(1)
            out = torch.empty(n, dtype=torch.long, device=z32.device)
            for start in range(0, n, rows):
                block = torch.addmm(c_sq, z32[start : start + rows], c32.t(), beta=1.0, alpha=-2.0)
                out[start : start + rows] = block.argmin(1)
            return out

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim < 3 or z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"VectorQuantizer: expected features (B, {self.embedding_dim}, *spatial), "
                f"got {tuple(z.shape)}."
            )

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        return z.permute(0, *range(2, z.ndim), 1).reshape(-1, self.embedding_dim)

    # ------------------------------------------------------------------ forward
    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Light path for inference: ``(straight-through quantized (B, D, *sp), indices (B, *sp))``, no
        losses.

        Counts usage in training mode like :meth:`forward`.
        """
        self._check(z)
        with torch.no_grad():
            codebook = self.mapped_codebook()
        indices = self.nearest_indices(self._flatten(z), codebook).reshape(z.shape[0], *z.shape[2:])
        self._count(indices)
        codes = self.lookup(indices, codebook if not torch.is_grad_enabled() else None)
        return self.straight_through(z, codes), indices

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z (B, D, *spatial)``.

        Returns:
            :class:`QuantizerOutput` (straight-through map, codewords, indices, codebook, loss, loss terms).

        Raises:
            ValueError: ``z`` is not ``(B, D, *spatial)`` with the configured D.
        """
        self._check(z)
        # the usage-entropy loss needs the whole codebook in the graph; otherwise only the selected rows are
        # mapped with gradient (lookup without codebook) and the full codebook serves the search only
        full_graph = self.usage_entropy_weight > 0 and torch.is_grad_enabled()
        with torch.set_grad_enabled(full_graph):
            codebook = self.mapped_codebook()
        z_flat = self._flatten(z)
        indices = self.nearest_indices(z_flat, codebook).reshape(z.shape[0], *z.shape[2:])
        self._count(indices)
        codes = self.lookup(indices, codebook if full_graph or not torch.is_grad_enabled() else None)
        vq = vq_codebook_commitment_loss(z, codes, self.commitment_beta)
        terms = {"codebook": vq.codebook, "commitment": self.commitment_beta * vq.commitment}
        loss = vq.total
        if self.usage_entropy_weight > 0:
            with no_autocast(z.device):
                ent = codebook_usage_entropy_loss(
                    z_flat,
                    codebook,
                    self.usage_entropy_temperature,
                    max_chunk_elements=self.max_chunk_elements,
                )
            terms["usage_entropy"] = self.usage_entropy_weight * ent
            loss = loss + terms["usage_entropy"]
        return QuantizerOutput(self.straight_through(z, codes), codes, indices, codebook, loss, terms)

    # ------------------------------------------------------------------ usage statistics
    @torch.no_grad()
    def _count(self, indices: torch.Tensor) -> None:
        if self.training and self.track_usage and not exporting():
            # scatter_add, not bincount: bincount reads the maximum back to the host (a CUDA synchronisation)
            flat = indices.reshape(-1)
            self.usage_counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=self.usage_counts.dtype))

    @torch.no_grad()
    def codebook_usage(self) -> dict[str, float]:
        """Usage since the last reset: ``usage`` (fraction of codes hit at least once), ``perplexity``
        (exp of the entropy of the code histogram; K for uniform use, 1 for collapse) and ``tokens`` counted.
        Reads the counts to the host (one synchronisation): call it every N steps, not every step."""
        counts = self.usage_counts.double()
        total = float(counts.sum())
        if total == 0:
            return {"usage": 0.0, "perplexity": 0.0, "tokens": 0.0}
        p = counts / total
        entropy = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
        return {
            "usage": float((counts > 0).double().mean()),
            "perplexity": math.exp(entropy),
            "tokens": total,
        }

    @torch.no_grad()
    def reset_codebook_usage(self) -> None:
        """Zero the usage counts."""
        self.usage_counts.zero_()

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_embeddings={self.num_embeddings}, "
            f"commitment_beta={self.commitment_beta}, usage_entropy_weight={self.usage_entropy_weight}"
        )
