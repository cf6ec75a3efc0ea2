"""The nearest-code lookup of vector quantization as TorchScript-compatible functions.

One home for the numerics that :class:`~vqseg_bundle.networks.quantizer.VectorQuantizer` (eager: training,
tracing, ONNX, ``torch.export``) and its scripted form :class:`~vqseg_bundle.networks.scriptable.ScriptableQuantizer`
(``torch.jit.script``) both run, so that the two cannot drift apart: the effective codebook, the chunked
float32 nearest-code search, the gather of the selected codewords, the channel-wise projections and the
straight-through value.

Written without ``from __future__ import annotations`` and with ``typing`` generics on purpose: TorchScript
compiles these signatures, and it knows neither ``X | None`` nor ``collections.abc`` types. Autocast is the
callers' business (the eager quantizer disables it around the codebook and the search; TorchScript has no
autocast context here), hence no ``no_autocast`` in this module.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "channels_last",
    "channels_first",
    "flatten_tokens",
    "channel_linear",
    "l2_normalize",
    "effective_codebook",
    "nearest_code_indices",
    "gather_codes",
    "straight_through",
]


def _dims_last(nd: int) -> List[int]:
    # explicit permutations: ONNX export rejects movedim's negative axes, TorchScript has no *range(...)
    return [0] + list(range(2, nd)) + [1]


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *sp)`` -> ``(B, *sp, C)``."""
    return x.permute(_dims_last(x.dim()))


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """``(B, *sp, C)`` -> ``(B, C, *sp)``."""
    nd = x.dim()
    return x.permute([0, nd - 1] + list(range(1, nd - 1)))


def flatten_tokens(z: torch.Tensor) -> torch.Tensor:
    """Channel-first map ``(B, C, *sp)`` -> token matrix ``(B * prod(sp), C)``."""
    return channels_last(z).reshape(-1, z.shape[1])


def channel_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A linear layer ``(weight (C_out, C_in), bias (C_out,))`` on the channels of ``x (B, C_in, *sp)``
    -> ``(B, C_out, *sp)`` (``nn.Linear`` on the channel-last view, permuted back)."""
    return channels_first(F.linear(channels_last(x), weight, bias))


def l2_normalize(x: torch.Tensor, dim: int, enabled: bool) -> torch.Tensor:
    """``F.normalize(x, dim=dim)`` when ``enabled`` (cosine codes), else ``x``."""
    return F.normalize(x, dim=dim) if enabled else x


def effective_codebook(
    table: torch.Tensor, mapping_weight: Optional[torch.Tensor], mapping_bias: Optional[torch.Tensor], cosine: bool
) -> torch.Tensor:
    """The codebook ``(K, d)`` the search uses, in float32: ``table W^T + b`` (SimVQ: ``table`` the frozen base
    ``E (K, d)``, ``W (d, d)``, ``b (d,)``) or ``table`` itself (a learnable codebook: no mapping); rows
    l2-normalised with ``cosine``. Differentiable (the caller chooses the grad mode)."""
    if mapping_weight is not None:
        bias = mapping_bias.float() if mapping_bias is not None else None
        codebook = F.linear(table.float(), mapping_weight.float(), bias)
    else:
        codebook = table.float()
    return l2_normalize(codebook, 1, cosine)


def nearest_code_indices(
    z_flat: torch.Tensor, codebook: torch.Tensor, max_chunk_elements: int, chunked: bool = True
) -> torch.Tensor:
    """``argmin_k ||z_n - c_k||^2`` for ``z_flat (N, d)`` against ``codebook (K, d)`` -> ``(N,)`` int64, float32.

    ``||z_n||^2`` is dropped (it does not change the argmin), so each block is one GEMM + argmin. With
    ``chunked`` the ``(N, K)`` block is computed ``max_chunk_elements // K`` rows at a time (bounded memory);
    callers that trace (TorchScript tracing, ONNX, ``torch.export``) pass ``chunked=False``, because a Python loop
    over a shape would be unrolled for the example's size. No gradient flows (inputs are detached).
    """
    z32 = z_flat.detach().float()
    c32 = codebook.detach().float()
    c_sq = (c32 * c32).sum(1).unsqueeze(0)
    n, k = z32.shape[0], c32.shape[0]
    rows = max(1, max_chunk_elements // k)
    if n <= rows or not chunked:
        return torch.addmm(c_sq, z32, c32.t(), beta=1.0, alpha=-2.0).argmin(1)
    out = torch.empty(n, dtype=torch.long, device=z32.device)
    for start in range(0, n, rows):
        block = torch.addmm(c_sq, z32[start : start + rows], c32.t(), beta=1.0, alpha=-2.0)
        out[start : start + rows] = block.argmin(1)
    return out


def gather_codes(indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Rows of ``codebook (K, d)`` selected by ``indices (B, *sp)`` as a channel-first map ``(B, d, *sp)``."""
    return channels_first(F.embedding(indices, codebook))


def straight_through(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``z + sg[codes - z]``: the value of ``codes``, the gradient of ``z`` (dtype of ``z`` kept)."""
    return z + (codes.to(z.dtype) - z).detach()
