"""Issue 23 item 5: the tests never depend on the user's working tree. After the README's first command (the demo
training writes models/model.pt + model.json: 64 px, codebook 512) its second command (the tests) failed two
tests, which read the checkout's models/. Here both run against a bundle root, and from a working directory, whose
models/ holds such a model of another size and network: they must pass all the same."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import inference_helpers
import test_inference_bundle
import test_inference_export
from inference_helpers import BUNDLE_ROOT
from monai.bundle import ConfigComponent
from vqseg_bundle.engines import BestModelSaver, network_arguments

#: a model of the kind the README's demo training writes, with other network keys than the tests use
TRAINED_NET = {
    "_target_": "vqseg_bundle.networks.VQSegUNet",
    "features": [4, 8, 16, 32],
    "vq_levels": ["bottleneck"],
    "codebook_size": 512,
    "reconstruction": False,
}


def _bundle_with_a_trained_model(root):
    shutil.copytree(BUNDLE_ROOT / "configs", root / "configs")
    net = ConfigComponent(dict(TRAINED_NET)).instantiate().eval()
    settings = {"image_size": 64, "in_channels": 1, "num_classes": 4, "network_def": network_arguments(TRAINED_NET)}
    saver = BestModelSaver(root / "models", net, settings=settings)
    saver(
        SimpleNamespace(
            state=SimpleNamespace(metrics={"val_mean_dice": 0.93}, epoch=5, key_metric_name="val_mean_dice")
        )
    )
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model.json").is_file()
    return root


def test_inference_tests_ignore_the_working_tree_model(scans, tmp_path, monkeypatch):
    root = _bundle_with_a_trained_model(tmp_path / "bundle")
    monkeypatch.chdir(root)  # "." is the bundle root of a config read without one
    for module in (inference_helpers, test_inference_bundle, test_inference_export):
        monkeypatch.setattr(module, "BUNDLE_ROOT", root)
        monkeypatch.setattr(module, "INFERENCE_CONFIG", root / "configs" / "inference.yaml")
    monkeypatch.setattr(test_inference_export, "META", root / "configs" / "metadata.json")
    (tmp_path / "a").mkdir()
    test_inference_bundle.test_real_network_config_unchanged(scans, tmp_path / "a")
    (tmp_path / "b").mkdir()
    test_inference_export.test_verify_net_in_out(tmp_path / "b")
    # and neither test wrote into that models/
    assert sorted(p.name for p in (root / "models").iterdir()) == ["model.json", "model.pt"]
