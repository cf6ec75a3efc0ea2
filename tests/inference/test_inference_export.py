"""Export round trips of the inference network: TorchScript through ``monai.bundle ckpt_export``
(traced: VQSegUNet is not scriptable), ONNX through scripts/export_onnx.py, and verify_net_in_out."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from inference_helpers import BUNDLE_ROOT, INFERENCE_CONFIG, ORACLE_DEF
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

META = BUNDLE_ROOT / "configs" / "metadata.json"
SMALL = {"codebook_size": 16, "image_size": 32}  # a small codebook and slice size keep the test fast


def load_script():
    spec = importlib.util.spec_from_file_location("export_onnx_script", BUNDLE_ROOT / "scripts" / "export_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vq_weights(tmp_path_factory):
    """Random VQSegUNet weights built from configs/inference.yaml's network_def."""
    path = tmp_path_factory.mktemp("vq") / "model.pt"
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update({**SMALL, "ckpt_path": str(path)})  # not the checkout's models/model.pt and its settings
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), path)
    return net, path


def test_onnx_script_round_trip_vqseg_unet(vq_weights, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    net, ckpt = vq_weights
    load_script().main(config_file=str(INFERENCE_CONFIG), ckpt_file=str(ckpt), output=str(tmp_path / "m.onnx"), **SMALL)
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.startswith("Exported the network of") and "ONNX Runtime matches PyTorch" in said and said.endswith(".")
    # independent check with a batch size the export did not see
    sess = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 32, 32)
    out = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), net(x), atol=1e-4, rtol=1e-4)


def test_script_exports_a_torch_export_program(vq_weights, tmp_path, capsys):
    net, ckpt = vq_weights
    load_script().main(
        config_file=str(INFERENCE_CONFIG), ckpt_file=str(ckpt), output=str(tmp_path / "m.pt2"), format="pt2", **SMALL
    )
    assert "torch.export program matches PyTorch" in capsys.readouterr().out
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program(x), net(x))
    with pytest.raises(SystemExit, match="--format"):
        load_script().main(config_file=str(INFERENCE_CONFIG), ckpt_file=str(ckpt), format="tflite", **SMALL)


def test_onnx_script_rejects_wrong_weights(tmp_path):
    torch.save(torch.nn.Conv2d(1, 3, 1).state_dict(), tmp_path / "k3.pt")
    with pytest.raises(ValueError, match="k3.pt"):
        load_script().main(
            config_file=str(INFERENCE_CONFIG),
            ckpt_file=str(tmp_path / "k3.pt"),
            output=str(tmp_path / "m.onnx"),
            network_def=dict(ORACLE_DEF),
            image_size=8,
        )


def test_torchscript_ckpt_export_vqseg_unet(vq_weights, tmp_path):
    net, ckpt = vq_weights
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt),
        meta_file=str(META),
        config_file=str(INFERENCE_CONFIG),
        use_trace=True,
        input_shape=[1, 1, 32, 32],
        ckpt_path=str(ckpt),
        **SMALL,
    )
    ts = torch.jit.load(str(ts_path))
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), net(x))


def test_torchscript_ckpt_export_scripted_stand_in(tmp_path):
    """ckpt_export's default (torch.jit.script) path, with a scriptable stand-in network."""
    src = torch.nn.Conv2d(1, 4, 1)
    torch.save(src.state_dict(), tmp_path / "conv.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "conv.ts"),
        ckpt_file=str(tmp_path / "conv.pt"),
        meta_file=str(META),
        config_file=str(INFERENCE_CONFIG),
        network_def=dict(ORACLE_DEF),
    )
    x = torch.rand(2, 1, 9, 7)
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "conv.ts"))(x), src(x))


@pytest.mark.skipif(
    "network_data_format" not in json.loads(META.read_text()) if META.exists() else True,
    reason="configs/metadata.json without network_data_format",
)
def test_verify_net_in_out(tmp_path):
    """MONAI's check of configs/inference.yaml's network_def, with a bundle root of its own (never the checkout's
    models/, which may hold a model of another size trained by the README's first command)."""
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(META),
        config_file=str(INFERENCE_CONFIG),
        bundle_root=str(tmp_path),
        codebook_size=16,
    )
