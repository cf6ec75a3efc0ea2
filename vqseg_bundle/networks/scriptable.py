"""TorchScript (``torch.jit.script``) form of the VQ-Seg networks' segmentation forward.

The networks themselves are not scriptable: training-only machinery (QPM, feature perturbations, the PFA
adapter, the reconstruction decoder, usage statistics, k-means and dead-code guards, properties and Python
containers of options) is part of every module's attributes. ``torch.jit.script`` calls
``__prepare_scriptable__`` first (:meth:`VQSegNetworkBase.__prepare_scriptable__
<vqseg_bundle.networks.base.VQSegNetworkBase.__prepare_scriptable__>`), which returns the lean module of this
file: the encoder, one :class:`ScriptableQuantizer` per quantized level and the segmentation decoder, all
*sharing* the network's parameters and buffers (no copy; its ``state_dict`` keys are a subset of the network's)
and nothing else. Its ``forward`` is the network's ``forward`` (encode -> nearest code of each quantized level
-> segmentation decoder) in eval mode; the nearest-code numerics are those of
:mod:`~vqseg_bundle.networks.nearest_code`, the functions ``VectorQuantizer`` itself runs.

Tracing (``torch.jit.trace``, ONNX, ``torch.export``) does not call ``__prepare_scriptable__`` and keeps using
the network itself.
"""

from typing import List

import torch
import torch.nn as nn

from .nearest_code import (
    channel_linear,
    effective_codebook,
    flatten_tokens,
    gather_codes,
    l2_normalize,
    nearest_code_indices,
    straight_through,
)
from .quantizer import VectorQuantizer

__all__ = ["ScriptableQuantizer", "ScriptableVQSeg"]


class ScriptableQuantizer(nn.Module):
    """Eval-only nearest-code lookup of a :class:`~vqseg_bundle.networks.quantizer.VectorQuantizer`, sharing its
    parameters (``project_in`` / ``project_out``, ``base_codebook`` + ``codebook_mapping`` or ``codebook``).

    ``forward(z (B, D, *sp)) -> (B, D, *sp)``: the value of ``VectorQuantizer.quantize(z)[0]`` under
    ``torch.no_grad()`` (projection, float32 chunked search, gather from the effective codebook, straight-through
    value, back-projection). Losses, gradient estimators and usage counting are training matters and absent.
    """

    def __init__(self, quantizer: VectorQuantizer) -> None:
        super().__init__()
        self.project_in = quantizer.project_in
        self.project_out = quantizer.project_out
        self.cosine = bool(quantizer.cosine)
        self.max_chunk_elements = int(quantizer.max_chunk_elements)
        if quantizer.codebook_type == "simvq":
            self.register_buffer("base_codebook", quantizer.base_codebook)  # the same tensor, not a copy
            self.codebook_mapping = quantizer.codebook_mapping
        else:
            self.codebook = quantizer.codebook

    def mapped_codebook(self) -> torch.Tensor:
        """The effective codebook ``(K, d)`` in float32 (rows l2-normalised with ``cosine``)."""
        # hasattr is resolved when TorchScript compiles: only the branch of this codebook type is built
        if hasattr(self, "base_codebook"):
            return effective_codebook(
                self.base_codebook, self.codebook_mapping.weight, self.codebook_mapping.bias, self.cosine
            )
        return effective_codebook(self.codebook, None, None, self.cosine)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        latent = z
        if self.project_in is not None:
            latent = channel_linear(latent, self.project_in.weight, self.project_in.bias)
        latent = l2_normalize(latent, 1, self.cosine)
        codebook = self.mapped_codebook()
        shape = [z.shape[0]] + list(z.shape[2:])
        # a real loop under TorchScript: bounded memory at any token count, as in eager mode
        indices = nearest_code_indices(flatten_tokens(latent), codebook, self.max_chunk_elements).reshape(shape)
        quantized = straight_through(latent, gather_codes(indices, codebook))
        if self.project_out is not None:
            quantized = channel_linear(quantized, self.project_out.weight, self.project_out.bias)
        return quantized


class ScriptableVQSeg(nn.Module):
    """Eval-only segmentation path of a VQ-Seg network: ``forward(x (B, in_channels, H, W)) -> (B, K, H, W)``.

    Backbone subclasses (``ScriptableUNet`` in :mod:`~vqseg_bundle.networks.unet`, ``ScriptableViT`` in
    :mod:`~vqseg_bundle.networks.vit`) register the network's encoder and segmentation decoder under the
    network's attribute names and implement ``encode(x) -> list[(B, C_l, h_l, w_l)]`` and
    ``decode_seg(features, out_size) -> (B, K, H, W)``; ``min_size``: the smallest ``H`` and ``W`` accepted.
    """

    def __init__(self, network: nn.Module, min_size: int = 1) -> None:
        super().__init__()
        self.name = type(network).__name__
        self.in_channels = int(network.in_channels)
        self.num_classes = int(network.num_classes)
        self.min_size = int(min_size)
        self.quantizers = nn.ModuleDict(
            {key: ScriptableQuantizer(q) for key, q in network.inference_quantizers().items()}
        )

    def check_input(self, x: torch.Tensor) -> None:
        """The network's input checks (TorchScript has no ``super()``, hence one method with ``min_size``)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name}: expected input (B, {self.in_channels}, H, W), got {x.shape}.")
        if min(x.shape[-2], x.shape[-1]) < self.min_size:
            raise ValueError(
                f"{self.name}: spatial size {x.shape[-2:]} is too small; H and W must be >= {self.min_size}."
            )

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_seg(self, features: List[torch.Tensor], out_size: List[int]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = self.encode(x)
        for key, quantizer in self.quantizers.items():
            level = int(key)
            features[level] = quantizer(features[level])
        return self.decode_seg(features, [x.shape[-2], x.shape[-1]])
