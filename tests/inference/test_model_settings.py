"""Issue 14 item 1: the model carries its settings (models/model.json beside models/model.pt), and inference,
evaluation and both exports read them; a contradicting override is an error naming the key, both values
and the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from inference_helpers import BUNDLE_ROOT, INFERENCE_CONFIG
from monai.bundle import ConfigParser
from vqseg_bundle.engines import BestModelSaver, network_arguments
from vqseg_bundle.inferers import read_model_record, resolve_model_settings, settings_path

TRAIN = BUNDLE_ROOT / "configs" / "train.yaml"
EVALUATE = BUNDLE_ROOT / "configs" / "evaluate.yaml"
#: a network other than the config defaults in every key that changes the weights
NET = {
    "_target_": "vqseg_bundle.networks.VQSegUNet",
    "features": [4, 8, 16, 32],
    "codebook_size": 24,
    "vq_levels": ["bottleneck"],
    "reconstruction": True,
    "recon_input": "quantized",
}


def _model(folder: Path, image_size: int = 48) -> tuple[torch.nn.Module, Path]:
    """A model written by the training saver, with the settings train.yaml records."""
    from types import SimpleNamespace

    from monai.bundle import ConfigComponent

    net = ConfigComponent(dict(NET)).instantiate().eval()
    settings = {
        "image_size": image_size,
        "in_channels": 1,
        "num_classes": 4,
        "class_names": ["RV", "Myo", "LV"],
        "network_def": network_arguments(NET),
    }
    saver = BestModelSaver(folder, net, settings=settings)
    saver(
        SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": 0.5}, epoch=1, key_metric_name="val_mean_dice"))
    )
    return net, folder / "model.pt"


def _inference_parser(ckpt: Path, **override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update({"bundle_root": str(BUNDLE_ROOT), "ckpt_path": str(ckpt), **override})
    return parser


def test_inference_config_builds_the_recorded_network(tmp_path):
    net, ckpt = _model(tmp_path)
    assert settings_path(ckpt) == tmp_path / "model.json"
    parser = _inference_parser(ckpt)
    built = parser.get_parsed_content("network_def")
    assert type(built) is type(net)
    built.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)  # the same keys and shapes
    assert parser.get_parsed_content("slice_inferer").roi_size == (48, 48)
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(built.eval()(x), net(x))
    # an override that agrees with the model is fine
    assert (
        _inference_parser(ckpt, codebook_size=24, image_size=48).get_parsed_content("model_settings")["image_size"]
        == 48
    )


@pytest.mark.parametrize(
    "key,value,model", [("image_size", 256, 48), ("codebook_size", 16384, 24), ("vq_levels", [], ["bottleneck"])]
)
def test_contradicting_override_names_key_values_and_file(tmp_path, key, value, model):
    _, ckpt = _model(tmp_path)
    with pytest.raises(Exception) as err:
        _inference_parser(ckpt, **{key: value}).get_parsed_content("network_def")
    e = err.value
    while e.__cause__ is not None:
        e = e.__cause__
    assert isinstance(e, ValueError)
    message = str(e)
    assert message.startswith(f"{key}:") and repr(value) in message and repr(model) in message
    assert str(tmp_path / "model.json") in message


def test_model_without_settings_uses_config_values(tmp_path):
    parser = _inference_parser(tmp_path / "old_model.pt", codebook_size=16, image_size=32)
    net = parser.get_parsed_content("network_def")
    assert (
        net.state_dict()["seg_decoder.head.weight"].shape[0] == 4
        if "seg_decoder.head.weight" in net.state_dict()
        else True
    )
    assert parser.get_parsed_content("model_settings")["settings_file"] is None
    assert parser.get_parsed_content("slice_inferer").roi_size == (32, 32)


def test_replaced_weights_without_their_settings_are_detected(tmp_path):
    _, ckpt = _model(tmp_path)
    torch.save({"w": torch.zeros(1)}, ckpt)  # copied over, the .json left from another model
    with pytest.raises(ValueError, match="does not describe"):
        read_model_record(ckpt)
    with pytest.raises(ValueError, match="model.json"):
        resolve_model_settings(ckpt, {})


def test_onnx_export_uses_recorded_size(tmp_path):
    pytest.importorskip("onnxruntime")
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_onnx_script", BUNDLE_ROOT / "scripts" / "export_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, ckpt = _model(tmp_path, image_size=32)
    module.main(config_file=str(INFERENCE_CONFIG), ckpt_file=str(ckpt), output=str(tmp_path / "m.onnx"))
    import onnx

    dims = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][2:] == [32, 32]


@pytest.mark.slow
def test_round_trip_train_tiny_then_inference_and_evaluate(tmp_path):
    """Train a tiny run with overrides (64 px, codebook 32, other features); the settings file holds them; the
    inference config and evaluate.yaml build the same network with no override."""
    from monai.bundle import ConfigWorkflow

    sys.path.insert(0, str(BUNDLE_ROOT / "tests" / "bundle"))
    from bundle_helpers import TINY

    over = {**TINY, "epochs": 1, "bundle_root": str(tmp_path), "data_cache_dir": str(tmp_path / "demo")}
    wf = ConfigWorkflow(config_file=[str(TRAIN)], workflow_type="train", **over)
    wf.initialize()
    wf.run()
    wf.finalize()
    ckpt = tmp_path / "models" / "model.pt"
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    settings = record["settings"]
    assert settings["image_size"] == 64 and settings["class_names"] == ["RV", "Myo", "LV"]
    net = settings["network_def"]
    assert net["_target_"] == "vqseg_bundle.networks.VQSegUNet"
    assert net["codebook_size"] == 32 and net["features"] == [8, 16, 32, 64, 64]
    assert net["quantizer"] == ConfigParser.load_config_file(str(TRAIN))["quantizer"]  # train.yaml's default
    assert {"recon_input", "pfa_channels", "reconstruction", "in_channels", "num_classes"} <= set(net)
    assert record["metric"]["name"] == "val_mean_dice"
    state = torch.load(ckpt, weights_only=True)
    parser = _inference_parser(ckpt)
    parser.get_parsed_content("network_def").load_state_dict(state, strict=True)
    assert parser.get_parsed_content("slice_inferer").roi_size == (64, 64)
    # evaluate.yaml on train.yaml, no override: the recorded network and slice size
    ev = ConfigWorkflow(
        config_file=[str(TRAIN), str(EVALUATE)],
        workflow_type="eval",
        bundle_root=str(tmp_path),
        data_cache_dir=str(tmp_path / "demo"),
        num_threads=1,
        num_workers=0,
    )
    ev.initialize()
    ev.run()
    evaluator = ev.parser.get_parsed_content("validate#evaluator")
    assert evaluator.inferer.roi_size == (64, 64)
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(record["metric"]["value"], abs=1e-5)
    # an evaluate override that contradicts the model is an error naming it
    bad = ConfigWorkflow(
        config_file=[str(TRAIN), str(EVALUATE)],
        workflow_type="eval",
        bundle_root=str(tmp_path),
        data_cache_dir=str(tmp_path / "demo"),
        num_threads=1,
        num_workers=0,
        image_size=128,
    )
    bad.initialize()
    with pytest.raises(Exception) as err:
        bad.run()
    e = err.value
    while e.__cause__ is not None:
        e = e.__cause__
    assert "image_size" in str(e) and "128" in str(e) and "64" in str(e) and "model.json" in str(e)


def test_settings_of_version_0_3_rebuild_the_same_network():
    """A 0.3.0 record kept the VQ / QPM options as flat network arguments; they still rebuild the network (the
    quantizer options moved into ``quantizer``, the perturbation, which holds no weights, dropped)."""
    from vqseg_bundle.inferers import build_network

    old = {
        **NET,
        "commitment_beta": 0.5,
        "usage_entropy_weight": 0.1,
        "max_chunk_elements": 2**20,
        "perturbation": "qpm",
        "qpm_mode": "kernel",
        "qpm_eps": 0.7,
        "qpm_temperature": 1.0,
        "qpm_distance": "sqeuclidean",
        "dropout_rate": 0.5,
        "quantizer": {"codebook_type": "learnable"},
    }
    net = build_network({"network_def": old})
    current = build_network({"network_def": {**NET, "quantizer": {"codebook_type": "learnable"}}})
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {
        k: tuple(v.shape) for k, v in current.state_dict().items()
    }
    quantizer = net.quantizers["3"]
    assert quantizer.commitment_beta == 0.5 and quantizer.usage_entropy_weight == 0.1
    assert quantizer.codebook_type == "learnable" and net.perturbation == "none"


def test_record_holds_the_pass_through_options_flat_and_no_built_module():
    """network_arguments records the options a network passes through to _setup_vq as flat arguments with their
    defaults, and leaves out the built perturbation (no weights, training only)."""
    from vqseg_bundle.networks import VQSegUNet, build_perturbation

    config = {
        "_target_": "vqseg_bundle.networks.VQSegUNet",
        "features": [4, 8],
        "codebook_size": 8,
        "perturbation": build_perturbation("qpm"),
    }
    record = network_arguments(config)
    assert "perturbation" not in record and "vq_options" not in record
    assert record["codebook_size"] == 8 and record["vq_levels"] == ["bottleneck"] and record["codebook_seed"] == 0
    assert set(VQSegUNet.shared_arguments().parameters) - {"perturbation"} <= set(record)


# ---------------------------------------------------------------- issue 23 item 2: weights without their settings file
def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def test_weights_without_settings_are_never_run_at_a_guessed_size(tmp_path, scans):
    """models/model.pt copied without models/model.json was run at the 256 px default (demo Dice 0.930 -> 0.413,
    exit 0). Now the slice size, which the weights cannot give, must be passed: else an error names the missing
    settings file and the flag, before any input is read or any output written."""
    from monai.bundle import run
    from vqseg_bundle.inferers import ModelSettingsMissingError

    _, ckpt = _model(tmp_path, image_size=48)
    (tmp_path / "model.json").unlink()
    out = tmp_path / "out"
    with pytest.raises(Exception) as err:
        run(
            config_file=str(INFERENCE_CONFIG),
            bundle_root=str(BUNDLE_ROOT),
            dataset_dir=str(scans["nifti_dir"]),
            output_dir=str(out),
            ckpt_path=str(ckpt),
            quantizer={},
            quantize_paths="all",
            num_workers=0,
            logging_file=False,
        )
    e = _root_cause(err.value)
    assert isinstance(e, ModelSettingsMissingError)
    assert str(tmp_path / "model.json") in str(e) and str(ckpt) in str(e) and "--image_size" in str(e)
    assert not out.exists() or not any(out.iterdir())
    # the ONNX / torch.export export refuses too
    from vqseg_bundle.inferers.export import network_for_export

    with pytest.raises(ModelSettingsMissingError, match="--image_size"):
        network_for_export(str(INFERENCE_CONFIG), ckpt, override={"quantizer": {}, "quantize_paths": "all"})


def test_quantized_weights_without_settings_need_the_quantizer_flag(tmp_path):
    """The quantized levels' lookup options (cosine, ...) leave no trace in the weights: --quantizer must be given."""
    _, ckpt = _model(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(Exception) as err:
        _inference_parser(ckpt, image_size=48).get_parsed_content("network_def")
    message = str(_root_cause(err.value))
    assert "--quantizer" in message and "model.json" in message and "simvq" in message
    assert "--quantize_paths" in message
    # --quantizer alone is not enough: the weights do not say whether inference reads the codes
    with pytest.raises(Exception) as err:
        _inference_parser(ckpt, image_size=48, quantizer={}).get_parsed_content("network_def")
    assert "--quantize_paths" in str(_root_cause(err.value))


def test_network_keys_are_read_from_weights_without_settings(tmp_path):
    """What the state dict determines (features, classes, quantized levels, codebook size, reconstruction) is read
    from it; with --image_size (and --quantizer for a quantized model) the same network runs at that size."""
    net, ckpt = _model(tmp_path)
    (tmp_path / "model.json").unlink()
    parser = _inference_parser(ckpt, image_size=48, quantizer={}, quantize_paths="all")
    settings = parser.get_parsed_content("model_settings")
    assert settings["settings_file"] is None and settings["image_size"] == 48
    assert settings["features"] == NET["features"] and settings["codebook_size"] == 24
    assert settings["vq_levels"] == [3] and settings["reconstruction"] is True
    assert {"features", "codebook_size", "vq_levels", "reconstruction"} <= set(settings["read_from_weights"])
    built = parser.get_parsed_content("network_def").eval()
    built.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    assert parser.get_parsed_content("slice_inferer").roi_size == (48, 48)
    x = torch.rand(1, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(built(x), net(x))


def test_unet_arguments_of_a_guarded_quantizer_and_other_state_dicts():
    from vqseg_bundle.inferers import unet_arguments_of
    from vqseg_bundle.networks import VQSegUNet

    guarded = VQSegUNet(
        num_classes=3,
        features=[4, 8, 16],
        vq_levels=[1, 2],
        codebook_size=[8, 16],
        reconstruction=False,
        pfa_channels=5,
        quantizer={"codebook_type": "learnable", "codebook_dim": 6, "cosine": True},
    )
    args = unet_arguments_of(guarded.state_dict())
    assert args["features"] == [4, 8, 16] and args["num_classes"] == 3 and args["in_channels"] == 1
    assert args["vq_levels"] == [1, 2] and args["codebook_size"] == [8, 16] and args["pfa_channels"] == 5
    assert args["reconstruction"] is False
    assert args["_codebook"] == {"codebook_type": "learnable", "codebook_dim": 6}
    assert unet_arguments_of(torch.nn.Conv2d(1, 4, 1).state_dict()) == {}


def test_record_of_qpm_as_a_perturbation_only_rebuilds_a_continuous_network():
    """A model trained with quantize_paths "perturbed" keeps its codebooks in the weights, but the rebuilt network
    (no perturbation) never quantizes: the same values as the plain U-Net of the same weights."""
    from vqseg_bundle.inferers import build_network

    record = {**NET, "vq_levels": "all", "quantize_paths": "perturbed", "qpm_substitution": "shift"}
    net = build_network({"network_def": record}).eval()
    assert net.quantize_paths == "perturbed" and net.inference_quantizers() == {} and len(net.quantizers) == 4
    plain = build_network({"network_def": {**NET, "vq_levels": [], "recon_input": "all"}}).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("quantizers.")})
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
