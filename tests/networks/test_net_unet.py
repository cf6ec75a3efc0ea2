"""VQSegUNet: shapes, gradients, perturbation contract, dual branch, PFA, export."""

import io

import pytest
import torch
from vqseg_bundle.networks import QuantizedPerturbation, VQSegOutput, VQSegUNet, build_perturbation

SMALL = dict(features=(4, 8, 8, 16), dropout=0.0, codebook_size=32)


def _net(**kwargs):
    torch.manual_seed(0)
    return VQSegUNet(**(SMALL | {"perturbation": QuantizedPerturbation()} | kwargs))  # QPM unless told


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_default_size_matches_the_ssl4mis_unet():
    net = VQSegUNet(codebook_size=16)
    seg_path = sum(p.numel() for n, p in net.named_parameters() if n.startswith(("encoder", "seg_decoder")))
    assert 1.75e6 < seg_path < 1.85e6
    assert net.rec_decoder is not None and net.vq_levels == (4,)


@pytest.mark.parametrize("shape", [(2, 1, 33, 47), (1, 1, 16, 16), (3, 1, 40, 25)])
def test_shapes_for_odd_sizes(shape):
    net = _net(pfa_channels=5)
    x = torch.randn(*shape)
    out = net.forward_train(x, perturb=True, generator=_gen(), align_size=(3, 4))
    assert isinstance(out, VQSegOutput)
    b, _, h, w = shape
    assert out.seg_logits.shape == (b, 4, h, w)
    assert out.reconstruction.shape == (b, 1, h, w)
    assert out.aligned.shape == (b, 5, 3, 4)
    assert len(out.pre_vq) == len(out.post_vq) == len(out.indices) == 1
    assert out.pre_vq[0].shape == out.post_vq[0].shape == (b, 16, h // 8, w // 8)
    assert out.indices[0].shape == (b, h // 8, w // 8) and out.indices[0].dtype == torch.int64
    assert out.vq_loss.ndim == 0
    net.eval()
    assert net(x).shape == (b, 4, h, w)


def test_every_trainable_parameter_gets_a_gradient():
    net = _net(pfa_channels=3, vq_levels=(2, 3), quantizer={"usage_entropy_weight": 0.1}).train()
    out = net.forward_train(torch.randn(2, 1, 24, 24), perturb=True, generator=_gen(), align_size=(3, 3))
    loss = out.seg_logits.square().mean() + out.reconstruction.abs().mean() + out.vq_loss + out.aligned.mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_straight_through_carries_the_perturbed_seg_loss_into_the_encoder():
    net = _net(perturbation=QuantizedPerturbation(eps=1.0)).train()
    out = net.forward_train(torch.randn(2, 1, 16, 16), perturb=True, generator=_gen())
    out.seg_logits.square().mean().backward()
    deepest = net.encoder[-1].parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in deepest)
    assert net.quantizers["3"].codebook_mapping.weight.grad is None


def test_qpm_changes_seg_input_only_and_reconstruction_reads_unperturbed_features():
    net = _net(
        perturbation=QuantizedPerturbation(eps=1.0)
    ).eval()  # eval: no dropout / BN batch statistics, so runs are comparable
    x = torch.randn(2, 1, 32, 32)
    clean = net.forward_train(x)
    pert = net.forward_train(x, perturb=True, generator=_gen(1))
    assert clean.perturbed_indices is None
    assert (pert.perturbed_indices[0] != pert.indices[0]).all()
    assert torch.equal(pert.indices[0], clean.indices[0])
    assert not torch.allclose(pert.seg_logits, clean.seg_logits)
    torch.testing.assert_close(pert.reconstruction, clean.reconstruction)
    torch.testing.assert_close(pert.post_vq[0], clean.post_vq[0])
    # forward() is never perturbed and equals the unperturbed training output
    torch.testing.assert_close(net(x), clean.seg_logits)
    again = net.forward_train(x, perturb=True, generator=_gen(1))
    torch.testing.assert_close(again.seg_logits, pert.seg_logits)


def test_vq_loss_terms_add_up():
    net = _net(vq_levels=("bottleneck", 1))
    out = net.forward_train(torch.randn(2, 1, 16, 16))
    total = out.vq_loss_terms["codebook"] + out.vq_loss_terms["commitment"]
    torch.testing.assert_close(total, out.vq_loss)
    assert {"level1/codebook", "level3/commitment"} <= set(out.vq_loss_terms)


@pytest.mark.parametrize("perturbation", ["none", "dropout", "complementary_dropout"])
def test_baseline_perturbations(perturbation):
    net = _net(perturbation=build_perturbation(perturbation)).eval()
    x = torch.randn(4, 1, 16, 16)
    out = net.forward_train(x, perturb=True, generator=_gen())
    clean = net.forward_train(x)
    assert out.seg_logits.shape == (4, 4, 16, 16) and out.perturbed_indices is None
    same = torch.allclose(out.seg_logits, clean.seg_logits)
    assert same == (perturbation == "none")
    torch.testing.assert_close(out.reconstruction, clean.reconstruction)
    if perturbation == "complementary_dropout":
        with pytest.raises(ValueError, match="even"):
            net.forward_train(torch.randn(3, 1, 16, 16), perturb=True)


def test_plain_unet_without_quantization():
    net = _net(vq_levels=(), perturbation=build_perturbation("dropout"), pfa_channels=2)
    out = net.forward_train(torch.randn(2, 1, 16, 16), perturb=True, align_size=(2, 2))
    assert out.pre_vq == [] and out.vq_loss.item() == 0.0 and out.aligned.shape == (2, 2, 2, 2)
    assert net.codebook_usage() == {}


def test_recon_from_quantized_levels_only_ignores_the_skips():
    net = _net(recon_input="quantized").eval()
    x = torch.randn(1, 1, 16, 16)
    a = net.forward_train(x).reconstruction
    feats = net.encode(x)
    feats[-1] = net.quantizers["3"].quantize(feats[-1])[0]
    zeroed = [torch.zeros_like(f) for f in feats[:-1]] + [feats[-1]]
    torch.testing.assert_close(a, net.decode_rec(zeroed, x.shape[-2:]))


def test_codebook_usage_aggregates_quantizers():
    net = _net(vq_levels=(2, 3)).train()
    net.forward_train(torch.randn(2, 1, 16, 16))
    stats = net.codebook_usage()
    assert {"level2/usage", "level3/usage", "usage", "perplexity"} <= set(stats)
    assert 0 < stats["usage"] <= 1 and stats["perplexity"] >= 1
    net.reset_codebook_usage()
    assert net.codebook_usage()["usage"] == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(vq_levels=(7,)), "out of range"),
        (dict(vq_levels=("middle",)), "unknown level"),
        (dict(vq_levels=(), perturbation=QuantizedPerturbation()), "at least one quantized"),
        (dict(perturb_levels=(1,)), "not in vq_levels"),
        (dict(perturbation="mixup"), "perturbation"),
        (dict(recon_input="skip"), "recon_input"),
        (dict(recon_input="quantized", vq_levels=(), perturbation=None), "recon_input"),
        (dict(codebook_size=(8, 8)), "codebook_size"),
        (dict(dropout=(0.1, 0.2)), "dropout"),
    ],
)
def test_invalid_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _net(**kwargs)


