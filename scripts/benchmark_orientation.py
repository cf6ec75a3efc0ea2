"""One trained model, the ACDC validation volumes in two forms: the HDF5 copy and challenge-style NIfTI.

The ACDC challenge distributes NIfTI files whose array, as nibabel reads it, is ``(X, Y, Z)`` with
a negative-diagonal affine (``diag(-sx, -sy, sz)``: what ITK writes for an identity direction), and
the SSL4MIS HDF5 copy stores ``SimpleITK.GetArrayFromImage`` of those files, ``(Z, Y, X)``. This
script writes every validation volume ``data/<name>.h5`` back in the challenge's form
(``image.transpose(2, 1, 0)``, affine ``diag(-1, -1, 1)``: the HDF5 copy stores no spacing) into
``<work_dir>/nifti`` with a ``dataset.json`` (one training volume as its ``"training"`` entry, the
20 validation volumes), then runs the bundle's evaluation (``configs/train.yaml`` +
``configs/evaluate.yaml``) of one model on both forms and prints / writes both mean Dice values.

The writer here is deliberately independent of ``vqseg_bundle.data.convert`` (the code under test).

Examples:
    python scripts/benchmark_orientation.py
    python scripts/benchmark_orientation.py --run_json results/acdc_cpu_peer/labeled3/labeled_only/run.json \
        --ckpt_path outputs/benchmark/cpu_peer/labeled3/labeled_only/models/model.pt

The model's network and protocol settings (``--image_size``, ``--vq_levels``, ...) are taken from the
evaluation command recorded in the benchmark run's ``run.json``; only the data paths, the labeled
subset and the output folder are replaced.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import fire
import h5py
import nibabel as nib
import numpy as np
from vqseg_bundle.data.acdc_layout import AcdcLayout

REPO = Path(__file__).resolve().parents[1]
#: what nibabel reads from an ACDC challenge file (and from an ITK-written identity-direction image)
CHALLENGE_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
#: flags of the recorded evaluation command that this script replaces
_REPLACED = ("--dataset_dir", "--labeled", "--output_dir", "--bundle_root", "--ckpt_path", "--data_cache_dir")


def write_challenge_nifti(dataset_dir: Path, out_dir: Path) -> Path:
    """Write ACDC's validation volumes (and one training volume) as the challenge distributes them.

    Returns:
        ``out_dir`` with ``imagesTr``, ``labelsTr``, ``imagesVal``, ``labelsVal`` and ``dataset.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("imagesTr", "labelsTr", "imagesVal", "labelsVal"):
        (out_dir / sub).mkdir(exist_ok=True)

    def save(array_zyx: np.ndarray, path: Path, dtype: type) -> None:
        array = np.ascontiguousarray(array_zyx.transpose(2, 1, 0)).astype(dtype)
        img = nib.Nifti1Image(array, CHALLENGE_AFFINE)
        img.header.set_xyzt_units("mm")
        nib.save(img, path)

    layout = AcdcLayout(dataset_dir)
    train_names, val_names = layout.read_names()
    validation = []
    for name in val_names:
        with h5py.File(layout.volume_path(name), "r") as f:
            image, label = f["image"][()], f["label"][()]
        save(image, out_dir / "imagesVal" / f"{name}.nii.gz", np.float32)
        save(label, out_dir / "labelsVal" / f"{name}.nii.gz", np.uint8)
        validation.append({"image": f"imagesVal/{name}.nii.gz", "label": f"labelsVal/{name}.nii.gz"})

    # build_splits needs one labeled training volume: the first training patient's first frame
    key = train_names[0].rsplit("_slice_", 1)[0]
    members = sorted(
        (n for n in train_names if n.rsplit("_slice_", 1)[0] == key), key=lambda n: int(n.rsplit("_", 1)[1])
    )
    images, labels = [], []
    for n in members:
        with h5py.File(layout.slice_path(n), "r") as f:
            images.append(f["image"][()])
            labels.append(f["label"][()])
    save(np.stack(images), out_dir / "imagesTr" / f"{key}.nii.gz", np.float32)
    save(np.stack(labels), out_dir / "labelsTr" / f"{key}.nii.gz", np.uint8)
    data = {
        "name": "ACDC validation volumes, challenge-style NIfTI (benchmark_orientation.py)",
        "training": [{"image": f"imagesTr/{key}.nii.gz", "label": f"labelsTr/{key}.nii.gz"}],
        "validation": validation,
    }
    (out_dir / "dataset.json").write_text(json.dumps(data, indent=2))
    return out_dir


