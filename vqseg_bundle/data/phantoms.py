"""Deterministic synthetic short-axis cardiac cine-MRI-like phantoms: the bundle's built-in demo dataset.

Each volume is ``(H, W, D)`` (slices along the last axis, base to apex) with labels
0 background, 1 right-ventricle blood pool (a crescent hugging the septum), 2 myocardium (a ring),
3 left-ventricle blood pool (a disk). Realism that matters for training code paths: a thorax
with dark lungs around the heart, structures shrinking towards the apex (the RV vanishes in the
last slices), per-slice drift of the heart centre, a smooth multiplicative bias field, slight
partial-volume blur, Rician noise, raw scanner-like int16 intensities (so normalisation matters),
and a few volumes with non-identity anisotropic affines (1.5 x 1.5 x 8 mm, 1.25 x 1.25 x 10 mm
rotated). The contrast is high enough for a small U-Net to learn it in a few hundred CPU iterations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.draw import disk, ellipse
from vqseg_bundle.data.datalist import write_datalist
from vqseg_bundle.fileio import atomic_write_with

__all__ = ["GENERATOR_VERSION", "LABEL_NAMES", "make_phantom_volume", "phantom_affine", "make_demo_dataset"]

#: Bumped whenever the generated content changes, so stale caches are regenerated.
GENERATOR_VERSION = 1
_SUBFOLDERS = ("imagesTr", "labelsTr", "imagesUnl", "imagesVal", "labelsVal")
LABEL_NAMES = {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"}

# Relative tissue intensities (bSSFP-like: bright blood, dark myocardium and lungs).
_AIR, _BODY, _LUNG, _MYO, _RV_BLOOD, _LV_BLOOD = 0.03, 0.38, 0.08, 0.18, 0.78, 0.9


def phantom_affine(index: int) -> np.ndarray:
    """Voxel-to-world affine of phantom ``index``: identity, or (every third / every third + 1) anisotropic.

    ``index % 3 == 1``: 1.5 x 1.5 x 8 mm spacing with an origin offset; ``index % 3 == 2``:
    1.25 x 1.25 x 10 mm rotated 15 degrees about the slice axis; otherwise the identity.
    """
    if index % 3 == 1:
        return np.array([[1.5, 0, 0, -96.0], [0, 1.5, 0, -96.0], [0, 0, 8.0, -32.0], [0, 0, 0, 1]])
    if index % 3 == 2:
        c, s = np.cos(np.pi / 12), np.sin(np.pi / 12)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        affine = np.eye(4)
        affine[:3, :3] = rot @ np.diag([1.25, 1.25, 10.0])
        affine[:3, 3] = [-80.0, -80.0, -40.0]
        return affine
    return np.eye(4)


def make_phantom_volume(
    shape: Sequence[int] = (128, 128, 8), rng: np.random.Generator | int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom.

    Args:
        shape: ``(H, W, D)``, ``H, W >= 32``, ``D >= 1``.
        rng: a numpy Generator or a seed.

    Returns:
        ``image`` int16 ``(H, W, D)`` (raw intensities, roughly 0..1500) and ``label`` uint8 ``(H, W, D)``
        with values in ``{0, 1, 2, 3}``.
    """
    if len(shape) != 3 or shape[0] < 32 or shape[1] < 32 or shape[2] < 1:
        raise ValueError(f"shape must be (H, W, D) with H, W >= 32 and D >= 1, got {tuple(shape)}")
    rng = np.random.default_rng(rng)
    h, w, d = (int(s) for s in shape)
    scale = min(h, w) / 128.0
    image = np.empty((h, w, d), dtype=np.float32)
    label = np.zeros((h, w, d), dtype=np.uint8)

    # per-volume anatomy
    body_c = (h / 2 + rng.uniform(-3, 3) * scale, w / 2 + rng.uniform(-3, 3) * scale)
    body_r = (h * rng.uniform(0.36, 0.42), w * rng.uniform(0.42, 0.47))
    heart_c = np.array([h * 0.52 + rng.uniform(-5, 5) * scale, w * 0.54 + rng.uniform(-4, 4) * scale])
    lv_r0 = rng.uniform(12.0, 16.0) * scale
    myo_t = rng.uniform(4.0, 6.0) * scale
    rv_angle = rng.uniform(-np.pi / 6, np.pi / 6)  # direction of the RV from the LV centre (left of image +/- 30 deg)
    rv_stretch = rng.uniform(1.1, 1.4)
    gain = rng.uniform(700.0, 1300.0)
    sigma = rng.uniform(0.025, 0.045)
    bias = rng.uniform(-0.35, 0.35, size=5)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")

    for k in range(d):
        t = k / max(d - 1, 1)  # 0 base .. 1 apex
        centre = heart_c + rng.normal(0.0, 0.8 * scale, size=2)
        lv_r = lv_r0 * (1.0 - 0.45 * t**1.5) * rng.uniform(0.95, 1.05)
        out_r = lv_r + myo_t * rng.uniform(0.9, 1.1)
        intensity = np.full((h, w), _AIR, dtype=np.float32)
        lab = np.zeros((h, w), dtype=np.uint8)

        rr, cc = ellipse(body_c[0], body_c[1], body_r[0], body_r[1], shape=(h, w))
        intensity[rr, cc] = _BODY
        for side in (-1, 1):  # lungs on both sides of the heart
            rr, cc = ellipse(
                body_c[0] - 2 * scale,
                body_c[1] + side * body_r[1] * 0.66,
                body_r[0] * 0.62,
                body_r[1] * 0.26,
                shape=(h, w),
            )
            intensity[rr, cc] = _LUNG

        rv_scale = (1.0 - t) ** 0.7
        rv_a, rv_b = out_r * rv_stretch * rv_scale * 1.2, out_r * 0.75 * rv_scale
        if min(rv_a, rv_b) >= 2.5 * scale:
            offset = 0.85 * out_r + 0.25 * rv_b
            rv_c = centre + offset * np.array([np.sin(rv_angle), -np.cos(rv_angle)])
            rr, cc = ellipse(rv_c[0], rv_c[1], rv_a, rv_b, shape=(h, w), rotation=rv_angle)
            intensity[rr, cc], lab[rr, cc] = _RV_BLOOD, 1
        rr, cc = disk(tuple(centre), out_r, shape=(h, w))
        intensity[rr, cc], lab[rr, cc] = _MYO, 2
        rr, cc = disk(tuple(centre), lv_r, shape=(h, w))
        intensity[rr, cc], lab[rr, cc] = _LV_BLOOD, 3

        intensity = gaussian_filter(intensity, 0.7 * scale)  # partial-volume blur
        z = 2 * t - 1
        field = np.exp(bias[0] * xx + bias[1] * yy + bias[2] * xx * yy + bias[3] * (xx**2 - yy**2) + bias[4] * z * xx)
        clean = intensity * field
        noisy = np.sqrt((clean + rng.normal(0, sigma, (h, w))) ** 2 + rng.normal(0, sigma, (h, w)) ** 2)  # Rician
        image[..., k] = noisy
        label[..., k] = lab
    return np.clip(np.round(image * gain), 0, np.iinfo(np.int16).max).astype(np.int16), label


