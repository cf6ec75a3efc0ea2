"""VQ-Seg networks: vector quantizer, QPM, feature-dropout baselines, U-Net, DINOv2 + DPT and EfficientNet-Lite0
backbones, PFA adapter and frozen foundation models. Imports nothing from ``data`` or ``engines``."""

from .adapter import PFAAdapter
from .base import VQSegNetworkBase, parse_levels
from .decoders import UNetDecoder
from .dpt import DPTHead
from .efficientnet import VQSegEfficientNet
from .foundation import (
    FOUNDATION_MODELS,
    DINOv2Encoder,
    EfficientNetLite0Encoder,
    FrozenFoundationModel,
    build_foundation_model,
)
from .orientation import OrientationClassifier
from .outputs import VQSegOutput
from .perturbations import PERTURBATIONS, ComplementaryDropout, FeatureDropout, build_perturbation
from .qpm import QuantizedPerturbation
from .quantizer import QuantizerOutput, VectorQuantizer
from .unet import VQSegUNet
from .vit import VQSegViT, create_dinov2_backbone, load_dinov2_weights

__all__ = [
    "OrientationClassifier",
    "DINOv2Encoder",
    "DPTHead",
    "EfficientNetLite0Encoder",
    "FOUNDATION_MODELS",
    "FrozenFoundationModel",
    "VQSegViT",
    "build_foundation_model",
    "build_perturbation",
    "create_dinov2_backbone",
    "load_dinov2_weights",
    "ComplementaryDropout",
    "FeatureDropout",
    "PERTURBATIONS",
    "PFAAdapter",
    "QuantizedPerturbation",
    "QuantizerOutput",
    "UNetDecoder",
    "VQSegNetworkBase",
    "VQSegEfficientNet",
    "VQSegOutput",
    "VQSegUNet",
    "VectorQuantizer",
    "parse_levels",
]
