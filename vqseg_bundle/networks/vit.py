"""Backbone B: DINOv2 ViT (timm) + DPT heads with vector-quantized levels, and DINOv2 weight loading."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, List

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import checkpoint_filter_fn

from .base import VQSegNetworkBase
from .dpt import DPT_DEFAULTS, DPTHead
from .scriptable import ScriptableVQSeg
from .weights import read_pretrained_state_dict

__all__ = [
    "VQSegViT",
    "ScriptableViT",
    "vit_input",
    "create_dinov2_backbone",
    "load_dinov2_weights",
    "dinov2_size",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# DINOv2 / Depth Anything / UniMatch V2 block indices fed to the DPT head
DEFAULT_LAYERS = {"small": (2, 5, 8, 11), "base": (2, 5, 8, 11), "large": (4, 11, 17, 23), "giant": (9, 19, 29, 39)}


def dinov2_size(model_name: str) -> str:
    """``"small" | "base" | "large" | "giant"`` from a timm name such as ``vit_small_patch14_dinov2``."""
    for size in ("small", "base", "large", "giant"):
        if f"_{size}_" in model_name:
            return size
    raise ValueError(f"cannot tell the ViT size (small/base/large/giant) from model name {model_name!r}.")


def load_dinov2_weights(model: nn.Module, path: str | Path) -> None:
    """Load DINOv2 weights into a timm ``VisionTransformer``, strictly.

    Accepts Meta's format (``dinov2_vits14_pretrain.pth``: ``mask_token``, position embedding for 518 px,
    SwiGLU ``w12`` / ``w3`` for ViT-g) and timm's format; timm's ``checkpoint_filter_fn`` converts names and
    resamples the position embedding to the model's grid.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file, or keys / shapes that do not match the model (the message lists them).
    """
    state = read_pretrained_state_dict(path)
    converted = checkpoint_filter_fn(state, model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(converted[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(converted) & set(expected)
        if converted[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights file {path} does not match {type(model).__name__} (is it the right ViT size?): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:3]}."
        )
    model.load_state_dict(converted, strict=True)


def create_dinov2_backbone(
    model_name: str = "vit_small_patch14_dinov2",
    image_size: int = 224,
    weights_path: str | Path | None = None,
    pretrained: bool = True,
    drop_path_rate: float = 0.0,
    vit_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm DINOv2 ViT (no classifier, dynamic image size) with weights from a local file.

    Args:
        model_name: timm name, ``vit_{small,base,large,giant}_patch14_dinov2`` (``_reg4_`` variants work too).
        image_size: size the position embedding is stored for (other sizes are interpolated at run time).
        weights_path: local Meta- or timm-format file; nothing is ever downloaded.
        pretrained: with ``weights_path=None`` this must be ``False`` (explicit random initialisation).
        drop_path_rate: stochastic depth.
        vit_kwargs: extra ``timm.create_model`` arguments (e.g. ``depth``/``embed_dim`` for tiny test models).

    Raises:
        ValueError: ``pretrained=True`` without ``weights_path``, or a mismatched file.
        FileNotFoundError: ``weights_path`` does not exist.
    """
    if weights_path is None and pretrained:
        raise ValueError(
            f"{model_name}: pretrained=True but weights_path is None. No weights are downloaded: pass "
            "the local file (e.g. dinov2_vits14_pretrain.pth from Meta, or a timm state dict), or set "
            "pretrained=False to train from a random initialisation on purpose."
        )
    if weights_path is not None and not Path(weights_path).expanduser().is_file():
        raise FileNotFoundError(f"{model_name}: weights file not found: {weights_path}")
    kwargs = dict(vit_kwargs or {})
    model = timm.create_model(
        model_name,
        pretrained=False,
        num_classes=0,
        img_size=int(image_size),
        dynamic_img_size=True,
        drop_path_rate=float(drop_path_rate),
        **kwargs,
    )
    if weights_path is not None:
        load_dinov2_weights(model, weights_path)
    return model


