"""scripts/prepare_covid_semiseg.py on a fake mini copy of the COVID-SemiSeg layout (and the real folder when
present): the split, the test pairs, and that the data set loads through build_splits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vqseg_bundle.data import DataIntegrityError, build_splits
from vqseg_bundle.data.covid_semiseg import covid_label_mapping, prepare_covid_semiseg
from vqseg_bundle.data.png_phantoms import make_png_slice

ROOT = Path(__file__).resolve().parents[2]
COVID_DIR = ROOT.parent / "shared" / "data" / "covid_semiseg"


def make_fake_covid(root: Path, labeled: int = 8, unlabeled: int = 3, test: int = 3) -> Path:
    """The shared folder's layout in miniature: JPEG images, 0 / 255 PNG masks, 0 / 1 / 2 multiclass masks."""
    rng = np.random.default_rng(0)
    plan = [
        ("train/labeled", range(labeled), 255),
        ("test", range(100, 100 + test), 255),
        ("multiclass/train", range(labeled), 1),
        ("multiclass/test", range(100, 100 + test), 1),
    ]
    for folder, numbers, value in plan:
        (root / folder / "images").mkdir(parents=True, exist_ok=True)
        (root / folder / "masks").mkdir(parents=True, exist_ok=True)
        for n in numbers:
            image, mask = make_png_slice((30 + n % 3, 34), rng)
            Image.fromarray(image).save(root / folder / "images" / f"{n}.jpg")
            Image.fromarray((mask // 255 * value).astype(np.uint8)).save(root / folder / "masks" / f"{n}.png")
    (root / "train/unlabeled/images").mkdir(parents=True)
    for k in range(unlabeled):
        image, _ = make_png_slice((28, 30), rng)
        Image.fromarray(image).save(root / "train/unlabeled/images" / f"Data-1_coronacases_org_001_{k}.jpg")
    return root


def test_split_and_lists(tmp_path):
    src = make_fake_covid(tmp_path / "src")
    path = prepare_covid_semiseg(src, tmp_path / "out", val_count=2, seed=0)
    data = json.loads(path.read_text())
    assert (len(data["training"]), len(data["validation"]), len(data["unlabeled"]), len(data["test"])) == (6, 2, 3, 3)
    names = {Path(e["image"]).name for e in data["training"] + data["validation"]}
    assert names == {f"{n}.jpg" for n in range(8)}  # every labeled slice once
    assert all(Path(e["label"]).parent.name == "masks" for e in data["test"])
    assert data["label_mapping"] == {"0": 0, "255": 1} and "default_rng(0)" in data["split"]
    # the same seed gives the same split; another seed another one
    again = json.loads(prepare_covid_semiseg(src, tmp_path / "again", val_count=2, seed=0).read_text())
    other = json.loads(prepare_covid_semiseg(src, tmp_path / "other", val_count=2, seed=1).read_text())
    val = [Path(e["image"]).name for e in data["validation"]]
    assert val == [Path(e["image"]).name for e in again["validation"]]
    assert val != [Path(e["image"]).name for e in other["validation"]]


def test_loads_binary_and_multiclass(tmp_path):
    src = make_fake_covid(tmp_path / "src")
    prepare_covid_semiseg(src, tmp_path / "bin", val_count=2)
    splits = build_splits(
        tmp_path / "bin", labeled="all", image_size=(16, 16), num_classes=2, label_mapping=covid_label_mapping()
    )
    assert len(splits.labeled) == 6 and len(splits.unlabeled) == 3 and len(splits.validation) == 2
    test = build_splits(
        tmp_path / "bin",
        labeled="all",
        image_size=(16, 16),
        num_classes=2,
        label_mapping=covid_label_mapping(),
        validation_split="test",
    )
    assert [v["name"] for v in test.validation] == ["100", "101", "102"]
    prepare_covid_semiseg(src, tmp_path / "multi", multiclass=True, val_count=2)
    multi = build_splits(
        tmp_path / "multi", labeled="all", image_size=(16, 16), num_classes=3, label_mapping=covid_label_mapping(True)
    )
    assert set(multi.labeled.labels.unique().tolist()) == {0, 1}


def test_missing_mask_is_named(tmp_path):
    src = make_fake_covid(tmp_path / "src")
    (src / "test" / "masks" / "101.png").unlink()
    with pytest.raises(DataIntegrityError, match=r"test/masks/101.png: missing mask of .*test/images/101.jpg"):
        prepare_covid_semiseg(src, tmp_path / "out", val_count=2)
    with pytest.raises(ValueError, match="val_count"):
        prepare_covid_semiseg(src, tmp_path / "out", val_count=8)


def test_script_command_line(tmp_path):
    src = make_fake_covid(tmp_path / "src")
    cmd = [sys.executable, str(ROOT / "scripts" / "prepare_covid_semiseg.py"), "--source", str(src)]
    out = subprocess.run(cmd + ["--output", str(tmp_path / "o"), "--val_count", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(json.loads((tmp_path / "o" / "dataset.json").read_text())["validation"]) == 3


@pytest.mark.skipif(not COVID_DIR.is_dir(), reason="the shared COVID-SemiSeg folder is absent")
def test_real_folder_counts(tmp_path):
    data = json.loads(prepare_covid_semiseg(COVID_DIR, tmp_path / "covid").read_text())
    counts = [len(data[k]) for k in ("training", "validation", "unlabeled", "test")]
    assert counts == [40, 10, 1600, 48]
    base = tmp_path / "covid"
    assert all((base / e["label"]).resolve().is_file() for e in data["test"])
