"""Backbone A: a 2D U-Net (SSL4MIS / UniMatch-medical family) with vector-quantized levels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, List

import torch
import torch.nn as nn
from monai.networks.nets.basic_unet import Down, TwoConv

from .base import VQSegNetworkBase
from .decoders import UNetDecoder
from .scriptable import ScriptableVQSeg

__all__ = ["VQSegUNet", "ScriptableUNet"]

SSL4MIS_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)
DROPOUT_CONVS = ("first", "both")


class VQSegUNet(VQSegNetworkBase):
    """VQ-Seg with a 2D U-Net trained from scratch.

    Encoder: ``TwoConv`` then ``len(features) - 1`` max-pool + ``TwoConv`` stages (MONAI ``BasicUNet`` blocks;
    conv 3x3 - BatchNorm - dropout - LeakyReLU, twice), widths ``features`` (SSL4MIS / UniMatch: 16 .. 256,
    about 1.8 M parameters with the segmentation decoder). Levels are numbered 0 (full resolution) to
    ``len(features) - 1`` (bottleneck). The quantized levels' post-VQ maps feed both the segmentation decoder
    and the reconstruction decoder (same structure, ``in_channels`` outputs); the other levels pass through.
    Quantizing only the bottleneck leaves the skips unperturbed: add skip levels to ``vq_levels`` to
    perturb them too.

    Args:
        in_channels: image channels.
        num_classes: segmentation classes (incl. background).
        features: encoder widths, shallow to deep (at least 2 levels).
        dropout: encoder dropout per level (one float for all, or one per level); ``None``: SSL4MIS's
            ``(0.05, 0.1, 0.2, 0.3, 0.5)`` for five levels, else linearly spaced from 0.05 to 0.5.
        dropout_convs: which of the two convolutions of an encoder block drop out: ``"first"`` (SSL4MIS /
            UniMatch: dropout after the first conv's activation only) or ``"both"`` (MONAI ``TwoConv``: after
            each conv's normalisation). No parameters depend on it (same state dict either way).
        decoder_dropout: dropout in the decoder blocks.
        act, norm: MONAI layer-factory specs.
        upsample: decoder upsampling: ``"nontrainable"`` (default: 1 x 1 conv + bilinear x2, the SSL4MIS
            ``bilinear=True`` block, 1.81 M parameters in total), ``"deconv"`` (transposed conv, 1.94 M) or
            ``"pixelshuffle"``.
        reconstruction: build the image-reconstruction decoder (dual branch).
        vq_options: the options every backbone shares, passed through to
            :meth:`~vqseg_bundle.networks.base.VQSegNetworkBase._setup_vq` (one home for their defaults):
            ``vq_levels`` (default the bottleneck; ``()`` for a plain U-Net), ``codebook_size``, ``codebook_seed``,
            ``quantizer`` (the levels' :class:`~vqseg_bundle.networks.quantizer.VectorQuantizer` options or a
            factory), ``perturbation`` (a built module, :func:`~vqseg_bundle.networks.build_perturbation`;
            ``None``: none), ``perturb_levels``, ``recon_input``, ``pfa_channels``, ``pfa_level``, ``pfa_gradient``.

    Input ``(B, in_channels, H, W)`` with ``H, W >= 2 ** (len(features) - 1)``; any such size works (odd sizes
    are padded back after each upsampling).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        dropout: float | Sequence[float] | None = None,
        dropout_convs: str = "first",
        decoder_dropout: float = 0.0,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        norm: str | tuple = ("batch", {"affine": True}),
        upsample: str = "nontrainable",
        reconstruction: bool = True,
        **vq_options: Any,
    ) -> None:
        super().__init__()
        features = [int(f) for f in features]
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"VQSegUNet: features needs >= 2 positive widths, got {features}.")
        if int(in_channels) < 1 or int(num_classes) < 1:
            raise ValueError(f"VQSegUNet: in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}.")
        if dropout is None:
            n = len(features)
            dropout = SSL4MIS_DROPOUT if n == 5 else [0.05 + (0.5 - 0.05) * i / (n - 1) for i in range(n)]
        drops = [float(dropout)] * len(features) if isinstance(dropout, (int, float)) else [float(d) for d in dropout]
        if len(drops) != len(features) or not all(0.0 <= d < 1.0 for d in drops):
            raise ValueError(
                f"VQSegUNet: dropout must be one float in [0, 1) or one per level ({len(features)}), got {dropout}."
            )
        if dropout_convs not in DROPOUT_CONVS:
            raise ValueError(f"VQSegUNet: dropout_convs must be one of {DROPOUT_CONVS}, got {dropout_convs!r}.")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.features = tuple(features)
        self.min_size = 2 ** (len(features) - 1)

        self.encoder = nn.ModuleList([TwoConv(2, self.in_channels, features[0], act, norm, True, drops[0])])
        for level in range(1, len(features)):
            self.encoder.append(Down(2, features[level - 1], features[level], act, norm, True, drops[level]))
        if dropout_convs == "first":
            for block in self.encoder:
                two_conv = block if isinstance(block, TwoConv) else block.convs
                two_conv.conv_1.adn.D = nn.Identity()
        self.seg_decoder = UNetDecoder(features, self.num_classes, act, norm, True, decoder_dropout, upsample)
        self.rec_decoder = (
            UNetDecoder(features, self.in_channels, act, norm, True, decoder_dropout, upsample)
            if reconstruction
            else None
        )
        self._setup_vq(features, reconstruction, **vq_options)

    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"VQSegUNet: spatial size {tuple(x.shape[-2:])} is too small for {len(self.features) - 1} "
                f"poolings; H and W must be >= {self.min_size}."
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[(B, features[l], H // 2^l, W // 2^l) for l in levels]``."""
        out = []
        for block in self.encoder:
            x = block(x)
            out.append(x)
        return out

    def decode_seg(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        return self.seg_decoder(features)

    def decode_rec(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        return self.rec_decoder(features)

    def scriptable(self) -> ScriptableUNet:
        """The TorchScript form (:class:`ScriptableUNet`, see :meth:`VQSegNetworkBase.scriptable`)."""
        return ScriptableUNet(self)


class ScriptableUNet(ScriptableVQSeg):
    """Scriptable segmentation path of a :class:`VQSegUNet`: its ``encoder`` and ``seg_decoder`` (shared, not
    copied) around the levels' nearest-code lookups; no reconstruction decoder, perturbation or PFA adapter."""

    def __init__(self, network: VQSegUNet) -> None:
        super().__init__(network, min_size=network.min_size)
        self.encoder = network.encoder
        self.seg_decoder = network.seg_decoder

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``[(B, features[l], H // 2^l, W // 2^l) for l in levels]`` (as :meth:`VQSegUNet.encode`)."""
        out: List[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            out.append(x)
        return out

    def decode_seg(self, features: List[torch.Tensor], out_size: List[int]) -> torch.Tensor:
        return self.seg_decoder(features)
