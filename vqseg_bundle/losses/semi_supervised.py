"""The semi-supervised objective of one training step: which output gets which loss, with which weight.

The trainer runs the forwards and hands the outputs here; every weight, threshold and ramp-up lives in
this module's constructor (configured in ``configs/train.yaml``), none in the trainer::

    loss = sup_weight * L_sup(labeled)
         + r_t * unsup_weight * (strong_weight * mean_v L_pl(strong view v) + fp_weight * L_pl(fp stream))
         + recon_weight * sum_calls L1(reconstruction, input)
         + align_weight * InfoNCE(PFA, FM)
         + vq_weight * mean_calls L_vq

``L_pl`` is the pseudo-label loss (:class:`~vqseg_bundle.losses.pseudo_label.PseudoLabelLoss`: masked CE,
masked batch Dice or both), ``r_t`` the optional ramp-up (:func:`rampup_factor`). The "fp stream" is
UniMatch's feature-perturbed weak view. UniMatch V1 (medical) is ``sup_weight = unsup_weight = 0.5``,
``strong_weight = fp_weight = 0.5`` with the Dice pseudo-label loss: ``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``;
the VQ-Seg paper is ``1, 1, 1, 0`` with CE (the perturbation then acts on the strong views).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .alignment import patch_infonce_loss
from .pseudo_label import PseudoLabelLoss
from .rampup import RAMPUP_SHAPES, rampup_factor
from .reconstruction import reconstruction_l1_loss
from .supervised import SupervisedSegLoss

__all__ = ["SemiSupervisedLoss", "PseudoLabelTarget"]

#: ``(student logits (B, C, H, W), pseudo-labels (B, H, W) int64, confidence (B, H, W) float)``
PseudoLabelTarget = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class SemiSupervisedLoss(nn.Module):
    """Composition of the step's loss terms (see the module docstring for the formula).

    Args:
        supervised_loss: ``(logits, labels) -> scalar`` (default :class:`SupervisedSegLoss`, (CE + batch Dice) / 2).
        pseudo_label_loss: ``(logits, pseudo_labels, confidence) -> (loss, kept_ratio)``
            (default :class:`PseudoLabelLoss`: CE at threshold 0.95).
        sup_weight, unsup_weight, strong_weight, fp_weight, recon_weight, align_weight, vq_weight: weights, >= 0.
        align_temperature: InfoNCE temperature (> 0).
        rampup_iterations: the pseudo-label terms ramp up over this many iterations (0: constant).
        rampup_shape: ``"sigmoid"`` or ``"linear"``.
    """

    def __init__(
        self,
        supervised_loss: Callable | None = None,
        pseudo_label_loss: Callable | None = None,
        sup_weight: float = 1.0,
        unsup_weight: float = 1.0,
        strong_weight: float = 1.0,
        fp_weight: float = 0.0,
        recon_weight: float = 1.0,
        align_weight: float = 5.0,
        align_temperature: float = 0.1,
        vq_weight: float = 1.0,
        rampup_iterations: int = 0,
        rampup_shape: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.weights = {
            "sup_weight": float(sup_weight),
            "unsup_weight": float(unsup_weight),
            "strong_weight": float(strong_weight),
            "fp_weight": float(fp_weight),
            "recon_weight": float(recon_weight),
            "align_weight": float(align_weight),
            "vq_weight": float(vq_weight),
        }
        for name, value in self.weights.items():
            if not value >= 0:
                raise ValueError(f"SemiSupervisedLoss: {name} must be >= 0, got {value}")
        if not align_temperature > 0:
            raise ValueError(f"SemiSupervisedLoss: align_temperature must be > 0, got {align_temperature}")
        if int(rampup_iterations) < 0:
            raise ValueError(f"SemiSupervisedLoss: rampup_iterations must be >= 0, got {rampup_iterations}")
        if rampup_shape not in RAMPUP_SHAPES:
            raise ValueError(f"SemiSupervisedLoss: rampup_shape must be one of {RAMPUP_SHAPES}, got {rampup_shape!r}")
        self.supervised_loss = supervised_loss if supervised_loss is not None else SupervisedSegLoss()
        self.pseudo_label_loss = pseudo_label_loss if pseudo_label_loss is not None else PseudoLabelLoss()
        self.align_temperature = float(align_temperature)
        self.rampup_iterations = int(rampup_iterations)
        self.rampup_shape = rampup_shape

    # ------------------------------------------------------------------ what the trainer must compute
    @property
    def pseudo_label_streams(self) -> tuple[str, ...]:
        """The unlabeled student streams that carry a pseudo-label loss: a subset of ``("strong", "fp")``."""
        w = self.weights
        if w["unsup_weight"] <= 0:
            return ()
        return tuple(s for s in ("strong", "fp") if w[f"{s}_weight"] > 0)

    def uses_unlabeled(self, network: nn.Module, has_foundation_model: bool) -> bool:
        """Whether any term reads the unlabeled batch; when none does (labeled-only training) the trainer
        skips the teacher and the unlabeled forwards instead of computing them with weight 0."""
        w = self.weights
        return bool(
            self.pseudo_label_streams
            or (w["recon_weight"] > 0 and bool(getattr(network, "reconstruction", False)))
            or (w["align_weight"] > 0 and has_foundation_model)
            or (w["vq_weight"] > 0 and len(getattr(network, "vq_levels", ())) > 0)
        )

    # ------------------------------------------------------------------ the objective
    def forward(
        self,
        iteration: int,
        labeled_logits: torch.Tensor,
        labels: torch.Tensor,
        strong: Sequence[PseudoLabelTarget] = (),
        fp: PseudoLabelTarget | None = None,
        reconstructions: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
        aligned: tuple[torch.Tensor, torch.Tensor] | None = None,
        vq_losses: Sequence[torch.Tensor] = (),
    ) -> dict[str, torch.Tensor | float]:
        """
        Args:
            iteration: completed training steps before this one (for the ramp-up).
            labeled_logits: ``(B_l, C, H, W)`` unperturbed student logits of the labeled batch.
            labels: ``(B_l, H, W)`` int64.
            strong: one ``(logits, pseudo_labels, confidence)`` per strong view (``(B_u, ...)`` each).
            fp: the feature-perturbed weak stream's ``(logits, pseudo_labels, confidence)``, or ``None``.
            reconstructions: ``(reconstruction, target image)`` per student call, ``(B, C_in, H, W)`` each.
            aligned: ``(PFA adapter output (N, C_fm, h, w), foundation features (N, C_fm, h, w))`` or ``None``.
            vq_losses: the VQ loss (scalar) of each student call.

        Returns:
            ``{"loss": total, "loss_sup", "loss_unsup" (weighted stream sum before r_t), "loss_unsup_strong",
            "loss_unsup_fp", "loss_rec", "loss_align", "loss_vq" (those computed), "mask_ratio" (mean kept share
            over the pseudo-label streams), "unsup_rampup" (r_t, float)}``.
        """
        w = self.weights
        out: dict[str, torch.Tensor | float] = {}
        out["loss_sup"] = self.supervised_loss(labeled_logits.float(), labels)
        total = w["sup_weight"] * out["loss_sup"]
        ratios = []
        unsup = None
        if strong and w["strong_weight"] > 0:
            results = [self.pseudo_label_loss(logits.float(), pl, conf) for logits, pl, conf in strong]
            out["loss_unsup_strong"] = sum(r[0] for r in results) / len(results)
            ratios += [r[1] for r in results]
            unsup = w["strong_weight"] * out["loss_unsup_strong"]
        if fp is not None and w["fp_weight"] > 0:
            loss_fp, ratio_fp = self.pseudo_label_loss(fp[0].float(), fp[1], fp[2])
            out["loss_unsup_fp"] = loss_fp
            ratios.append(ratio_fp)
            unsup = w["fp_weight"] * loss_fp + (unsup if unsup is not None else 0.0)
        if unsup is not None:
            rampup = rampup_factor(iteration, self.rampup_iterations, self.rampup_shape)
            out["loss_unsup"] = unsup
            out["mask_ratio"] = torch.stack([r.float() for r in ratios]).mean().detach()
            out["unsup_rampup"] = rampup
            total = total + rampup * w["unsup_weight"] * unsup
        if reconstructions and w["recon_weight"] > 0:
            out["loss_rec"] = sum(reconstruction_l1_loss(rec, target) for rec, target in reconstructions)
            total = total + w["recon_weight"] * out["loss_rec"]
        if aligned is not None and w["align_weight"] > 0:
            out["loss_align"] = patch_infonce_loss(aligned[0], aligned[1], self.align_temperature)
            total = total + w["align_weight"] * out["loss_align"]
        if vq_losses:
            out["loss_vq"] = sum(vq_losses) / len(vq_losses)
            if w["vq_weight"] > 0:
                total = total + w["vq_weight"] * out["loss_vq"]
        out["loss"] = total
        return out
