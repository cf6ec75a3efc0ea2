"""Inference over 2D images and 3D volumes with a 2D network, weight loading, input listing and checking,
and the model's recorded settings."""

from vqseg_bundle.inferers.checkpoint import load_network_weights, read_state_dict
from vqseg_bundle.inferers.images2d import ToGreyd
from vqseg_bundle.inferers.inputs import list_inference_inputs, literal_glob, require_inputs
from vqseg_bundle.inferers.orientation_check import ReportOrientationd, orientation_findings
from vqseg_bundle.inferers.orientation_correction import (
    OrientationCorrectingInferer,
    correction_mode,
    detect_orientation,
    load_orientation_classifier,
    orientation_classifier_beside,
)
from vqseg_bundle.inferers.run import (
    NONFINITE_POLICIES,
    CheckInputd,
    InferenceInputError,
    InferenceInputs,
    SaveSegmentationd,
    output_names,
)
from vqseg_bundle.inferers.settings import (
    ModelSettingsMissingError,
    build_network,
    check_model_settings,
    describe_model,
    effective_value,
    load_evaluation_network,
    load_model,
    model_image_size,
    model_value,
    read_model_record,
    resolve_model_settings,
    settings_path,
    slice_size,
    unet_arguments_of,
)
from vqseg_bundle.inferers.slice_inferer import ResizedSliceInferer

__all__ = [
    "OrientationCorrectingInferer",
    "correction_mode",
    "detect_orientation",
    "load_orientation_classifier",
    "orientation_classifier_beside",
    "ResizedSliceInferer",
    "load_network_weights",
    "read_state_dict",
    "list_inference_inputs",
    "literal_glob",
    "require_inputs",
    "NONFINITE_POLICIES",
    "CheckInputd",
    "ToGreyd",
    "ReportOrientationd",
    "orientation_findings",
    "InferenceInputError",
    "InferenceInputs",
    "SaveSegmentationd",
    "output_names",
    "build_network",
    "check_model_settings",
    "effective_value",
    "load_evaluation_network",
    "model_value",
    "read_model_record",
    "resolve_model_settings",
    "settings_path",
    "ModelSettingsMissingError",
    "describe_model",
    "load_model",
    "model_image_size",
    "slice_size",
    "unet_arguments_of",
]