def _save_atomic(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    # write-then-rename so that concurrent generators (parallel test processes) never see half a file
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    atomic_write_with(path, lambda tmp: nib.save(img, tmp), suffix="".join(path.suffixes))


def _is_complete(out_dir: Path, params: dict) -> bool:
    json_path = out_dir / "dataset.json"
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    if data.get("generator") != params:
        return False
    files = [e["image"] for e in data.get("training", []) + data.get("validation", []) + data.get("unlabeled", [])]
    files += [e["label"] for e in data.get("training", []) + data.get("validation", [])]
    return all((out_dir / f).is_file() for f in files)


def make_demo_dataset(
    out_dir: str | os.PathLike,
    num_labeled: int = 4,
    num_unlabeled: int = 16,
    num_validation: int = 4,
    shape: Sequence[int] = (128, 128, 8),
    seed: int = 0,
) -> Path:
    """Write the demo dataset (NIfTI phantoms + Decathlon-style ``dataset.json``) into ``out_dir``.

    One phantom is one patient (``phantom_000`` ...): labeled volumes in ``imagesTr`` / ``labelsTr``,
    unlabeled volumes in ``imagesUnl`` (no label file is written), validation volumes in
    ``imagesVal`` / ``labelsVal``. ``"test"`` lists the validation images (inference demo input).
    Deterministic for given arguments; idempotent: a complete dataset made with the same
    arguments is returned without rewriting anything (checked through ``dataset.json``'s
    ``"generator"`` entry, written last).

    Args:
        out_dir: destination folder (created).
        num_labeled: labeled volumes (>= 1).
        num_unlabeled: unlabeled volumes (>= 0).
        num_validation: validation volumes (>= 1).
        shape: ``(H, W, D)`` of every volume.
        seed: base seed; volume ``i`` uses ``numpy.random.default_rng([seed, i])``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    for name, value, low in (
        ("num_labeled", num_labeled, 1),
        ("num_unlabeled", num_unlabeled, 0),
        ("num_validation", num_validation, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (H, W, D), got {shape}")
    out = Path(out_dir)
    params = {
        "name": "vqseg_bundle.data.phantoms",
        "version": GENERATOR_VERSION,
        "num_labeled": int(num_labeled),
        "num_unlabeled": int(num_unlabeled),
        "num_validation": int(num_validation),
        "shape": list(shape),
        "seed": int(seed),
    }
    if _is_complete(out, params):
        return out
    _refuse_foreign(out)
    for sub in _SUBFOLDERS:
        (out / sub).mkdir(parents=True, exist_ok=True)

    def write(index: int, image_dir: str, label_dir: str | None) -> dict[str, str]:
        image, label = make_phantom_volume(shape, np.random.default_rng([seed, index]))
        name = f"phantom_{index:03d}.nii.gz"
        affine = phantom_affine(index)
        _save_atomic(image, affine, out / image_dir / name)
        entry = {"image": f"{image_dir}/{name}"}
        if label_dir is not None:
            _save_atomic(label, affine, out / label_dir / name)
            entry["label"] = f"{label_dir}/{name}"
        return entry

    n_tr, n_un = int(num_labeled), int(num_unlabeled)
    training = [write(i, "imagesTr", "labelsTr") for i in range(n_tr)]
    unlabeled = [write(n_tr + i, "imagesUnl", None) for i in range(n_un)]
    validation = [write(n_tr + n_un + i, "imagesVal", "labelsVal") for i in range(int(num_validation))]
    header = {
        "name": "VQSegDemoPhantoms",
        "description": "Synthetic short-axis cardiac cine-MRI-like phantoms (RV / myocardium / LV), "
        "generated by vqseg_bundle.data.phantoms; no real patient data.",
        "licence": "Apache-2.0 (generated)",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": LABEL_NAMES,
    }
    test = [e["image"] for e in validation]
    write_datalist(out, header, training, unlabeled, validation, test, extra={"generator": params})
    # phantoms of an earlier, larger demo dataset in the same folder are no longer listed: remove them
    listed = {e["image"] for e in training + unlabeled + validation} | {e["label"] for e in training + validation}
    for sub in _SUBFOLDERS:
        for stale in (out / sub).glob("phantom_*.nii.gz"):
            if f"{sub}/{stale.name}" not in listed:
                stale.unlink(missing_ok=True)
    return out


def _refuse_foreign(out: Path) -> None:
    """Never overwrite a user's dataset: ``out`` must be new, empty, or an earlier demo dataset."""
    json_path = out / "dataset.json"
    if json_path.is_file():
        try:
            generator = json.loads(json_path.read_text()).get("generator", {})
        except (OSError, ValueError, AttributeError):
            generator = {}
        if not isinstance(generator, dict) or generator.get("name") != "vqseg_bundle.data.phantoms":
            raise ValueError(
                f"{out}: holds a dataset.json that was not made by make_demo_dataset; "
                "choose another folder for the demo data"
            )