def test_bad_input_is_a_clear_error():
    net = _net()
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        net(torch.randn(1, 1, 4, 16))


def test_onnx_export_matches_pytorch():
    ort = pytest.importorskip("onnxruntime")
    net = _net().eval()
    x = torch.randn(1, 1, 32, 32)
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (x,),
        buf,
        input_names=["image"],
        output_names=["pred"],
        dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
        dynamo=False,
    )
    y = torch.randn(3, 1, 32, 32)
    (onnx_out,) = ort.InferenceSession(buf.getvalue()).run(None, {"image": y.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), net(y).detach(), rtol=1e-4, atol=1e-4)


def test_torchscript_trace_matches_pytorch():
    net = _net().eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
        y = torch.randn(2, 1, 32, 32)
        torch.testing.assert_close(loaded(y), net(y))


def test_bf16_autocast_keeps_vq_in_float32():
    net = _net(pfa_channels=2).train()
    x = torch.randn(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net.forward_train(x, perturb=True, generator=_gen(), align_size=(2, 2))
    assert out.vq_loss.dtype == torch.float32 and torch.isfinite(out.vq_loss)
    assert torch.isfinite(out.seg_logits.float()).all()
    (out.seg_logits.float().mean() + out.vq_loss).backward()
    assert net.quantizers["3"].codebook_mapping.weight.grad.dtype == torch.float32
