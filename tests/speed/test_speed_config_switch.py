"""configs/train.yaml: `augmentation_backend` selects the data path (both build the same trainer); the recipe keys
reach the trainer and its loss, and configs/recipe_paper.yaml restores the VQ-Seg paper's recipe in one layer."""

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


def _trainer(tmp_path, files):
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / f) for f in files])
    parser["bundle_root"] = str(ROOT)  # the demo data is generated once into <root>/.cache and shared
    parser["output_dir"] = str(tmp_path)
    for k, v in {**TINY, "epochs": 1, "iterations_per_epoch": 2}.items():
        parser[k] = v
    parser.parse(True)
    return parser, parser.get_parsed_content("train#trainer")


@pytest.mark.parametrize("files", [["train.yaml"], ["train.yaml", "recipe_paper.yaml"]])
def test_recipe_keys_reach_trainer_and_loss(files, tmp_path):
    parser, trainer = _trainer(tmp_path, files)
    loss = trainer.loss_function
    for key in ("pseudo_labeler", "perturbed_stream", "cutmix_partner", "strong_bn_stats"):
        assert getattr(trainer, key) == parser[key], key
    for key in ("sup_weight", "unsup_weight", "strong_weight", "fp_weight", "recon_weight", "vq_weight"):
        assert loss.weights[key] == pytest.approx(float(parser[key])), key
    assert loss.pseudo_label_loss.threshold == pytest.approx(parser["threshold"])
    assert loss.pseudo_label_loss.ce_weight == pytest.approx(parser["unsup_ce_weight"])
    assert loss.pseudo_label_loss.dice_weight == pytest.approx(parser["unsup_dice_weight"])
    if "recipe_paper.yaml" in files:  # the paper: EMA-teacher CE pseudo-labels, QPM on the strong views
        assert (trainer.pseudo_labeler, trainer.perturbed_stream, trainer.cutmix_partner) == (
            "teacher",
            "strong",
            "batch",
        )
        assert loss.pseudo_label_streams == ("strong",)
        assert (loss.pseudo_label_loss.ce_weight, loss.pseudo_label_loss.dice_weight) == (1.0, 0.0)
        assert trainer.network.perturbation == "qpm"
    trainer.run()  # two tiny epochs of the configured recipe on the demo data
    assert trainer.state.iteration > 0
