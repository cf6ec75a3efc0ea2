"""Vector quantizer: SimVQ (frozen base + learnable mapping, the paper's) or a learnable codebook, with the
collapse guards of the VQ literature as options (cosine codes, a low-dimensional factorised lookup, k-means
initialisation, dead-code re-seeding, the rotation trick) and per-batch / per-window codebook health.

Written here, not taken from vector-quantize-pytorch (which has most of these options), because the bundle
needs together: the SimVQ mapping of VQ-Seg's released code, a chunked float32 nearest-code search whose memory
is bounded for K = 16384, a light inference path that TorchScript tracing and ONNX export accept, index
substitution for QPM (:meth:`VectorQuantizer.substitute`), per-term losses and resettable usage statistics; and
state dicts that stay those of the bundle's released models. MONAI's ``VectorQuantizer`` wraps an EMA codebook
without the SimVQ mapping.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.vq import codebook_usage_entropy_loss, vq_codebook_commitment_loss
from .distances import no_autocast
from .nearest_code import (
    channel_linear,
    channels_first,
    effective_codebook,
    flatten_tokens,
    gather_codes,
    l2_normalize,
    nearest_code_indices,
)
from .nearest_code import straight_through as _straight_through
from .vq_ops import kmeans, rotation_trick

__all__ = ["QuantizerOutput", "VectorQuantizer", "exporting", "CODEBOOK_TYPES", "GRADIENT_ESTIMATORS"]

CODEBOOK_TYPES = ("simvq", "learnable")
GRADIENT_ESTIMATORS = ("straight_through", "rotation")


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
        quantized: ``(B, D, *spatial)`` the map the decoders read: value = the selected codewords (mapped back to
            D by ``project_out`` with a factorised lookup), gradient to ``z`` by the straight-through estimator
            (identity) or the rotation trick.
        codes: ``(B, D, *spatial)`` the selected codewords in the output space, with gradient to the codebook
            (and ``project_out``) only.
        indices: ``(B, *spatial)`` int64 code indices.
        codebook: ``(K, d)`` the effective codebook the search used (``d`` = ``codebook_dim`` or D;
            l2-normalised rows with ``cosine``), for QPM's distances. Detached unless the usage-entropy loss is
            on; differentiable codewords come from :meth:`VectorQuantizer.lookup`.
        loss: scalar, ``codebook + beta * commitment + usage_entropy_weight * usage_entropy`` (computed in the
            lookup space).
        loss_terms: the three weighted contributions above (they sum to ``loss``).
        latent: ``(B, d, *spatial)`` the tokens in the lookup space (:meth:`VectorQuantizer.project` of ``z``),
            for :meth:`VectorQuantizer.substitute`.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    indices: torch.Tensor
    codebook: torch.Tensor
    loss: torch.Tensor
    loss_terms: dict[str, torch.Tensor]
    latent: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantizer of ``(B, D, *spatial)`` feature maps.

    Codebooks (``codebook_type``):
        * ``"simvq"`` (VQ-Seg's released code, the default): ``C = W E + b`` with ``E ~ N(0, d^-1/2)`` a frozen
          buffer and ``(W, b)`` learnable, so the whole codebook moves with every update.
        * ``"learnable"``: ``C`` is a parameter trained by the codebook loss (VQ-VAE).

    Collapse guards (each off by default, so the default is the paper's quantizer):
        * ``codebook_dim = d``: factorised lookup (ViT-VQGAN): ``Linear(D, d)`` before the search,
          ``Linear(d, D)`` after it; the codebook lives in ``d`` dimensions.
        * ``cosine``: tokens and codewords are l2-normalised before the search (ViT-VQGAN), so the nearest code
          is the one with the closest direction and no code wins by its norm.
        * ``kmeans_init``: the first gradient-enabled training forward sets the codebook to k-means centroids of
          its tokens (for SimVQ: ``E`` = centroids, ``W = I``, ``b = 0``). Loading a state dict cancels the
          pending initialisation (a loaded codebook is already trained, e.g. on resume).
        * ``dead_code_steps = n``: before each gradient-enabled training forward, codes not selected in the last
          ``n`` such forwards are re-seeded to tokens of the current batch drawn at random (for SimVQ: the base
          rows are solved for, so that the mapped codeword equals the token).
        * ``gradient = "rotation"``: the rotation trick instead of the straight-through estimator.
        * ``codebook_ema = decay`` (learnable codebooks): the codebook follows an exponential moving average of
          the tokens assigned to each code (VQ-VAE's EMA / online k-means update, Laplace-smoothed counts) on
          every gradient-enabled training forward, instead of the codebook loss (the codebook parameter then
          takes no gradient). It fits the codebook to detached features, as QPM-as-a-perturbation needs
          (``quantize_paths="perturbed"`` of the networks).

    Assignment is by squared L2 in float32 (autocast disabled) over chunks of tokens so that the ``(tokens, K)``
    distance block never exceeds ``max_chunk_elements``.

    Args:
        embedding_dim: feature channels D.
        num_embeddings: codebook size K (16384 in the paper).
        commitment_beta: commitment weight beta (0.25).
        usage_entropy_weight: weight of the code-usage entropy loss (0 disables it; it then costs nothing).
        usage_entropy_temperature: softmax temperature of that loss.
        max_chunk_elements: upper bound on one float32 ``(tokens, K)`` distance block (default 2^24 = 64 MiB).
        track_usage: accumulate code counts in training mode (see :meth:`codebook_usage`).
        seed: seed of the codebook draw (a local generator: no global RNG state is touched), so that student and
            teacher or a rebuilt network get the same codebook; ``None`` uses the global RNG.
        codebook_type: ``"simvq"`` or ``"learnable"``.
        codebook_dim: lookup dimension d (``None``: D, no projections).
        cosine: l2-normalise tokens and codewords.
        kmeans_init: initialise the codebook by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that initialisation.
        dead_code_steps: re-seed codes unused for this many training forwards (0: never).
        gradient: ``"straight_through"`` or ``"rotation"``.
        codebook_ema: EMA decay of the codebook update in (0, 1) (learnable codebooks only); 0: the codebook
            loss trains the codebook.

    Usage counts live in non-persistent buffers (not in ``state_dict``); under DDP each process counts its own
    tokens, and k-means initialisation and re-seeding are broadcast from rank 0.
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
        codebook_type: str = "simvq",
        codebook_dim: int | None = None,
        cosine: bool = False,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_steps: int = 0,
        gradient: str = "straight_through",
        codebook_ema: float = 0.0,
    ) -> None:
        super().__init__()
        if int(embedding_dim) < 1:
            raise ValueError(f"VectorQuantizer: embedding_dim must be >= 1, got {embedding_dim}.")
        if int(num_embeddings) < 2:
            raise ValueError(f"VectorQuantizer: num_embeddings (codebook size) must be >= 2, got {num_embeddings}.")
        if commitment_beta < 0:
            raise ValueError(f"VectorQuantizer: commitment_beta must be >= 0, got {commitment_beta}.")
        if usage_entropy_weight < 0:
            raise ValueError(f"VectorQuantizer: usage_entropy_weight must be >= 0, got {usage_entropy_weight}.")
        if usage_entropy_temperature <= 0:
            raise ValueError(
                f"VectorQuantizer: usage_entropy_temperature must be > 0, got {usage_entropy_temperature}."
            )
        if int(max_chunk_elements) < 1:
            raise ValueError(f"VectorQuantizer: max_chunk_elements must be >= 1, got {max_chunk_elements}.")
        if codebook_type not in CODEBOOK_TYPES:
            raise ValueError(f"VectorQuantizer: codebook_type must be one of {CODEBOOK_TYPES}, got {codebook_type!r}.")
        if codebook_dim is not None and int(codebook_dim) < 1:
            raise ValueError(f"VectorQuantizer: codebook_dim must be >= 1 or None, got {codebook_dim}.")
        if int(kmeans_iters) < 0 or int(dead_code_steps) < 0:
            raise ValueError(
                f"VectorQuantizer: kmeans_iters and dead_code_steps must be >= 0, got {kmeans_iters}, "
                f"{dead_code_steps}."
            )
        if gradient not in GRADIENT_ESTIMATORS:
            raise ValueError(f"VectorQuantizer: gradient must be one of {GRADIENT_ESTIMATORS}, got {gradient!r}.")
        if not 0.0 <= float(codebook_ema) < 1.0:
            raise ValueError(f"VectorQuantizer: codebook_ema must be in [0, 1), got {codebook_ema}.")
        if codebook_ema > 0 and codebook_type != "learnable":
            raise ValueError(
                "VectorQuantizer: codebook_ema needs codebook_type='learnable' (SimVQ's codebook is a mapping)."
            )
        self.embedding_dim = int(embedding_dim)
        self.codebook_ema = float(codebook_ema)
        self.num_embeddings = int(num_embeddings)
        self.commitment_beta = float(commitment_beta)
        self.usage_entropy_weight = float(usage_entropy_weight)
        self.usage_entropy_temperature = float(usage_entropy_temperature)
        self.max_chunk_elements = int(max_chunk_elements)
        self.track_usage = bool(track_usage)
        self.codebook_type = codebook_type
        self.codebook_dim = self.embedding_dim if codebook_dim is None else int(codebook_dim)
        self.cosine = bool(cosine)
        self.kmeans_iters = int(kmeans_iters)
        self.dead_code_steps = int(dead_code_steps)
        self.gradient = gradient
        # a pending k-means initialisation (plain attribute: cancelled by loading a state dict)
        self.kmeans_pending = bool(kmeans_init)

        d = self.codebook_dim
        self.project_in = nn.Linear(self.embedding_dim, d) if codebook_dim is not None else None
        self.project_out = nn.Linear(d, self.embedding_dim) if codebook_dim is not None else None
        self._generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        base = torch.randn(self.num_embeddings, d, generator=self._generator) / math.sqrt(d)
        if codebook_type == "simvq":
            # stored in float16 (a random frozen codebook loses nothing by it) and used in float32: it halves
            # the checkpoint share of this buffer (16384 x 256: 8 MiB instead of 16), keeping model.pt of the
            # default U-Net under the Model Zoo's 25 MB limit
            self.register_buffer("base_codebook", base.half())
            self.codebook_mapping = nn.Linear(d, d)
        else:
            # with the EMA update the codebook is a parameter (same state dict) that takes no gradient
            self.codebook = nn.Parameter(base, requires_grad=self.codebook_ema == 0)
        self.register_buffer("usage_counts", torch.zeros(self.num_embeddings), persistent=False)
        self.register_buffer("epoch_counts", torch.zeros(self.num_embeddings), persistent=False)
        # sum over forwards of (distinct codes / tokens) and the number of forwards, since the last reset
        self.register_buffer("batch_distinct", torch.zeros(2, dtype=torch.float64), persistent=False)
        self.register_buffer("steps_unused", torch.zeros(self.num_embeddings, dtype=torch.long), persistent=False)
        # EMA statistics (codebook_ema): per-code token counts and sums, started at count 1 at the codeword itself so
        # that unused codes keep their place; not in the state dict (a loaded codebook restarts them)
        self.register_buffer("ema_count", torch.ones(self.num_embeddings), persistent=False)
        self.register_buffer("ema_sum", base.clone() if self.codebook_ema > 0 else torch.zeros(0), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a loaded codebook is a trained one: never overwrite it by a k-means initialisation afterwards
        self.kmeans_pending = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._restart_ema_statistics(None)

    # ------------------------------------------------------------------ codebook
    def _normalize(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return l2_normalize(x, dim, self.cosine)

    def mapped_codebook(self) -> torch.Tensor:
        """The effective codebook ``(K, d)`` (differentiable), float32 even under autocast (a bf16 codebook
        would blur the nearest-code search and QPM's distances): ``W E + b`` for SimVQ, the parameter
        otherwise; rows l2-normalised with ``cosine``."""
        with no_autocast(self._codebook_device()):
            if self.codebook_type == "simvq":
                mapping = self.codebook_mapping
                return effective_codebook(self.base_codebook, mapping.weight, mapping.bias, self.cosine)
            return effective_codebook(self.codebook, None, None, self.cosine)

    def _codebook_device(self) -> torch.device:
        return self.base_codebook.device if self.codebook_type == "simvq" else self.codebook.device

    def lookup(self, indices: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """Codewords of ``indices (B, *spatial)`` as a channel-first map ``(B, d, *spatial)`` in the lookup space.

        Without ``codebook`` only the selected rows are mapped, ``W E[i] + b``: the same values and the same
        gradient to ``(W, b)`` as gathering from the full differentiable codebook, without building (and
        back-propagating through) the ``K x d`` mapped codebook (2 x 16384 x 256 x 256 multiply-adds per
        call; with a 64 px U-Net that was most of the quantizer's cost). With ``codebook`` the rows are
        gathered from it.
        """
        if codebook is None:
            with no_autocast(indices.device):
                if self.codebook_type == "simvq":
                    codes = F.linear(
                        F.embedding(indices, self.base_codebook).float(),
                        self.codebook_mapping.weight.float(),
                        self.codebook_mapping.bias.float(),
                    )
                else:
                    codes = F.embedding(indices, self.codebook.float())
                codes = self._normalize(codes, -1)
            return channels_first(codes)
        return gather_codes(indices, codebook)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Tokens in the lookup space: ``(B, D, *sp)`` -> ``(B, d, *sp)`` (``project_in``, then l2-normalised
        with ``cosine``); the identity for the paper's quantizer."""
        self._check(z)
        return self._normalize(self._channel_linear(self.project_in, z), 1)

    def unproject(self, q: torch.Tensor) -> torch.Tensor:
        """Back to the decoders' space: ``(B, d, *sp)`` -> ``(B, D, *sp)`` (``project_out`` or the identity)."""
        return self._channel_linear(self.project_out, q)

    @staticmethod
    def _channel_linear(layer: nn.Linear | None, x: torch.Tensor) -> torch.Tensor:
        """``layer`` applied to the channels of a channel-first map ``x (B, C, *sp)`` (identity for ``None``)."""
        return x if layer is None else channel_linear(x, layer.weight, layer.bias)

    def estimate(self, z_latent: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The quantized map in the lookup space: value ``codes``, gradient to ``z_latent`` by the configured
        estimator (straight-through: identity; rotation trick: the rotation taking ``z`` onto the code)."""
        if self.gradient == "rotation" and torch.is_grad_enabled() and z_latent.requires_grad:
            return rotation_trick(z_latent, codes)
        return self.straight_through(z_latent, codes)

    def substitute(self, latent: torch.Tensor, indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """The decoders' map ``(B, D, *sp)`` of the tokens ``latent (B, d, *sp)`` (``QuantizerOutput.latent``)
        assigned to other ``indices (B, *sp)`` (QPM): the codewords of ``indices`` from ``codebook (K, d)``
        (detached) as the value, the gradient to the tokens by the configured estimator."""
        return self.unproject(self.estimate(latent, self.lookup(indices, codebook.detach())))

    @staticmethod
    def straight_through(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``z + sg[codes - z]``: the value of ``codes``, the gradient of ``z`` (dtype of ``z`` kept)."""
        return _straight_through(z, codes)

    @torch.no_grad()
    def nearest_indices(self, z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """``argmin_k ||z_n - c_k||^2`` for ``z_flat (N, d)`` against ``codebook (K, d)``, float32, chunked.

        ``||z_n||^2`` is dropped (it does not change the argmin); each chunk is one GEMM + argmin
        (:func:`~vqseg_bundle.networks.nearest_code.nearest_code_indices`; one block while exporting).
        """
        with no_autocast(z_flat.device):
            return nearest_code_indices(z_flat, codebook, self.max_chunk_elements, chunked=not exporting())

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim < 3 or z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"VectorQuantizer: expected features (B, {self.embedding_dim}, *spatial), got {tuple(z.shape)}."
            )

    @staticmethod
    def _flatten(z: torch.Tensor) -> torch.Tensor:
        return flatten_tokens(z)

    # ------------------------------------------------------------------ collapse guards
    def _updates_codebook(self) -> bool:
        """Guards act on gradient-enabled training forwards only (not a no-grad teacher or pseudo-label pass)."""
        return self.training and torch.is_grad_enabled() and not exporting()

    @torch.no_grad()
    def _set_codewords(self, rows: torch.Tensor | None, values: torch.Tensor) -> None:
        """Make the effective codewords of ``rows`` (all when ``None``) equal ``values (n, d)``."""
        values = values.float()
        if self.codebook_type == "learnable":
            target = self.codebook.data
            if rows is None:
                target.copy_(values)
            else:
                target[rows] = values
            self._restart_ema_statistics(rows)  # a re-seeded code restarts its statistics at its new place
        else:
            if rows is None:  # a fresh codebook: E = values, W = I, b = 0
                self.codebook_mapping.weight.copy_(torch.eye(self.codebook_dim, device=values.device))
                self.codebook_mapping.bias.zero_()
                self.base_codebook.copy_(values.to(self.base_codebook.dtype))
            else:  # solve W e = v - b for the base rows
                w = self.codebook_mapping.weight.float()
                rhs = (values - self.codebook_mapping.bias.float()).t()
                base_rows = torch.linalg.lstsq(w, rhs).solution.t()
                self.base_codebook[rows] = base_rows.to(self.base_codebook.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for t in (
                (self.codebook.data,)
                if self.codebook_type == "learnable"
                else (self.base_codebook, self.codebook_mapping.weight.data, self.codebook_mapping.bias.data)
            ):
                torch.distributed.broadcast(t, src=0)

    @torch.no_grad()
    def _initialise_kmeans(self, z_flat: torch.Tensor) -> None:
        centroids = kmeans(
            z_flat, self.num_embeddings, self.kmeans_iters, self.cosine, self._generator, self.max_chunk_elements
        )
        self._set_codewords(None, centroids)
        self.kmeans_pending = False

    @torch.no_grad()
    def _reseed_dead_codes(self, z_flat: torch.Tensor) -> int:
        """Re-seed codes unused for ``dead_code_steps`` forwards to random tokens of ``z_flat``; returns how many."""
        dead = (self.steps_unused >= self.dead_code_steps).nonzero().flatten()
        n = int(dead.numel())
        if n:
            pick = torch.randint(z_flat.shape[0], (n,), generator=self._generator).to(z_flat.device)
            self._set_codewords(dead, self._normalize(z_flat[pick].detach().float(), 1))
            self.steps_unused[dead] = 0
        return n

    # ------------------------------------------------------------------ forward
    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Light path for inference: ``(quantized (B, D, *sp), indices (B, *sp))``, no losses.

        Counts usage in training mode like :meth:`forward`.
        """
        z_latent = self.project(z)
        with torch.no_grad():
            codebook = self.mapped_codebook()
        indices = self.nearest_indices(self._flatten(z_latent), codebook).reshape(z.shape[0], *z.shape[2:])
        self._count(indices)
        codes = self.lookup(indices, codebook if not torch.is_grad_enabled() else None)
        return self.unproject(self.estimate(z_latent, codes)), indices

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z (B, D, *spatial)``.

        Returns:
            :class:`QuantizerOutput` (decoder map, codewords, indices, codebook, loss, loss terms).

        Raises:
            ValueError: ``z`` is not ``(B, D, *spatial)`` with the configured D.
        """
        z_latent = self.project(z)
        z_flat = self._flatten(z_latent)
        if self._updates_codebook():
            if self.kmeans_pending:
                self._initialise_kmeans(z_flat)
            elif self.dead_code_steps > 0:
                self._reseed_dead_codes(z_flat)
        # the usage-entropy loss needs the whole codebook in the graph; otherwise only the selected rows are
        # mapped with gradient (lookup without codebook) and the full codebook serves the search only
        full_graph = self.usage_entropy_weight > 0 and torch.is_grad_enabled()
        with torch.set_grad_enabled(full_graph):
            codebook = self.mapped_codebook()
        indices = self.nearest_indices(z_flat, codebook).reshape(z.shape[0], *z.shape[2:])
        hits = self._count(indices)
        if self.dead_code_steps > 0 and self._updates_codebook():
            used = (self._hits(indices) if hits is None else hits) > 0  # one histogram when usage is tracked too
            self.steps_unused.add_(1).masked_fill_(used, 0)
        if self.codebook_ema > 0 and self._updates_codebook():
            self._ema_update(z_flat, indices.reshape(-1), hits)
            codebook = self.mapped_codebook().detach()
        codes = self.lookup(indices, codebook if full_graph or not torch.is_grad_enabled() else None)
        vq = vq_codebook_commitment_loss(z_latent, codes, self.commitment_beta)
        terms = {"codebook": vq.codebook, "commitment": self.commitment_beta * vq.commitment}
        loss = vq.total
        if self.usage_entropy_weight > 0:
            with no_autocast(z.device):
                ent = codebook_usage_entropy_loss(
                    z_flat, codebook, self.usage_entropy_temperature, max_chunk_elements=self.max_chunk_elements
                )
            terms["usage_entropy"] = self.usage_entropy_weight * ent
            loss = loss + terms["usage_entropy"]
        quantized = self.unproject(self.estimate(z_latent, codes))
        return QuantizerOutput(quantized, self.unproject(codes), indices, codebook, loss, terms, z_latent)

    @torch.no_grad()
    def _restart_ema_statistics(self, rows: torch.Tensor | None) -> None:
        """With ``codebook_ema``: the EMA statistics of ``rows`` (all when ``None``) restart at the current codewords
        (count 1, sum = the codeword), after a state dict load, a k-means initialisation or a re-seeding."""
        if self.codebook_ema == 0:
            return
        codewords = self.codebook.detach().float()
        if rows is None:
            self.ema_count.fill_(1.0)
            self.ema_sum = codewords.clone()
        else:
            self.ema_count[rows] = 1.0
            self.ema_sum[rows] = codewords[rows]

    @torch.no_grad()
    def _ema_update(self, z_flat: torch.Tensor, indices: torch.Tensor, hits: torch.Tensor | None) -> None:
        """One EMA step of the codebook towards the mean of the tokens ``z_flat (N, d)`` assigned to each code
        by ``indices (N,)``: ``count = a count + (1 - a) n_k``, ``sum = a sum + (1 - a) sum_k z``, codeword =
        ``sum / count`` with Laplace-smoothed counts (VQ-VAE / Sonnet). Written here: the bundle's quantizer
        keeps its own state dict (vector-quantize-pytorch's EMA codebook has other buffers and keys)."""
        decay = self.codebook_ema
        counts = self._hits(indices) if hits is None else hits
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices, z_flat.detach().float())
        self.ema_count.mul_(decay).add_(counts, alpha=1.0 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (total + self.num_embeddings * 1e-5) * total
        self.codebook.data.copy_(self.ema_sum / smoothed[:, None])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.codebook.data, src=0)

    # ------------------------------------------------------------------ usage statistics
    @torch.no_grad()
    def _hits(self, indices: torch.Tensor) -> torch.Tensor:
        """``(K,)`` how many tokens of ``indices`` selected each code. scatter_add, not bincount: bincount reads
        the maximum back to the host (a CUDA synchronisation)."""
        flat = indices.reshape(-1)
        ones = torch.ones_like(flat, dtype=self.usage_counts.dtype)
        return torch.zeros_like(self.usage_counts).scatter_add_(0, flat, ones)

    @torch.no_grad()
    def _count(self, indices: torch.Tensor) -> torch.Tensor | None:
        """Add this forward's code histogram to the window and epoch statistics (training mode, ``track_usage``);
        returns it (``None`` when nothing was counted)."""
        if not (self.training and self.track_usage and not exporting()):
            return None
        batch = self._hits(indices)
        self.usage_counts.add_(batch)
        self.epoch_counts.add_(batch)
        distinct = (batch > 0).sum().double() / max(1, indices.numel())
        self.batch_distinct.add_(torch.stack([distinct, torch.ones_like(distinct)]))
        return batch

    @staticmethod
    def _histogram_stats(counts: torch.Tensor) -> dict[str, float]:
        counts = counts.double()
        total = float(counts.sum())
        if total == 0:
            return {"usage": 0.0, "perplexity": 0.0, "codes_used": 0.0, "tokens": 0.0}
        p = counts / total
        entropy = float(-(p * torch.log(p.clamp_min(1e-300))).sum())
        used = float((counts > 0).sum())
        return {"usage": used / counts.numel(), "perplexity": math.exp(entropy), "codes_used": used, "tokens": total}

    @torch.no_grad()
    def codebook_usage(self) -> dict[str, float]:
        """Codebook health since the last window reset.

        ``usage`` (fraction of the K codes hit at least once), ``codes_used`` (their number), ``dead``
        (codes not hit), ``size`` (K), ``perplexity`` (exp of the entropy of the code histogram; K for uniform
        use, 1 for collapse), ``batch_distinct`` (mean over forwards of distinct codes / tokens of that forward;
        1 when every token of a batch has its own code, ``1 / tokens`` at collapse) and ``tokens`` counted.
        Reads the counts to the host (one synchronisation): call it every N steps, not every step."""
        stats = self._histogram_stats(self.usage_counts)
        s, n = (float(v) for v in self.batch_distinct)
        stats["batch_distinct"] = s / n if n else 0.0
        stats["dead"] = float(self.num_embeddings) - stats["codes_used"]
        stats["size"] = float(self.num_embeddings)
        return stats

    @torch.no_grad()
    def epoch_usage(self) -> dict[str, float]:
        """``usage``, ``codes_used``, ``perplexity``, ``tokens`` and ``size`` (K) since the last epoch reset."""
        return {**self._histogram_stats(self.epoch_counts), "size": float(self.num_embeddings)}

    @torch.no_grad()
    def reset_codebook_usage(self, scope: str = "window") -> None:
        """Zero the window statistics (``scope="window"``) or the epoch histogram (``"epoch"``)."""
        if scope == "epoch":
            self.epoch_counts.zero_()
        elif scope == "window":
            self.usage_counts.zero_()
            self.batch_distinct.zero_()
        else:
            raise ValueError(f"reset_codebook_usage: scope must be 'window' or 'epoch', got {scope!r}.")

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_embeddings={self.num_embeddings}, "
            f"codebook_type={self.codebook_type!r}, codebook_dim={self.codebook_dim}, cosine={self.cosine}, "
            f"gradient={self.gradient!r}, dead_code_steps={self.dead_code_steps}, "
            f"commitment_beta={self.commitment_beta}, usage_entropy_weight={self.usage_entropy_weight}"
            + (f", codebook_ema={self.codebook_ema}" if self.codebook_ema > 0 else "")
        )
