"""Quantized Perturbation Module (QPM) of VQ-Seg: random, bounded perturbation of discrete code indices.

Written here (no library has it). Fully vectorised: no Python loop over codes or tokens, only over
fixed-size chunks of tokens so that memory stays bounded.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .distances import DISTANCES, no_autocast

__all__ = ["QuantizedPerturbation", "QPM_MODES", "QPM_STRATEGIES"]

QPM_MODES = ("kernel", "shuffle")
QPM_STRATEGIES = ("auto", "sparse", "dense")


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"QuantizedPerturbation: generator is on {generator.device} but the indices are on {device}; "
            "create the torch.Generator on the indices' device."
        )


class QuantizedPerturbation(nn.Module):
    """Perturb code indices, for the student's unlabeled (strong) branch only.

    Modes:
        ``"kernel"`` (the paper's equations): each token independently keeps its index ``i`` with probability
        ``1 - eps``; otherwise it takes ``j != i`` drawn with probability
        ``exp(-d(c_i, c_j) / T) / sum_{k != i} exp(-d(c_i, c_k) / T)``. So the expected fraction of changed
        tokens is exactly ``eps`` and ``j == i`` never occurs. Only the ``(rows, K)`` logits of the codes
        that are drawn from are computed (chunked, float32): the ``K x K`` matrix (1 GiB for K = 16384) is
        never formed. Sampling is by inverse CDF (one uniform per token and a ``searchsorted``), cheaper than
        Gumbel-max which needs K random numbers per token.

        ``"shuffle"`` (the abstract's wording): in each image, ``round(eps * N)`` positions chosen uniformly
        at random exchange their indices along a uniformly random cycle, so every chosen position receives the
        index of another chosen position and each image keeps its multiset of indices.

    ``eps = 0`` returns the input indices unchanged (no random number is drawn).

    Args:
        mode: ``"kernel"`` or ``"shuffle"``.
        eps: perturbation strength in [0, 1] (paper best 0.7; released code 0.1).
        temperature: T > 0 of the kernel (released code: 1).
        distance: ``"sqeuclidean"`` (released code) or ``"cosine"`` between mapped codewords.
        strategy: kernel mode only. ``"sparse"`` computes one row per distinct code among the tokens that
            change (cost grows with eps, at most like the nearest-code search of those tokens; needs
            device-to-host synchronisations), ``"dense"`` draws a candidate for every token and selects
            (cost independent of eps, no synchronisation: best on GPUs), ``"auto"`` = dense on CUDA, sparse
            elsewhere. Both sample the same distribution.
        max_chunk_elements: bound on one float32 ``(tokens, K)`` block.
    """

    def __init__(
        self,
        mode: str = "kernel",
        eps: float = 0.7,
        temperature: float = 1.0,
        distance: str = "sqeuclidean",
        strategy: str = "auto",
        max_chunk_elements: int = 2**24,
    ) -> None:
        super().__init__()
        if mode not in QPM_MODES:
            raise ValueError(f"QuantizedPerturbation: mode must be one of {QPM_MODES}, got {mode!r}.")
        if not 0.0 <= float(eps) <= 1.0:
            raise ValueError(f"QuantizedPerturbation: eps must be in [0, 1], got {eps}.")
        if float(temperature) <= 0:
            raise ValueError(f"QuantizedPerturbation: temperature must be > 0, got {temperature}.")
        if distance not in DISTANCES:
            raise ValueError(f"QuantizedPerturbation: distance must be one of {DISTANCES}, got {distance!r}.")
        if strategy not in QPM_STRATEGIES:
            raise ValueError(f"QuantizedPerturbation: strategy must be one of {QPM_STRATEGIES}, got {strategy!r}.")
        if int(max_chunk_elements) < 1:
            raise ValueError(f"QuantizedPerturbation: max_chunk_elements must be >= 1, got {max_chunk_elements}.")
        self.mode = mode
        self.eps = float(eps)
        self.temperature = float(temperature)
        self.distance = distance
        self.strategy = strategy
        self.max_chunk_elements = int(max_chunk_elements)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, eps={self.eps}, temperature={self.temperature}, distance={self.distance!r}"

    def forward(
        self, indices: torch.Tensor, codebook: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Perturb ``indices``.

        Args:
            indices: ``(B, *spatial)`` int64 code indices (e.g. ``(B, h, w)``).
            codebook: ``(K, D)`` mapped codebook (kernel mode; detached here). Unused by shuffle mode.
            generator: optional ``torch.Generator`` on the indices' device, for reproducible draws.

        Returns:
            ``(B, *spatial)`` int64 perturbed indices (the input tensor itself when ``eps == 0``).

        Raises:
            ValueError: wrong dtype / shape, missing codebook in kernel mode, index out of range,
                generator on another device.
        """
        if indices.dtype not in (torch.int64, torch.int32) or indices.ndim < 2:
            raise ValueError(
                f"QuantizedPerturbation: expected integer indices (B, *spatial), got {indices.dtype} "
                f"{tuple(indices.shape)}."
            )
        if self.eps == 0.0 or indices.numel() == 0:
            return indices
        _check_generator(generator, indices.device)
        if self.mode == "shuffle":
            return self._shuffle(indices, generator)
        if codebook is None or codebook.ndim != 2 or codebook.shape[0] < 2:
            raise ValueError(
                "QuantizedPerturbation: kernel mode needs the mapped codebook (K, D) with K >= 2, got "
                f"{None if codebook is None else tuple(codebook.shape)}."
            )
        return self._kernel(indices.long(), codebook.detach(), generator)

    # ------------------------------------------------------------------ shuffle
    def _shuffle(self, indices: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        b = indices.shape[0]
        flat = indices.reshape(b, -1)
        n = flat.shape[1]
        m = int(round(self.eps * n))
        if m < 2:
            return indices
        # a uniformly random m-subset per image, in uniformly random order ...
        order = torch.rand(b, n, generator=generator, device=indices.device).argsort(dim=1)
        chosen = order[:, :m]
        # ... whose positions receive the index of the next chosen position: a uniformly random m-cycle
        donors = chosen.roll(-1, dims=1)
        out = flat.clone()
        out.scatter_(1, chosen, flat.gather(1, donors))
        return out.reshape(indices.shape)

    # ------------------------------------------------------------------ kernel
    def _kernel(self, indices: torch.Tensor, codebook: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        k = codebook.shape[0]
        if not indices.is_cuda:  # range check reads values: skipped on GPUs to avoid a synchronisation
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= k:
                raise ValueError(f"QuantizedPerturbation: indices must be in [0, {k}), got values in [{lo}, {hi}].")
        flat = indices.reshape(-1)
        change = torch.rand(flat.shape, generator=generator, device=flat.device) < self.eps
        strategy = self.strategy
        if strategy == "auto":
            strategy = "dense" if flat.is_cuda else "sparse"
        with torch.no_grad(), no_autocast(codebook.device):
            c32 = codebook.float()
            if strategy == "dense":
                u = torch.rand(flat.shape, generator=generator, device=flat.device)
                out = torch.where(change, self._sample_per_token(flat, c32, u), flat)
            else:
                pos = change.nonzero().squeeze(1)
                u = torch.rand(pos.shape, generator=generator, device=flat.device)
                out = flat.clone()
                out[pos] = self._sample_per_code(flat[pos], c32, u)
        return out.reshape(indices.shape)

    def _row_cdf(self, src: torch.Tensor, c32: torch.Tensor, c_aux: torch.Tensor) -> torch.Tensor:
        """Normalised CDF ``(R, K)`` over j of ``p_j ~ exp(-d(c_src, c_j) / T)`` with ``p_src = 0``.

        Terms of ``-d / T`` that are constant along a row cancel in the softmax, so the logits are one GEMM:
        ``(2 c_i.c_j - ||c_j||^2) / T`` (squared L2) or ``cos(c_i, c_j) / T`` (cosine). The last entry is
        exactly 1, and a zero-probability entry repeats the previous value.
        """
        inv_t = 1.0 / self.temperature
        if self.distance == "sqeuclidean":
            logits = torch.addmm(c_aux[None, :], c32[src], c32.t(), beta=-inv_t, alpha=2.0 * inv_t)
        else:
            logits = torch.mm(c_aux[src], c_aux.t()).mul_(inv_t)
        logits.scatter_(1, src[:, None], float("-inf"))
        cdf = torch.softmax(logits, dim=1).cumsum_(dim=1)
        return cdf.div_(cdf[:, -1:].clone())

    def _aux(self, c32: torch.Tensor) -> torch.Tensor:
        if self.distance == "sqeuclidean":
            return (c32 * c32).sum(1)
        return torch.nn.functional.normalize(c32, dim=1)

    def _sample_per_token(self, src: torch.Tensor, c32: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One draw ``j != src[n]`` per token by inverse CDF over chunks of rows (no synchronisation)."""
        k = c32.shape[0]
        out = torch.empty_like(src)
        rows = max(1, self.max_chunk_elements // k)
        aux = self._aux(c32)
        for start in range(0, src.shape[0], rows):
            cdf = self._row_cdf(src[start : start + rows], c32, aux)
            # u < 1 = cdf[:, -1] so the result stays in the row; right=True skips zero-probability entries
            j = torch.searchsorted(cdf, u[start : start + rows, None].contiguous(), right=True)
            out[start : start + rows] = j[:, 0]
        return out

    def _sample_per_code(self, src: torch.Tensor, c32: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Like :meth:`_sample_per_token`, but one CDF row per *distinct* source code (tokens sharing a code
        share its row): cost ``O(unique codes x K x D)`` for the GEMM, plus a row gather per token for the
        batched ``searchsorted`` (done over token chunks too, so memory stays bounded).
        """
        k = c32.shape[0]
        out = torch.empty_like(src)
        if src.numel() == 0:
            return out
        codes, inverse = torch.unique(src, return_inverse=True)
        order = torch.argsort(inverse, stable=True)  # tokens grouped by code
        ends = torch.bincount(inverse, minlength=codes.shape[0]).cumsum(0).tolist()
        rows = max(1, self.max_chunk_elements // k)
        aux = self._aux(c32)
        for r0 in range(0, codes.shape[0], rows):
            r1 = min(codes.shape[0], r0 + rows)
            cdf = self._row_cdf(codes[r0:r1], c32, aux)
            tokens = order[(ends[r0 - 1] if r0 else 0) : ends[r1 - 1]]
            local = inverse[tokens] - r0
            for t0 in range(0, tokens.shape[0], rows):
                tk = tokens[t0 : t0 + rows]
                j = torch.searchsorted(cdf[local[t0 : t0 + rows]], u[tk, None].contiguous(), right=True)
                out[tk] = j[:, 0]
        return out
