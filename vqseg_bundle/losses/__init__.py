"""Loss functions of VQ-Seg: pure functions and stateless modules, and the semi-supervised composition
(:class:`SemiSupervisedLoss`: which student output gets which loss, with which weight and ramp-up)."""

from .alignment import PatchInfoNCELoss, patch_infonce_loss
from .dice import masked_dice_loss
from .pseudo_label import (
    ConfidenceMaskedCrossEntropy,
    MaskedCEResult,
    PseudoLabelLoss,
    confidence_masked_cross_entropy,
    pseudo_labels_from_logits,
)
from .rampup import RAMPUP_SHAPES, rampup_factor
from .reconstruction import ReconstructionL1Loss, reconstruction_l1_loss
from .semi_supervised import PseudoLabelTarget, SemiSupervisedLoss
from .supervised import SupervisedSegLoss
from .vq import VQLoss, codebook_usage_entropy_loss, vq_codebook_commitment_loss

__all__ = [
    "ConfidenceMaskedCrossEntropy",
    "MaskedCEResult",
    "PatchInfoNCELoss",
    "PseudoLabelLoss",
    "PseudoLabelTarget",
    "RAMPUP_SHAPES",
    "SemiSupervisedLoss",
    "ReconstructionL1Loss",
    "SupervisedSegLoss",
    "VQLoss",
    "codebook_usage_entropy_loss",
    "confidence_masked_cross_entropy",
    "masked_dice_loss",
    "patch_infonce_loss",
    "pseudo_labels_from_logits",
    "rampup_factor",
    "reconstruction_l1_loss",
    "vq_codebook_commitment_loss",
]
