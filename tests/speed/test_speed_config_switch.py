"""configs/train.yaml: `augmentation_backend` selects the data path; both build the same trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.data import DataLoader

from vqseg_bundle.data.device_loader import DeviceBatchLoader

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "image_size": 32,
    "codebook_size": 32,
    "network_def#features": [4, 8, 16, 32, 32],
    "batch_size_labeled": 2,
    "batch_size_unlabeled": 2,
    "fm_name": "none",
    "num_workers": 0,
    "progress_bar": False,
}


@pytest.mark.parametrize("backend, kind", [("batched", DeviceBatchLoader), ("monai", DataLoader)])
def test_backend_switch_selects_the_loaders(backend, kind, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.yaml"))
    parser["bundle_root"] = str(ROOT)  # the demo data is generated once into <root>/.cache and shared
    parser["output_dir"] = str(tmp_path)
    for k, v in {**TINY, "augmentation_backend": backend}.items():
        parser[k] = v
    parser.parse(True)
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer.data_loader.loader, kind)
    assert isinstance(trainer.unlabeled_loader.loader, kind)
    batch = next(iter(trainer.unlabeled_loader))
    assert set(batch) >= {"image", "image_s1", "image_s2"} and tuple(batch["image"].shape) == (2, 1, 32, 32)