def _strip(tokens: list[str]) -> list[str]:
    """The recorded command's arguments after ``run``, without the flags this script replaces."""
    args = tokens[tokens.index("run") + 1 :]
    out, i = [], 0
    while i < len(args):
        if args[i] in _REPLACED:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


def mean_dice(summary_csv: Path) -> dict[str, float]:
    """Per-class and mean Dice (%) from ``metrics_summary.csv``."""
    with open(summary_csv, newline="") as f:
        return {row["class_name"]: 100.0 * float(row["dice_mean"]) for row in csv.DictReader(f)}


def evaluate(base_args: list[str], dataset_dir: Path, labeled: str, out_dir: Path, ckpt: Path, log: Path) -> dict:
    """One run of the bundle's evaluation; its command, Dice per class (%) and wall time."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        *base_args,
        "--bundle_root",
        str(REPO),
        "--dataset_dir",
        str(dataset_dir),
        "--labeled",
        labeled,
        "--output_dir",
        str(out_dir),
        "--data_cache_dir",
        str(out_dir / "demo_cache"),
        "--ckpt_path",
        str(ckpt),
    ]
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
    if res.returncode != 0:
        raise RuntimeError(f"evaluation failed (exit {res.returncode}); see {log}")
    return {
        "command": shlex.join(cmd),
        "dice": mean_dice(out_dir / "eval" / "metrics_summary.csv"),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(
    run_json: str = "results/acdc_cpu_peer/labeled3/unimatch/run.json",
    ckpt_path: str = "outputs/benchmark/cpu_peer/labeled3/unimatch/models/model.pt",
    dataset_dir: str = "../shared/data/acdc",
    work_dir: str = "outputs/orientation_benchmark",
    tag: str = "",
) -> dict:
    """Evaluate one model on the ACDC validation volumes as HDF5 and as challenge-style NIfTI.

    Args:
        run_json: a ``scripts/benchmark_acdc.py`` run record; its ``eval_command`` gives the network
            and protocol settings of the model.
        ckpt_path: the model's weights (``model.pt``).
        dataset_dir: the ACDC HDF5 copy (SSL4MIS layout).
        work_dir: where the NIfTI copy, the evaluation outputs and ``result<tag>.json`` go (keep it
            under the git-ignored ``outputs/``).
        tag: suffix of the result file and evaluation folders (e.g. ``_before``).

    Returns:
        The result record (also printed and written to ``<work_dir>/result<tag>.json``).
    """
    repo_path = lambda p: Path(p) if Path(p).is_absolute() else (REPO / p)  # noqa: E731
    record = json.loads(repo_path(run_json).read_text())
    base_args = _strip(shlex.split(record["eval_command"]))
    work, src, ckpt = repo_path(work_dir), repo_path(dataset_dir).resolve(), repo_path(ckpt_path).resolve()
    if not ckpt.is_file():
        raise FileNotFoundError(f"no model at {ckpt}")
    nifti_dir = write_challenge_nifti(src, work / "nifti")
    labeled = str(record.get("labeled", 3))
    h5_out, nii_out = work / f"eval_h5{tag}", work / f"eval_nifti{tag}"
    h5 = evaluate(base_args, src, f"labeled_{labeled}_cases", h5_out, ckpt, work / f"eval_h5{tag}.log")
    nii = evaluate(base_args, nifti_dir, "all", nii_out, ckpt, work / f"eval_nifti{tag}.log")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git.stdout.strip(),
        "run_json": str(run_json),
        "ckpt_path": str(ckpt_path),
        "hdf5": h5,
        "nifti": nii,
        "difference_points": round(nii["dice"]["mean"] - h5["dice"]["mean"], 2),
    }
    (work / f"result{tag}.json").write_text(json.dumps(result, indent=2))
    print(
        f"mean Dice (%) on the {dataset_dir} validation volumes: HDF5 {h5['dice']['mean']:.2f}, "
        f"challenge-style NIfTI {nii['dice']['mean']:.2f} (difference {result['difference_points']:+.2f})"
    )
    for form, res in (("HDF5", h5), ("NIfTI", nii)):
        print(f"  {form}: " + ", ".join(f"{k} {v:.1f}" for k, v in res["dice"].items()))
    return result


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)  # the summary is printed by main
