"""Inference over 2D images and 3D volumes with a 2D network, weight loading and input listing."""

from vqseg_bundle.inferers.checkpoint import load_network_weights, read_state_dict
from vqseg_bundle.inferers.inputs import list_inference_inputs, require_inputs
from vqseg_bundle.inferers.slice_inferer import ResizedSliceInferer

__all__ = [
    "ResizedSliceInferer",
    "load_network_weights",
    "read_state_dict",
    "list_inference_inputs",
    "require_inputs",
]
