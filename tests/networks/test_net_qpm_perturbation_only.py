"""QPM as a perturbation only (``quantize_paths="perturbed"``) and the EMA codebook update it fits its codebooks
with (``VectorQuantizer(codebook_ema=...)``)."""

from __future__ import annotations

import pytest
import torch
from vqseg_bundle.networks import VQSegUNet, build_perturbation
from vqseg_bundle.networks.quantizer import VectorQuantizer

EMA_QUANTIZER = {"codebook_type": "learnable", "kmeans_init": True, "dead_code_steps": 50, "codebook_ema": 0.9}


def _net(substitution: str = "shift", eps: float = 0.7, levels="all") -> VQSegUNet:
    torch.manual_seed(0)
    return VQSegUNet(
        features=(4, 8, 16),
        vq_levels=levels,
        codebook_size=16,
        quantizer=EMA_QUANTIZER,
        perturbation=build_perturbation("qpm", qpm={"eps": eps, "distance": "cosine", "temperature": 0.1}),
        reconstruction=False,
        quantize_paths="perturbed",
        qpm_substitution=substitution,
    )


def _plain_twin(net: VQSegUNet) -> VQSegUNet:
    """The same encoder / decoder weights with no quantized level at all."""
    plain = VQSegUNet(features=(4, 8, 16), vq_levels=[], reconstruction=False, perturbation=None)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("quantizers.")})
    return plain


def test_clean_paths_are_continuous():
    net = _net()
    x = torch.randn(2, 1, 16, 16)
    net.forward_train(x, perturb=True)  # fits (k-means) the codebooks
    plain = _plain_twin(net)
    net.eval()
    plain.eval()
    torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
    net.train()
    plain.train()
    torch.manual_seed(1)  # the encoder's dropout layers draw in train mode
    out = net.forward_train(x, perturb=False, return_clean=True)
    assert out.indices == [] and float(out.vq_loss) == 0.0  # no quantizer ran on a clean call
    torch.manual_seed(1)
    torch.testing.assert_close(out.seg_logits, plain.forward_train(x).seg_logits)


def test_perturbed_stream_changes_and_clean_half_matches_forward():
    net = _net()
    x = torch.randn(2, 1, 16, 16)
    out = net.forward_train(x, perturb=True, return_clean=True, generator=torch.Generator().manual_seed(0))
    assert len(out.indices) == 3 and len(out.perturbed_indices) == 3
    changed = sum(int((a != b).sum()) for a, b in zip(out.indices, out.perturbed_indices, strict=True))
    assert changed > 0
    assert not torch.allclose(out.seg_logits, out.clean_seg_logits)


def test_shift_with_eps_zero_is_the_identity_and_replace_is_not():
    x = torch.randn(2, 1, 16, 16)
    shift = _net("shift", eps=0.0).eval()  # eval: no encoder dropout; the quantizers still fit in train mode
    for q in shift.quantizers.values():
        q.train()
    out = shift.forward_train(x, perturb=True, return_clean=True)
    torch.testing.assert_close(out.seg_logits, out.clean_seg_logits)
    replace = _net("replace", eps=0.0).eval()
    for q in replace.quantizers.values():
        q.train()
    out = replace.forward_train(x, perturb=True, return_clean=True)
    assert not torch.allclose(out.seg_logits, out.clean_seg_logits)  # tokens snapped to their codewords


def test_no_vq_gradient_reaches_the_encoder_and_task_gradient_does():
    net = _net()
    x = torch.randn(2, 1, 16, 16)
    out = net.forward_train(x, perturb=True)
    assert not out.vq_loss.requires_grad  # EMA codebook on detached tokens: nothing to train by the VQ loss
    out.seg_logits.sum().backward()
    assert net.encoder[0].conv_0.conv.weight.grad.abs().sum() > 0
    assert all(q.codebook.grad is None for q in net.quantizers.values())


def test_scripted_form_has_no_quantizer_and_matches_eager():
    net = _net()
    net.forward_train(torch.randn(2, 1, 16, 16), perturb=True)
    net.eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0)


def test_perturbed_paths_need_qpm():
    with pytest.raises(ValueError, match="quantize_paths='perturbed'.*'dropout'"):
        VQSegUNet(
            features=(4, 8),
            vq_levels="all",
            perturbation=build_perturbation("dropout"),
            quantize_paths="perturbed",
            reconstruction=False,
        )
    # inference rebuilds it without a perturbation: nothing quantized on the clean path
    net = VQSegUNet(
        features=(4, 8), vq_levels="all", perturbation=None, quantize_paths="perturbed", reconstruction=False
    )
    assert net.inference_quantizers() == {}
    with pytest.raises(ValueError, match="quantize_paths must be one of"):
        VQSegUNet(features=(4, 8), quantize_paths="clean", reconstruction=False)
    with pytest.raises(ValueError, match="qpm_substitution must be one of"):
        VQSegUNet(features=(4, 8), qpm_substitution="swap", reconstruction=False)


def test_ema_codebook_moves_to_the_mean_of_its_tokens():
    q = VectorQuantizer(2, 2, codebook_type="learnable", codebook_ema=0.5, seed=0)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    q.ema_sum = q.codebook.detach().clone()
    tokens = torch.tensor([[1.0, 1.0], [3.0, 3.0], [9.0, 9.0]]).t().reshape(1, 2, 3)  # (B, D, N)
    q.train()
    with torch.enable_grad():
        q(tokens.requires_grad_())
    # code 0: count 0.5 + 0.5 * 2 = 1.5, sum 0.5 * 0 + 0.5 * (1 + 3) = 2 -> ~1.33; code 1: (5 + 4.5) / 1 = 9.5
    torch.testing.assert_close(q.codebook[:, 0], torch.tensor([2.0 / 1.5, 9.5]), rtol=1e-3, atol=1e-3)
    assert not q.codebook.requires_grad


def test_ema_needs_a_learnable_codebook_and_a_decay_below_one():
    with pytest.raises(ValueError, match="codebook_ema needs codebook_type='learnable'"):
        VectorQuantizer(4, 8, codebook_ema=0.9)
    with pytest.raises(ValueError, match=r"codebook_ema must be in \[0, 1\)"):
        VectorQuantizer(4, 8, codebook_type="learnable", codebook_ema=1.0)


def test_ema_statistics_restart_from_a_loaded_codebook():
    a = VectorQuantizer(4, 8, codebook_type="learnable", codebook_ema=0.9, seed=0)
    b = VectorQuantizer(4, 8, codebook_type="learnable", codebook_ema=0.9, seed=1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.ema_sum, a.codebook.detach())
    assert torch.all(b.ema_count == 1)
