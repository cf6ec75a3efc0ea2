"""Structured training-mode output of the VQ-Seg networks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["VQSegOutput"]


@dataclass
class VQSegOutput:
    """What ``VQSegUNet.forward_train`` / ``VQSegViT.forward_train`` return.

    Attributes:
        seg_logits: ``(B, num_classes, H, W)`` segmentation logits, computed from the *perturbed* post-VQ
            features when ``forward_train(perturb=True)``, else from the unperturbed ones.
        clean_seg_logits: ``(B, num_classes, H, W)`` logits of the *unperturbed* features when
            ``forward_train(return_clean=True)`` (equal to ``seg_logits`` without a perturbation), else ``None``.
        reconstruction: ``(B, in_channels, H, W)`` image reconstruction, always from the *unperturbed*
            post-VQ features, or ``None`` when the network has no reconstruction decoder.
        pre_vq: one ``(B, D_l, h_l, w_l)`` encoder feature map per quantized level (shallow to deep).
        post_vq: the matching quantized maps (unperturbed, straight-through: forward value = codewords,
            gradient = identity to ``pre_vq``).
        indices: ``(B, h_l, w_l)`` int64 code indices per quantized level (unperturbed).
        perturbed_indices: the QPM-perturbed indices per quantized level when QPM was applied, else ``None``.
        vq_loss: scalar tensor, the sum over levels of codebook + beta * commitment (+ usage-entropy term).
        vq_loss_terms: per-term scalars for logging, e.g. ``{"codebook": .., "commitment": .., ...}``
            (summed over levels) and per level ``"<level>/codebook"`` etc.
        aligned: ``(B, C_fm, h, w)`` PFA adapter output resized to ``align_size``, or ``None`` when the
            network was built without ``pfa_channels`` or called without ``align_size``.
    """

    seg_logits: torch.Tensor
    clean_seg_logits: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    pre_vq: list[torch.Tensor] = field(default_factory=list)
    post_vq: list[torch.Tensor] = field(default_factory=list)
    indices: list[torch.Tensor] = field(default_factory=list)
    perturbed_indices: list[torch.Tensor] | None = None
    vq_loss: torch.Tensor | None = None
    vq_loss_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    aligned: torch.Tensor | None = None
