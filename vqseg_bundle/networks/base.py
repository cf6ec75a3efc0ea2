"""Backbone-independent part of the VQ-Seg networks: quantized levels, perturbation, dual branch, PFA."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from .adapter import PFAAdapter
from .outputs import VQSegOutput
from .perturbations import ComplementaryDropout, FeatureDropout
from .qpm import QuantizedPerturbation
from .quantizer import VectorQuantizer

__all__ = ["VQSegNetworkBase", "parse_levels"]

RECON_INPUTS = ("all", "quantized")
# where the PFA alignment gradient goes (see VQSegNetworkBase.pfa_gradient)
PFA_GRADIENTS = ("codebook", "straight_through")
DEEPEST_ALIASES = ("bottleneck", "deepest", "last")
# which forward paths read the quantized levels (see VQSegNetworkBase._setup_vq)
QUANTIZE_PATHS = ("all", "perturbed")
# how the perturbed stream takes a QPM-drawn code (see VQSegNetworkBase._setup_vq)
QPM_SUBSTITUTIONS = ("replace", "shift")


def parse_levels(spec: int | str | Sequence[int | str] | None, num_levels: int, name: str) -> tuple[int, ...]:
    """Normalise a level specification to sorted unique indices in ``[0, num_levels)``.

    Accepts ints (negative counts from the deepest), numeric strings, ``"bottleneck"`` / ``"deepest"`` /
    ``"last"`` (= ``num_levels - 1``), ``"all"``, a single value or a sequence; ``None`` or ``()``
    gives ``()``.

    Raises:
        ValueError: unknown name or index out of range (the message names ``name``).
    """
    if spec is None:
        return ()
    if isinstance(spec, (int, str)):
        spec = [spec]
    out = set()
    for item in spec:
        if isinstance(item, str):
            key = item.strip().lower()
            if key == "all":
                out.update(range(num_levels))
                continue
            if key in DEEPEST_ALIASES:
                out.add(num_levels - 1)
                continue
            try:
                item = int(key)
            except ValueError:
                raise ValueError(
                    f"{name}: unknown level {item!r}; use integers in [-{num_levels}, {num_levels}), "
                    f"'all' or one of {DEEPEST_ALIASES}."
                ) from None
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"{name}: levels must be ints or strings, got {item!r}.")
        if not -num_levels <= item < num_levels:
            raise ValueError(f"{name}: level {item} out of range for {num_levels} levels.")
        out.add(item % num_levels)
    return tuple(sorted(out))


def _quantizer_factory(quantizer: Mapping[str, Any] | Callable[..., Any] | None, cls: str) -> Callable[..., Any]:
    """``quantizer(embedding_dim, num_embeddings, seed=...)`` for a mapping of options or a factory."""
    if quantizer is None or isinstance(quantizer, Mapping):
        options = dict(quantizer or {})
        reserved = sorted(set(options) & {"embedding_dim", "num_embeddings", "seed"})
        if reserved:
            raise ValueError(
                f"{cls}: quantizer options {reserved} are set by the network (level channels, codebook_size, "
                "codebook_seed); remove them from `quantizer`."
            )
        return functools.partial(VectorQuantizer, **options)
    if callable(quantizer):
        return quantizer
    raise TypeError(f"{cls}: quantizer must be a mapping of VectorQuantizer options or a factory, got {quantizer!r}.")


def _split_perturbation(
    perturbation: nn.Module | Sequence[nn.Module] | None, cls: str
) -> tuple[QuantizedPerturbation | None, nn.Module | None]:
    """``(qpm, dropout)`` of a built perturbation: a module, ``[qpm, dropout]`` or ``None``."""
    if perturbation is None:
        return None, None
    modules = list(perturbation) if isinstance(perturbation, (list, tuple, nn.ModuleList)) else [perturbation]
    qpm = [m for m in modules if isinstance(m, QuantizedPerturbation)]
    dropout = [m for m in modules if isinstance(m, (FeatureDropout, ComplementaryDropout))]
    if len(qpm) + len(dropout) != len(modules) or len(qpm) > 1 or len(dropout) > 1:
        raise ValueError(
            f"{cls}: perturbation must be a QuantizedPerturbation, a FeatureDropout, a ComplementaryDropout, "
            f"[QuantizedPerturbation, FeatureDropout] or None, got {[type(m).__name__ for m in modules]}."
        )
    if qpm and dropout and isinstance(dropout[0], ComplementaryDropout):
        raise ValueError(f"{cls}: QPM combines with FeatureDropout only, not ComplementaryDropout.")
    return (qpm[0] if qpm else None), (dropout[0] if dropout else None)


def _perturbation_name(qpm: nn.Module | None, dropout: nn.Module | None) -> str:
    """The name (one of :data:`~.perturbations.PERTURBATIONS`) of a built perturbation."""
    if qpm is not None:
        return "qpm_dropout" if dropout is not None else "qpm"
    if dropout is None:
        return "none"
    return "complementary_dropout" if isinstance(dropout, ComplementaryDropout) else "dropout"


class VQSegNetworkBase(nn.Module):
    """Shared logic of :class:`~vqseg_bundle.networks.unet.VQSegUNet` and
    :class:`~vqseg_bundle.networks.vit.VQSegViT`.

    Subclasses build their encoder and decoders, then call :meth:`_setup_vq`, and implement

    * ``encode(x (B, C_in, H, W)) -> list[(B, C_l, h_l, w_l)]`` (shallow to deep),
    * ``decode_seg(features, out_size) -> (B, num_classes, H, W)``,
    * ``decode_rec(features, out_size) -> (B, C_in, H, W)`` (only called when ``reconstruction`` is on).
    """

    in_channels: int
    num_classes: int
    #: the attribute that holds the backbone module (:meth:`param_groups`)
    backbone_attribute: str = "encoder"

    # ------------------------------------------------------------------ construction
    def _setup_vq(
        self,
        level_channels: Sequence[int],
        reconstruction: bool,
        vq_levels: int | str | Sequence[int | str] = ("bottleneck",),
        codebook_size: int | Sequence[int] = 16384,
        codebook_seed: int | None = 0,
        quantizer: Mapping[str, Any] | Callable[..., VectorQuantizer] | None = None,
        perturbation: nn.Module | Sequence[nn.Module] | None = None,
        perturb_levels: int | str | Sequence[int | str] | None = None,
        recon_input: str = "all",
        pfa_channels: int | None = None,
        pfa_level: int | str | None = None,
        pfa_gradient: str = "codebook",
        quantize_paths: str = "all",
        qpm_substitution: str = "replace",
    ) -> None:
        """Build the quantized levels, take the perturbation and build the PFA adapter (the options every
        backbone shares; subclasses pass them through as keyword arguments).

        Args:
            level_channels: channels of each encoder level, shallow to deep.
            reconstruction: whether the subclass built a reconstruction decoder (dual branch).
            vq_levels: levels to quantize: ``("bottleneck",)`` (default: the deepest), indices such as ``(3, 4)``,
                ``"all"``, or ``()`` for no quantized level (then only dropout-type perturbations are possible).
            codebook_size: K, one int or one per quantized level (16384 in the paper).
            codebook_seed: seed of the frozen base codebooks (level l uses ``seed + l``).
            quantizer: every level's quantizer: a mapping of
                :class:`~vqseg_bundle.networks.quantizer.VectorQuantizer` options (``commitment_beta``,
                ``codebook_type``, ``codebook_dim``, ``cosine``, ``kmeans_init``, ``dead_code_steps``, ``gradient``,
                ``max_chunk_elements``, ...; ``None`` or ``{}``: the paper's SimVQ quantizer), or a factory called
                as ``quantizer(embedding_dim, num_embeddings, seed=...)`` (e.g. a MONAI ``_mode_: partial``
                component).
            perturbation: the built perturbation of the perturbed stream (:func:`~.perturbations.build_perturbation`):
                a :class:`~.qpm.QuantizedPerturbation` (QPM on the code indices of the quantized levels), a
                :class:`~.perturbations.FeatureDropout` (UniMatch) or :class:`~.perturbations.ComplementaryDropout`
                (UniMatch V2; ``forward_train`` then expects the two strong views concatenated along the batch),
                or ``[QuantizedPerturbation, FeatureDropout]`` (QPM, then dropout on every level). ``None``: no
                perturbation (the one switch that turns it off).
            perturb_levels: levels perturbed; ``None`` = the quantized levels for QPM, every level for dropout.
            recon_input: ``"all"``: the reconstruction decoder reads every level as the segmentation decoder
                does; ``"quantized"``: non-quantized levels are zeroed for it.
            pfa_channels: channels of the foundation model for the PFA adapter; ``None`` = no adapter.
            pfa_level: level the adapter reads (default: the deepest quantized level).
            pfa_gradient: see :attr:`pfa_gradient`.
            quantize_paths: ``"all"`` (the paper): every forward path (labeled batch, weak and strong views,
                teacher, inference, export) reads the quantized levels' codewords. ``"perturbed"``: QPM as a
                perturbation only: every clean path stays continuous (no quantizer runs there, so quantization
                loses nothing at inference) and only the perturbed stream (``forward_train(perturb=True)``)
                quantizes; each quantizer fits its codebook to that stream's *detached* features (use
                ``codebook_ema`` or the codebook loss; no VQ gradient reaches the encoder), and the perturbed
                features are those tokens with their QPM-drawn codes (``qpm_substitution``).
            qpm_substitution: with ``quantize_paths="perturbed"``: ``"replace"``: a perturbed token becomes its
                drawn codeword (the residual to its own code is lost, as on the paper's quantized path);
                ``"shift"``: it moves by the code difference, ``z + (c_j - c_i)``, so its residual survives and
                an unchanged index leaves it unchanged. Gradient to ``z``: the identity in both. With ``"all"``
                the two are the same (the token already is its codeword).
        """
        cls = type(self).__name__
        if quantize_paths not in QUANTIZE_PATHS:
            raise ValueError(f"{cls}: quantize_paths must be one of {QUANTIZE_PATHS}, got {quantize_paths!r}.")
        if qpm_substitution not in QPM_SUBSTITUTIONS:
            raise ValueError(f"{cls}: qpm_substitution must be one of {QPM_SUBSTITUTIONS}, got {qpm_substitution!r}.")
        self.quantize_paths = quantize_paths
        self.qpm_substitution = qpm_substitution
        num_levels = len(level_channels)
        self.level_channels = tuple(int(c) for c in level_channels)
        self.vq_levels = parse_levels(vq_levels, num_levels, f"{cls}.vq_levels")
        if isinstance(codebook_size, (int, str)):
            sizes = [int(codebook_size)] * len(self.vq_levels)
        else:
            sizes = [int(s) for s in codebook_size]
            if len(sizes) != len(self.vq_levels):
                raise ValueError(
                    f"{cls}: codebook_size has {len(sizes)} entries but vq_levels {self.vq_levels} has "
                    f"{len(self.vq_levels)}; give one int or one size per level."
                )
        make_quantizer = _quantizer_factory(quantizer, cls)
        self.quantizers = nn.ModuleDict(
            {
                str(level): make_quantizer(
                    self.level_channels[level], size, seed=None if codebook_seed is None else int(codebook_seed) + level
                )
                for level, size in zip(self.vq_levels, sizes, strict=True)
            }
        )

        qpm, dropout = _split_perturbation(perturbation, cls)
        self.perturbation = _perturbation_name(qpm, dropout)
        self.qpm: QuantizedPerturbation | None = qpm
        self.feature_perturbation: nn.Module | None = dropout
        self.dropout_levels: tuple[int, ...] = ()
        if qpm is not None:
            if not self.vq_levels:
                raise ValueError(f"{cls}: a QPM perturbation needs at least one quantized level (vq_levels is empty).")
            levels = (
                self.vq_levels
                if perturb_levels is None
                else parse_levels(perturb_levels, num_levels, f"{cls}.perturb_levels")
            )
            missing = sorted(set(levels) - set(self.vq_levels))
            if missing:
                raise ValueError(
                    f"{cls}: QPM can only perturb quantized levels; levels {missing} are not in vq_levels."
                )
            if dropout is not None:  # QPM on the codes, then UniMatch's dropout on every level
                self.dropout_levels = tuple(range(num_levels))
        else:
            levels = (
                tuple(range(num_levels))
                if perturb_levels is None
                else parse_levels(perturb_levels, num_levels, f"{cls}.perturb_levels")
            )
            if dropout is None:
                levels = ()
            self.dropout_levels = levels
        self.perturb_levels = levels
        # (no perturbation at all is fine: inference and evaluation rebuild the network without one)
        if quantize_paths == "perturbed" and self.vq_levels and qpm is None and dropout is not None:
            raise ValueError(
                f"{cls}: quantize_paths='perturbed' quantizes the QPM-perturbed stream only, but the perturbation "
                f"is {self.perturbation!r}; use perturbation 'qpm' or 'qpm_dropout', or quantize_paths 'all'."
            )

        if recon_input not in RECON_INPUTS:
            raise ValueError(f"{cls}: recon_input must be one of {RECON_INPUTS}, got {recon_input!r}.")
        if recon_input == "quantized" and reconstruction and not self.vq_levels:
            raise ValueError(f"{cls}: recon_input='quantized' needs at least one quantized level.")
        self.reconstruction = bool(reconstruction)
        self.recon_input = recon_input

        self.adapter: PFAAdapter | None = None
        self.pfa_level: int | None = None
        if pfa_channels is not None:
            if pfa_level is None:
                self.pfa_level = self.vq_levels[-1] if self.vq_levels else num_levels - 1
            else:
                (self.pfa_level,) = parse_levels([pfa_level], num_levels, f"{cls}.pfa_level")
            self.adapter = PFAAdapter(self.level_channels[self.pfa_level], int(pfa_channels))
        self.pfa_gradient = pfa_gradient

    @classmethod
    def shared_arguments(cls) -> inspect.Signature:
        """The signature of the options every backbone passes through to :meth:`_setup_vq` (``**vq_options`` of
        the subclasses), with their defaults: what a settings record completes a network's arguments with."""
        params = list(inspect.signature(cls._setup_vq).parameters.values())
        return inspect.Signature([p for p in params if p.name not in ("self", "level_channels", "reconstruction")])

    @property
    def pfa_gradient(self) -> str:
        """Which parameters the PFA alignment loss trains through a quantized ``pfa_level``.

        * ``"codebook"`` (default): the adapter reads the selected codewords themselves (same values as the
          post-VQ map), so the alignment gradient reaches the adapter and the SimVQ codebook mapping but not
          the encoder.
        * ``"straight_through"`` (the paper's literal reading): the adapter reads the straight-through map,
          so the alignment gradient, evaluated at the codeword, is copied onto the encoder's pre-VQ features
          and the codebook gets none of it.

        Why ``"codebook"`` is the default: measured on the demo data (U-Net, 64 px, EfficientNet-Lite0,
        weight 5, T 0.1), the straight-through alignment gradient reaching the encoder is ~10^3 x the
        supervised one at initialisation and ~500 x after 40 steps; since moving ``z`` does not change the
        forward value until its code switches, it drives ``z`` steadily away from the codebook (pre-VQ rms
        1.0 -> 2.9 with codewords at 0.05 in 40 steps), the VQ loss explodes (0.85 -> 34.6 after 100
        iterations), usage collapses (84 % -> 18 %) and validation Dice goes to 0. Routing the alignment to
        the codebook keeps the codebook / commitment loss at its no-PFA level and aligns the token space
        itself, which is what the post-VQ adapter is meant to shape. Without a quantized ``pfa_level`` both
        modes are the same (the features there are not quantized).
        """
        return self._pfa_gradient

    @pfa_gradient.setter
    def pfa_gradient(self, mode: str) -> None:
        if mode not in PFA_GRADIENTS:
            raise ValueError(f"{type(self).__name__}: pfa_gradient must be one of {PFA_GRADIENTS}, got {mode!r}.")
        self._pfa_gradient = mode

    # ------------------------------------------------------------------ hooks for subclasses
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_seg(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def decode_rec(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}."
            )

    # ------------------------------------------------------------------ TorchScript
    def scriptable(self) -> nn.Module:
        """The lean eval-only module ``torch.jit.script`` compiles in place of this network: encoder, nearest-code
        lookup of each quantized level and segmentation decoder, sharing this network's parameters
        (:mod:`~vqseg_bundle.networks.scriptable`). Its ``forward`` gives :meth:`forward`'s values in eval mode."""
        raise NotImplementedError(f"{type(self).__name__} has no TorchScript form; export it by tracing.")

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": the parameters of the module named by :attr:`backbone_attribute` (the U-Net's encoder,
        the ViT), "head": everything else}``, for per-group learning rates (UniMatch V2: lr x 40 for the head)."""
        backbone = list(getattr(self, self.backbone_attribute).parameters())
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if id(p) not in ids]}

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script`` (e.g. ``monai.bundle ckpt_export`` without ``--use_trace``): script
        :meth:`scriptable` instead of this training-capable module. Tracing, ONNX and ``torch.export`` do not call
        it."""
        return self.scriptable().train(self.training)

    # ------------------------------------------------------------------ forward paths
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, num_classes, H, W)`` of ``x (B, in_channels, H, W)``, never perturbed.

        The same in train and eval mode (BatchNorm / dropout layers aside); what inferers and export see.
        """
        self._check_input(x)
        features = self.encode(x)
        for key, quantizer in self.inference_quantizers().items():
            level = int(key)
            features[level] = quantizer.quantize(features[level])[0]
        return self.decode_seg(features, x.shape[-2:])

    def inference_quantizers(self) -> dict[str, VectorQuantizer]:
        """The quantizers a clean forward (inference, export, teacher) runs: all of them, or none with
        ``quantize_paths="perturbed"`` (whose codebooks serve the perturbed training stream only)."""
        return {} if self.quantize_paths == "perturbed" else dict(self.quantizers.items())

    def forward_train(
        self,
        x: torch.Tensor,
        perturb: bool = False,
        generator: torch.Generator | None = None,
        align_size: Sequence[int] | None = None,
        return_clean: bool = False,
    ) -> VQSegOutput:
        """Training-mode forward returning every output of the method.

        Args:
            x: ``(B, in_channels, H, W)``. With a ``ComplementaryDropout`` perturbation and ``perturb=True``
                it must be the two strong views concatenated along the batch, ``cat([view1, view2])``: the
                first and second halves get complementary channel masks.
            perturb: apply the network's perturbation (QPM on indices, or feature dropout) to the features
                that feed the segmentation decoder. Ignored when the network was built without one.
            generator: optional ``torch.Generator`` (on ``x``'s device) for reproducible perturbations.
            align_size: ``(h, w)`` of the foundation model's token grid; with a PFA adapter the output's
                ``aligned`` is the adapter applied to the unperturbed post-VQ map of ``pfa_level``.
            return_clean: also decode the unperturbed features (``clean_seg_logits``). With a perturbation,
                the clean and perturbed feature maps go through the decoder as one batch of ``2 B`` (UniMatch's
                "fp" forward: one encoding, the decoder's BatchNorm sees both).

        Returns:
            :class:`~vqseg_bundle.networks.outputs.VQSegOutput`.
        """
        self._check_input(x)
        features = self.encode(x)
        post = list(features)
        pre_vq, post_vq, indices, codebooks, codes = [], [], [], {}, {}
        vq_loss = x.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        perturbed_only = self.quantize_paths == "perturbed"
        # quantize_paths="perturbed": no quantizer on clean calls; on the perturbed one, codebooks fit detached tokens
        quantizers = {} if perturbed_only and not (perturb and self.qpm is not None) else self.quantizers
        for key, quantizer in quantizers.items():
            level = int(key)
            out = quantizer(features[level].detach() if perturbed_only else features[level])
            if not perturbed_only:
                post[level] = out.quantized
            pre_vq.append(features[level])
            post_vq.append(out.quantized)
            indices.append(out.indices)
            codebooks[level] = (out.indices, out.codebook, out.latent)
            codes[level] = out.codes
            vq_loss = vq_loss + out.loss
            for name, value in out.loss_terms.items():
                terms[name] = terms[name] + value if name in terms else value
                if len(self.quantizers) > 1:
                    terms[f"level{level}/{name}"] = value

        seg_input = post
        perturbed_indices = None
        if perturb and self.qpm is not None:
            seg_input = list(post)
            perturbed_indices = []
            for key, quantizer in self.quantizers.items():
                level = int(key)
                idx, codebook, latent = codebooks[level]
                if level in self.perturb_levels:
                    codebook = codebook.detach()  # the estimator passes no gradient to the codewords
                    new_idx = self.qpm(idx, codebook, generator)
                    if perturbed_only:
                        seg_input[level] = self._perturbed_token(quantizer, features[level], idx, new_idx, codebook)
                    else:
                        seg_input[level] = quantizer.substitute(latent, new_idx, codebook)
                else:
                    new_idx = idx
                perturbed_indices.append(new_idx)
        if perturb and self.feature_perturbation is not None:
            seg_input = list(seg_input)
            levels = list(self.dropout_levels)
            for level, value in zip(
                levels, self.feature_perturbation([seg_input[l] for l in levels], generator), strict=True
            ):
                seg_input[level] = value

        out_size = x.shape[-2:]
        clean_seg_logits = None
        if return_clean and seg_input is not post:
            both = self.decode_seg([torch.cat([c, p]) for c, p in zip(post, seg_input, strict=True)], out_size)
            clean_seg_logits, seg_logits = both.chunk(2)
        else:
            seg_logits = self.decode_seg(seg_input, out_size)
            if return_clean:
                clean_seg_logits = seg_logits
        reconstruction = None
        if self.reconstruction:
            rec_input = post
            if self.recon_input == "quantized":
                rec_input = [f if i in self.vq_levels else torch.zeros_like(f) for i, f in enumerate(post)]
            reconstruction = self.decode_rec(rec_input, out_size)
        aligned = None
        if self.adapter is not None and align_size is not None:
            pfa_input = post[self.pfa_level]
            if self.pfa_gradient == "codebook" and self.pfa_level in codes:
                # same values as the straight-through map; gradient to the codebook mapping only
                pfa_input = codes[self.pfa_level].to(pfa_input.dtype)
            aligned = self.adapter(pfa_input, align_size)
        return VQSegOutput(
            seg_logits=seg_logits,
            clean_seg_logits=clean_seg_logits,
            reconstruction=reconstruction,
            pre_vq=pre_vq,
            post_vq=post_vq,
            indices=indices,
            perturbed_indices=perturbed_indices,
            vq_loss=vq_loss,
            vq_loss_terms=terms,
            aligned=aligned,
        )

    def _perturbed_token(
        self,
        quantizer: VectorQuantizer,
        z: torch.Tensor,
        indices: torch.Tensor,
        new_indices: torch.Tensor,
        codebook: torch.Tensor,
    ) -> torch.Tensor:
        """The perturbed stream's map ``(B, D, *sp)`` of the continuous tokens ``z (B, D, *sp)`` whose codes
        ``indices (B, *sp)`` QPM redrew as ``new_indices`` (``quantize_paths="perturbed"``): ``z + sg[c_j - c_i]``
        (``"shift"``) or ``z + sg[c_j - z]`` (``"replace"``), codewords mapped back to the decoders' space."""
        drawn = quantizer.unproject(quantizer.lookup(new_indices, codebook)).to(z.dtype)
        if self.qpm_substitution == "shift":
            own = quantizer.unproject(quantizer.lookup(indices, codebook)).to(z.dtype)
            return z + (drawn - own).detach()
        return z + (drawn - z).detach()

    # ------------------------------------------------------------------ codebook health
    def codebook_usage(self) -> dict[str, float]:
        """Codebook health since the last window reset, per quantized level ``level<l>/<stat>`` (``usage``,
        ``perplexity``, ``batch_distinct``, ``codes_used``, ``dead``, ``size``: see
        :meth:`~vqseg_bundle.networks.quantizer.VectorQuantizer.codebook_usage`) and the means over levels of
        ``usage``, ``perplexity`` and ``batch_distinct``. Empty when nothing is quantized."""
        return self._level_stats({key: q.codebook_usage() for key, q in self.quantizers.items()})

    def codebook_epoch_usage(self) -> dict[str, float]:
        """Like :meth:`codebook_usage` for the epoch histogram (``usage``, ``codes_used``, ``perplexity``)."""
        return self._level_stats({key: q.epoch_usage() for key, q in self.quantizers.items()})

    @staticmethod
    def _level_stats(per_level: dict[str, dict[str, float]]) -> dict[str, float]:
        stats: dict[str, float] = {}
        for key, level_stats in per_level.items():
            for name in ("usage", "perplexity", "batch_distinct", "codes_used", "dead", "size"):
                if name in level_stats:
                    stats[f"level{key}/{name}"] = level_stats[name]
        for name in ("usage", "perplexity", "batch_distinct"):
            values = [level_stats[name] for level_stats in per_level.values() if name in level_stats]
            if values:
                stats[name] = sum(values) / len(values)
        return stats

    def reset_codebook_usage(self, scope: str = "window") -> None:
        """Zero the window statistics (``scope="window"``) or the epoch histograms (``"epoch"``) of every quantizer."""
        for quantizer in self.quantizers.values():
            quantizer.reset_codebook_usage(scope)
