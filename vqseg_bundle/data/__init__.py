"""Data: demo phantoms, ACDC HDF5 reader, Decathlon-style NIfTI reader, in-memory slice datasets,
integrity checks.

The training configs use two entry points: :func:`build_splits` (the checked splits) and :func:`train_loader`
(the training loaders of both backends).
"""

from vqseg_bundle.data.acdc import load_acdc_splits
from vqseg_bundle.data.acdc_layout import AcdcLayout
from vqseg_bundle.data.datalist import load_datalist, write_datalist
from vqseg_bundle.data.datasets import InMemorySliceDataset, resize_slices
from vqseg_bundle.data.integrity import DataIntegrityError, patient_id_from_name
from vqseg_bundle.data.intensity import NORMALIZATION_MODES, normalize_intensity
from vqseg_bundle.data.loaders import DATA_BACKENDS, train_loader
from vqseg_bundle.data.nifti import load_nifti_splits
from vqseg_bundle.data.phantoms import make_demo_dataset, make_phantom_volume
from vqseg_bundle.data.selection import LabeledChoice, choose_labeled
from vqseg_bundle.data.splits import (
    SemiSupervisedSplits,
    build_splits,
    default_demo_dir,
    detect_format,
    validation_fingerprint,
)

__all__ = [
    "build_splits",
    "train_loader",
    "DATA_BACKENDS",
    "SemiSupervisedSplits",
    "InMemorySliceDataset",
    "DataIntegrityError",
    "patient_id_from_name",
    "make_demo_dataset",
    "make_phantom_volume",
    "load_acdc_splits",
    "load_nifti_splits",
    "load_datalist",
    "write_datalist",
    "AcdcLayout",
    "choose_labeled",
    "LabeledChoice",
    "normalize_intensity",
    "NORMALIZATION_MODES",
    "resize_slices",
    "detect_format",
    "default_demo_dir",
    "validation_fingerprint",
]
