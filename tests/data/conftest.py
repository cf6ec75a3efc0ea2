"""Small generated datasets for the data tests: a tiny ACDC copy (SSL4MIS HDF5 layout), tiny NIfTI sets."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

#: The real ACDC copy (tests using it are marked ``acdc`` and skip when it is absent).
ACDC_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "acdc"


def make_tiny_acdc(
    root: Path,
    train_patients: tuple[int, ...] = (9, 3, 7, 1, 5),
    val_patients: tuple[int, ...] = (20, 21),
    slices: int = 3,
    shape: tuple[int, int] = (20, 24),
    seed: int = 0,
) -> Path:
    """Write an SSL4MIS-layout ACDC copy: 2 frames per patient, ``slices`` slices per frame,
    min-max normalised per volume.

    The training list holds the patients in the given (non-sorted) order with slices shuffled within
    each volume, like the real ``train_slices.list``; ``labeled_2_cases.list`` lists the first two
    patients. Validation volumes are ``(D, H, W)`` with ``D = slices + 1``.
    """
    rng = np.random.default_rng(seed)
    (root / "data" / "slices").mkdir(parents=True, exist_ok=True)
    names = []
    for i, pid in enumerate(train_patients):
        for frame in (1, 2):
            h, w = shape if i % 2 == 0 else shape[::-1]  # volumes of different in-plane shapes
            volume = rng.normal(100.0 * (i + 1), 10.0, size=(slices, h, w)).astype(np.float32)
            volume = (volume - volume.min()) / (volume.max() - volume.min())
            labels = rng.integers(0, 4, size=(slices, h, w)).astype(np.uint8)
            order = rng.permutation(slices) + 1
            for z in order:
                name = f"patient{pid:03d}_frame{frame:02d}_slice_{z}"
                with h5py.File(root / "data" / "slices" / f"{name}.h5", "w") as f:
                    f["image"] = volume[z - 1]
                    f["label"] = labels[z - 1]
                names.append(name)
    (root / "train_slices.list").write_text("\n".join(names) + "\n")
    first_two = {f"patient{p:03d}" for p in train_patients[:2]}
    (root / "labeled_2_cases.list").write_text("\n".join(n for n in names if n.split("_")[0] in first_two) + "\n")
    val = []
    for pid in val_patients:
        for frame in (1, 2):
            name = f"patient{pid:03d}_frame{frame:02d}"
            image = rng.random((slices + 1, *shape), dtype=np.float32)
            label = rng.integers(0, 4, size=image.shape).astype(np.uint8)
            with h5py.File(root / "data" / f"{name}.h5", "w") as f:
                f["image"] = image
                f["label"] = label
            val.append(name)
    (root / "val.list").write_text("\n".join(val) + "\n")
    return root


def to_canonical(array: np.ndarray, affine: np.ndarray | None = None, axcodes: str = "PLS") -> np.ndarray:
    """``array`` (file voxel order, ``affine`` default identity) in the bundle's canonical orientation,
    computed with nibabel's orientation functions (independently of the MONAI transform the bundle uses)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    n = array.ndim
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    nd = np.eye(n + 1)
    nd[:n, :n], nd[:n, n] = affine[:n, :n], affine[:n, 3]
    return apply_orientation(array, ornt_transform(io_orientation(nd), axcodes2ornt(axcodes[:n])))


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)


def make_nifti_dataset(
    root: Path,
    training: int = 2,
    unlabeled: int = 2,
    validation: int = 1,
    shape: tuple[int, int, int] = (16, 12, 5),
    seed: int = 0,
    unlabeled_as_strings: bool = False,
) -> Path:
    """Write a Decathlon-style dataset of random volumes (labels 0..3) and return ``root``.

    Patients are ``case00`` ... ; unlabeled images get no label file.
    """
    rng = np.random.default_rng(seed)
    data: dict[str, list] = {"training": [], "unlabeled": [], "validation": [], "test": []}
    index = 0
    for key, count, with_label in (
        ("training", training, True),
        ("unlabeled", unlabeled, False),
        ("validation", validation, True),
    ):
        for _ in range(count):
            name = f"case{index:02d}_frame01.nii.gz"
            image = (rng.random(shape) * 500 + 50 * index).astype(np.float32)
            save_nifti(root / f"images_{key}" / name, image)
            entry = {"image": f"images_{key}/{name}"}
            if with_label:
                save_nifti(root / f"labels_{key}" / name, rng.integers(0, 4, size=shape).astype(np.uint8))
                entry["label"] = f"labels_{key}/{name}"
            data[key].append(entry["image"] if key == "unlabeled" and unlabeled_as_strings else entry)
            index += 1
    (root / "dataset.json").write_text(json.dumps(data, indent=2))
    return root


@pytest.fixture
def tiny_acdc(tmp_path: Path) -> Path:
    return make_tiny_acdc(tmp_path / "acdc")


@pytest.fixture
def nifti_dataset(tmp_path: Path) -> Path:
    return make_nifti_dataset(tmp_path / "nifti")


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vqseg_bundle.data.phantoms import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), 3, 4, 2, shape=(48, 40, 4), seed=1)


@pytest.fixture
def acdc_factory():
    """``make_tiny_acdc`` as a fixture, for tests that need non-default tiny ACDC copies."""
    return make_tiny_acdc


@pytest.fixture
def nifti_factory():
    """``make_nifti_dataset`` and ``save_nifti`` as a fixture."""
    return make_nifti_dataset


@pytest.fixture
def nifti_saver():
    return save_nifti


@pytest.fixture
def canonical():
    """:func:`to_canonical` as a fixture."""
    return to_canonical


@pytest.fixture(scope="session")
def acdc_dir() -> Path:
    if not (ACDC_DIR / "train_slices.list").exists():
        pytest.skip(f"{ACDC_DIR} not present")
    return ACDC_DIR
