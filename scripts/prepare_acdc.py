"""Convert ACDC in the SSL4MIS HDF5 layout into NIfTI volumes plus a Decathlon-style dataset.json.

Training slices are regrouped into one volume per patient and frame (slice order); the labeled
patients' volumes go to "training" (image + label), the others to "unlabeled" (image only), the
20 validation volumes to "validation". The labeled subset is chosen by patient, never by slice:
the first N patients of train_slices.list (or the benchmark's list file), or N patients drawn with
a seed. The files are written as the ACDC challenge distributes its NIfTI: the HDF5 arrays are
SimpleITK's GetArrayFromImage of the challenge files, (Z, Y, X), so each NIfTI holds their transpose,
(X, Y, Z) as nibabel reads it, with the challenge's affine signs diag(-1, -1, 1). The HDF5 copy stores
no voxel spacing, so the spacing is 1 (voxel units).

Examples:
    python scripts/prepare_acdc.py --src ../shared/data/acdc --dst data_cache/acdc_nifti
    python scripts/prepare_acdc.py --src ../shared/data/acdc --dst data_cache/acdc_5p --labeled 5 --seed 0
    python -m monai.bundle run training --config_file configs/train.yaml \
        --dataset_dir data_cache/acdc_nifti --labeled all

"training" holds exactly the labeled patients, so train with --labeled all (a smaller N or
"labeled_N_cases" would take the first N of them and move the rest to the unlabeled set).

The output loads through vqseg_bundle.data.build_splits and, both readers reorienting to the bundle's
canonical orientation (docs/README.md, "Orientation"), gives arrays identical to the HDF5 reader.
"""

from __future__ import annotations

import fire
from vqseg_bundle.benchmarks.commands import as_flag
from vqseg_bundle.data.convert import convert_acdc_to_nifti


def main(
    src: str = "../shared/data/acdc",
    dst: str = "data_cache/acdc_nifti",
    labeled: str | int = "labeled_3_cases",
    seed: int | None = None,
    compress: bool = True,
    overwrite: bool = False,
) -> None:
    """Write ``dst`` (NIfTI volumes + dataset.json) from the ACDC HDF5 copy ``src``.

    Args:
        src: ACDC folder in the SSL4MIS layout (train_slices.list, val.list, data/...).
        dst: output folder.
        labeled: "labeled_3_cases" / "labeled_7_cases" (the benchmark's lists), a number of patients,
            or "all".
        seed: None takes patients in list order; an int draws them reproducibly with that seed.
        compress: write .nii.gz (True) or .nii (False, faster, larger).
        overwrite: replace an existing dataset.json in dst.
    """
    compress, overwrite = as_flag(compress, "compress"), as_flag(overwrite, "overwrite")
    out = convert_acdc_to_nifti(src, dst, labeled=labeled, seed=seed, compress=compress, overwrite=overwrite)
    print(f"wrote {out / 'dataset.json'}")


if __name__ == "__main__":
    fire.Fire(main)