def vit_input(
    x: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, patch_size: int, imagenet_norm: bool
) -> torch.Tensor:
    """The ViT's input ``(B, 3, H', W')`` of ``x (B, 1 or 3, H, W)``: grayscale repeated to RGB, ImageNet
    normalisation (``pixel_mean`` / ``pixel_std`` ``(1, 3, 1, 1)``) when ``imagenet_norm``, then bilinearly
    resized to the nearest multiples ``H', W'`` of ``patch_size`` (at least one patch). TorchScript-able (used by
    :class:`VQSegViT` and :class:`ScriptableViT`; TorchScript's ``round`` also rounds halves to even)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if imagenet_norm:
        x = (x - pixel_mean.to(x.dtype)) / pixel_std.to(x.dtype)
    p = patch_size
    h, w = int(x.shape[-2]), int(x.shape[-1])  # static under tracing / export
    th, tw = max(p, int(round(h / p)) * p), max(p, int(round(w / p)) * p)
    if th != h or tw != w:
        x = F.interpolate(x, size=[th, tw], mode="bilinear", align_corners=False)
    return x


class VQSegViT(VQSegNetworkBase):
    """VQ-Seg with a DINOv2 ViT encoder (timm) and DPT segmentation / reconstruction heads.

    Four intermediate blocks (final LayerNorm applied) give four ``(B, embed_dim, H/14, W/14)`` maps
    (levels 0..3, shallow to deep) for the DPT heads; ``vq_levels`` (default the deepest, as in VQ-Seg's
    code) are quantized with D = embed_dim.

    Input: ``(B, in_channels, H, W)`` with ``in_channels`` 1 (repeated to RGB) or 3, values in [0, 1] when
    ``imagenet_norm`` (ImageNet mean/std applied inside). Sizes that are not multiples of 14 are resized to
    the nearest multiple (at least 14) for the ViT; outputs are always ``(H, W)``.

    Args:
        in_channels, num_classes: image channels (1 or 3) and classes.
        model_name: timm DINOv2 name (``vit_small_patch14_dinov2`` default; base / large / giant).
        weights_path: local Meta-format (``dinov2_vits14_pretrain.pth``) or timm-format weights.
        pretrained: must be ``False`` to allow ``weights_path=None`` (random initialisation).
        image_size: training size (224: a 16 x 16 grid), for the stored position embedding.
        intermediate_layers: four block indices (default 2, 5, 8, 11 for S/B; 4, 11, 17, 23 for L;
            9, 19, 29, 39 for G; evenly spaced for other depths).
        dpt_features, dpt_level_channels: DPT widths (default per size as in Depth Anything / UniMatch V2).
        imagenet_norm: normalise inside the network.
        drop_path_rate: stochastic depth of the ViT.
        grad_checkpointing: activation checkpointing in the ViT blocks (memory for time).
        vit_kwargs: extra ``timm.create_model`` arguments (tiny models in tests).
        reconstruction: build the reconstruction DPT head (dual branch).
        vq_options: the options every backbone shares (``vq_levels``, default the deepest; ``codebook_size``,
            ``codebook_seed``, ``quantizer``, ``perturbation``, ``perturb_levels``, ``recon_input``, ``pfa_*``):
            :meth:`~vqseg_bundle.networks.base.VQSegNetworkBase._setup_vq` (levels here are the four ViT levels).
    """

    backbone_attribute = "backbone"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        model_name: str = "vit_small_patch14_dinov2",
        weights_path: str | None = None,
        pretrained: bool = True,
        image_size: int = 224,
        intermediate_layers: Sequence[int] | None = None,
        dpt_features: int | None = None,
        dpt_level_channels: Sequence[int] | None = None,
        imagenet_norm: bool = True,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
        vit_kwargs: dict[str, Any] | None = None,
        reconstruction: bool = True,
        **vq_options: Any,
    ) -> None:
        super().__init__()
        if int(in_channels) not in (1, 3):
            raise ValueError(f"VQSegViT: in_channels must be 1 (grayscale, repeated) or 3, got {in_channels}.")
        if int(num_classes) < 1:
            raise ValueError(f"VQSegViT: num_classes must be >= 1, got {num_classes}.")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.model_name = model_name
        self.backbone = create_dinov2_backbone(
            model_name, image_size, weights_path, pretrained, drop_path_rate, vit_kwargs
        )
        if grad_checkpointing:
            self.backbone.set_grad_checkpointing(True)
        self.patch_size = int(self.backbone.patch_embed.patch_size[0])
        embed_dim = int(self.backbone.embed_dim)
        depth = len(self.backbone.blocks)
        size = dinov2_size(model_name)
        if intermediate_layers is None:
            default = DEFAULT_LAYERS[size]
            if max(default) < depth and depth == {"small": 12, "base": 12, "large": 24, "giant": 40}[size]:
                intermediate_layers = default
            else:
                intermediate_layers = tuple(round((i + 1) * depth / 4) - 1 for i in range(4))
        layers = tuple(int(i) for i in intermediate_layers)
        if len(layers) != 4 or not all(0 <= i < depth for i in layers):
            raise ValueError(f"VQSegViT: intermediate_layers must be 4 block indices in [0, {depth}), got {layers}.")
        self.intermediate_layers = layers
        default_features, default_channels = DPT_DEFAULTS[size]
        features = int(dpt_features) if dpt_features is not None else default_features
        channels = tuple(dpt_level_channels) if dpt_level_channels is not None else default_channels
        self.seg_head = DPTHead(embed_dim, self.num_classes, features, channels)
        self.rec_head = DPTHead(embed_dim, self.in_channels, features, channels) if reconstruction else None
        self.imagenet_norm = bool(imagenet_norm)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._setup_vq([embed_dim] * 4, reconstruction, **vq_options)

    def _vit_input(self, x: torch.Tensor) -> torch.Tensor:
        return vit_input(x, self.pixel_mean, self.pixel_std, self.patch_size, self.imagenet_norm)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four ``(B, embed_dim, H' / 14, W' / 14)`` maps (normed outputs of ``intermediate_layers``)."""
        return list(
            self.backbone.forward_intermediates(
                self._vit_input(x),
                indices=list(self.intermediate_layers),
                norm=True,
                output_fmt="NCHW",
                intermediates_only=True,
            )
        )

    def decode_seg(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        return self.seg_head(features, out_size)

    def decode_rec(self, features: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        return self.rec_head(features, out_size)

    def scriptable(self) -> ScriptableViT:
        """The TorchScript form (:class:`ScriptableViT`, see :meth:`VQSegNetworkBase.scriptable`)."""
        return ScriptableViT(self)


class ScriptableViT(ScriptableVQSeg):
    """Scriptable segmentation path of a :class:`VQSegViT`: its ``backbone`` and ``seg_head`` (shared, not copied)
    around the levels' nearest-code lookups; no reconstruction head, perturbation or PFA adapter.

    :meth:`encode` runs the ViT's blocks itself instead of timm's ``forward_intermediates`` (which
    ``torch.jit.script`` rejects: its dictionary-output branch does not type-check). It is the same sequence as
    timm's for ``norm=True, output_fmt="NCHW", intermediates_only=True`` (patch embedding, position embedding,
    blocks, final norm of the chosen blocks, prefix tokens dropped, tokens to ``(B, C, h, w)``); the tests check
    that the two give identical maps.
    """

    def __init__(self, network: VQSegViT) -> None:
        super().__init__(network)
        self.backbone = network.backbone
        self.seg_head = network.seg_head
        self.register_buffer("pixel_mean", network.pixel_mean, persistent=False)
        self.register_buffer("pixel_std", network.pixel_std, persistent=False)
        self.patch_size = int(network.patch_size)
        self.imagenet_norm = bool(network.imagenet_norm)
        self.intermediate_layers: List[int] = [int(i) for i in network.intermediate_layers]

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Four ``(B, embed_dim, H' / 14, W' / 14)`` maps (normed outputs of ``intermediate_layers``)."""
        x = vit_input(x, self.pixel_mean, self.pixel_std, self.patch_size, self.imagenet_norm)
        batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        vit = self.backbone
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        picked: List[torch.Tensor] = []
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i in self.intermediate_layers:
                picked.append(vit.norm(tokens)[:, vit.num_prefix_tokens :])
        grid = vit.patch_embed.dynamic_feat_size((height, width))
        return [t.reshape(batch, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous() for t in picked]

    def decode_seg(self, features: List[torch.Tensor], out_size: List[int]) -> torch.Tensor:
        return self.seg_head(features, out_size)
