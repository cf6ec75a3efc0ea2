"""Loss functions of VQ-Seg: pure functions and stateless modules with a ``reduction`` argument.

The semi-supervised composition (weights, which branch gets which loss) lives in the trainer.
"""

from .alignment import PatchInfoNCELoss, patch_infonce_loss
from .pseudo_label import (
    ConfidenceMaskedCrossEntropy,
    MaskedCEResult,
    confidence_masked_cross_entropy,
    pseudo_labels_from_logits,
)
from .reconstruction import ReconstructionL1Loss, reconstruction_l1_loss
from .supervised import SupervisedSegLoss
from .vq import VQLoss, codebook_usage_entropy_loss, vq_codebook_commitment_loss

__all__ = [
    "ConfidenceMaskedCrossEntropy",
    "MaskedCEResult",
    "PatchInfoNCELoss",
    "ReconstructionL1Loss",
    "SupervisedSegLoss",
    "VQLoss",
    "codebook_usage_entropy_loss",
    "confidence_masked_cross_entropy",
    "patch_infonce_loss",
    "pseudo_labels_from_logits",
    "reconstruction_l1_loss",
    "vq_codebook_commitment_loss",
]
