"""The student's training forwards of one semi-supervised step, as one module call (for DDP).

:class:`SemiSupervisedForward` is the module the trainer calls (``configs/multi_gpu_train.yaml`` wraps it, not
the network, in ``DistributedDataParallel``); :func:`frozen_batchnorm_stats` keeps BatchNorm running statistics
unchanged during the strong-view forward when asked to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

__all__ = ["SemiSupervisedForward", "frozen_batchnorm_stats"]


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with the batch's statistics (train mode) but do not update
    their running statistics inside the block (momentum 0 leaves ``running_mean / var`` unchanged)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


class SemiSupervisedForward(nn.Module):
    """The student's training forwards of one step as a single ``forward`` call.

    DDP synchronises gradients through hooks set up in ``forward``; calling ``forward_train`` on a
    wrapped network twice would bypass it (or trip "marked ready twice"). Wrap this module, not the
    network, in ``DistributedDataParallel`` (``configs/multi_gpu_train.yaml`` does).
    """

    def __init__(self, network: nn.Module) -> None:
        """
        Args:
            network: a VQ-Seg network with ``forward_train(x, perturb, generator, align_size, return_clean)``.
        """
        super().__init__()
        if not callable(getattr(network, "forward_train", None)):
            raise ValueError(f"network must have a forward_train method, got {type(network).__name__}")
        self.network = network

    def forward(
        self,
        labeled: torch.Tensor,
        weak: torch.Tensor | None = None,
        strong: torch.Tensor | None = None,
        perturb_weak: bool = False,
        perturb_strong: bool = True,
        freeze_strong_bn: bool = False,
        generator: torch.Generator | None = None,
        align_size: Sequence[int] | None = None,
    ) -> tuple[Any, Any]:
        """
        Args:
            labeled: ``(B_l, C, H, W)`` labeled images, never perturbed.
            weak: ``(B_u, C, H, W)`` weak views run with the labeled batch (``cat(labeled, weak)``), or ``None``.
            strong: ``(2 B_u, C, H, W)`` the two strong views concatenated, or ``None``.
            perturb_weak: also decode the feature-perturbed ``cat(labeled, weak)`` (its ``seg_logits``; the
                clean logits are then ``clean_seg_logits``).
            perturb_strong: apply the network's perturbation to the strong views.
            freeze_strong_bn: the strong-view forward leaves BatchNorm running statistics unchanged.
            generator: random generator for the perturbation (on the inputs' device).
            align_size: ``(h, w)`` of the foundation model's feature grid, or ``None`` without PFA.

        Returns:
            ``(VQSegOutput of cat(labeled, weak), VQSegOutput of strong or None)``; the first always has
            ``clean_seg_logits``.
        """
        first = labeled if weak is None else torch.cat([labeled, weak])
        out_lw = self.network.forward_train(
            first, perturb=perturb_weak, generator=generator, align_size=align_size, return_clean=True
        )
        if strong is None:
            return out_lw, None
        with frozen_batchnorm_stats(self.network) if freeze_strong_bn else contextlib.nullcontext():
            out_s = self.network.forward_train(
                strong, perturb=perturb_strong, generator=generator, align_size=align_size
            )
        return out_lw, out_s
