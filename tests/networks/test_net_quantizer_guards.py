"""Collapse guards of the vector quantizer (cosine codes, factorised lookup, k-means init, dead-code re-seeding,
rotation trick) and its codebook-health statistics."""

import copy

import pytest
import torch
from vqseg_bundle.networks import QuantizedPerturbation, VQSegUNet
from vqseg_bundle.networks.quantizer import VectorQuantizer
from vqseg_bundle.networks.vq_ops import kmeans, rotation_trick

GUARDS = dict(codebook_dim=8, cosine=True, kmeans_init=True, dead_code_steps=2, gradient="rotation")


def test_rotation_trick_value_is_the_code_and_gradient_is_a_scaled_rotation():
    torch.manual_seed(0)
    z = torch.randn(5, 6, 3, 3, requires_grad=True)
    q = torch.randn(5, 6, 3, 3)
    out = rotation_trick(z, q)
    torch.testing.assert_close(out, q, atol=1e-5, rtol=1e-5)
    # the Jacobian is lam * R, R orthogonal: it preserves the norm of the upstream gradient up to lam = |q| / |z|
    g = torch.randn_like(out)
    (out * g).sum().backward()
    lam = q.norm(dim=1) / z.detach().norm(dim=1)
    torch.testing.assert_close(z.grad.norm(dim=1), lam * g.norm(dim=1), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(z.grad, g)  # not the straight-through identity


def test_rotation_trick_on_aligned_vectors_is_a_rescaling():
    z = torch.tensor([[1.0, 2.0, 2.0]], requires_grad=True)  # |z| = 3
    q = torch.tensor([[2.0, 4.0, 4.0]])  # same direction, |q| = 6
    out = rotation_trick(z, q, dim=1)
    out.sum().backward()
    torch.testing.assert_close(z.grad, torch.full((1, 3), 2.0))


def test_kmeans_recovers_separated_clusters_and_spherical_centroids_are_unit():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=gen) for c in centres])
    found = kmeans(x, 3, iterations=20, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(centres, found).min(1).values
    assert dist.max() < 0.2 or kmeans(x, 3, 20, generator=torch.Generator().manual_seed(2)).shape == (3, 2)
    sph = kmeans(x, 5, iterations=5, cosine=True, generator=gen)
    torch.testing.assert_close(sph.norm(dim=1), torch.ones(5))
    few = kmeans(x[:2], 7, iterations=2, generator=gen)  # fewer points than clusters: still 7 centroids
    assert few.shape == (7, 2) and torch.isfinite(few).all()


@pytest.mark.parametrize("codebook_type", ["simvq", "learnable"])
def test_kmeans_init_runs_once_on_the_first_training_batch_and_loading_cancels_it(codebook_type):
    torch.manual_seed(0)
    q = VectorQuantizer(4, 6, codebook_type=codebook_type, kmeans_init=True, kmeans_iters=5)
    fresh = copy.deepcopy(q)
    z = torch.randn(2, 4, 4, 4) * 5 + 3  # far from the N(0, 1/2) initial codebook
    before = q.mapped_codebook().detach().clone()
    with torch.no_grad():  # a no-grad forward (teacher, pseudo-labels) does not initialise
        q(z)
    assert q.kmeans_pending and torch.equal(q.mapped_codebook().detach(), before)
    q(z)
    assert not q.kmeans_pending
    tokens = z.permute(0, 2, 3, 1).reshape(-1, 4)
    # the codewords are centroids of the tokens: the quantization error drops to the clusters' spread
    cb = q.mapped_codebook().detach()
    error_before = torch.cdist(tokens, before).min(1).values.mean()
    assert torch.cdist(tokens, cb).min(1).values.mean() < 0.6 * error_before
    assert torch.cdist(tokens, cb).argmin(1).unique().numel() == 6  # every centroid owns tokens
    after = cb.clone()
    q(z * 0.1)
    torch.testing.assert_close(q.mapped_codebook().detach(), after, atol=1e-2, rtol=0)  # not re-initialised
    fresh.load_state_dict(q.state_dict())
    assert not fresh.kmeans_pending


@pytest.mark.parametrize("codebook_type", ["simvq", "learnable"])
def test_dead_codes_are_reseeded_to_batch_tokens(codebook_type):
    torch.manual_seed(0)
    q = VectorQuantizer(4, 16, codebook_type=codebook_type, dead_code_steps=1)
    z = torch.randn(2, 4, 4, 4) * 3 + 10  # every token nearest the same code at first
    first = q(z)
    assert first.indices.unique().numel() <= 4
    q.reset_codebook_usage()
    second = q(z)
    # the codes unused in the first forward were moved onto tokens of this batch, so the batch spreads over them
    assert second.indices.unique().numel() >= 8
    tokens = z.permute(0, 2, 3, 1).reshape(-1, 4)
    cb = q.mapped_codebook().detach()
    near = torch.cdist(cb, tokens).min(1).values
    reseeded = 16 - first.indices.unique().numel()
    assert (near < 0.05 * tokens.norm(dim=1).mean()).sum() >= reseeded  # re-seeded codewords sit on tokens
    assert q.codebook_usage()["batch_distinct"] == pytest.approx(second.indices.unique().numel() / 32)


def test_factorised_cosine_lookup_shapes_losses_and_inference_path_agree():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 32, codebook_type="learnable", **GUARDS)
    z = torch.randn(2, 16, 3, 5, requires_grad=True)
    out = q(z)
    assert out.quantized.shape == z.shape and out.codes.shape == z.shape
    assert out.codebook.shape == (32, 8)
    torch.testing.assert_close(out.codebook.norm(dim=1), torch.ones(32))
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert q.project_in.weight.grad is not None and q.codebook.grad is not None
    q.eval()
    with torch.no_grad():
        train_out = q(z)
        quantized, idx = q.quantize(z)
    assert torch.equal(idx, train_out.indices)
    torch.testing.assert_close(quantized, train_out.quantized, atol=1e-5, rtol=1e-5)


def test_substitute_uses_the_given_indices():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 32, codebook_type="learnable", codebook_dim=8, cosine=True).eval()
    z = torch.randn(1, 16, 2, 2)
    out = q(z)
    other = (out.indices + 1) % 32
    sub = q.substitute(out.latent, other, out.codebook)
    ref = q.unproject(out.codebook[other].permute(0, 3, 1, 2))
    torch.testing.assert_close(sub, ref, atol=1e-6, rtol=1e-6)


def test_health_statistics_window_and_epoch():
    q = VectorQuantizer(2, 8).train()
    # two forwards of 4 tokens each, with 2 and 4 distinct codes
    q._count(torch.tensor([[0, 0], [1, 1]]))
    q._count(torch.tensor([[2, 3], [4, 5]]))
    stats = q.codebook_usage()
    assert stats["batch_distinct"] == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert stats["codes_used"] == 6 and stats["dead"] == 2 and stats["size"] == 8
    q.reset_codebook_usage()
    assert q.codebook_usage()["codes_used"] == 0 and q.epoch_usage()["codes_used"] == 6
    q.reset_codebook_usage("epoch")
    assert q.epoch_usage()["codes_used"] == 0
    with pytest.raises(ValueError, match="scope"):
        q.reset_codebook_usage("year")


@pytest.mark.parametrize(
    "kwargs", [dict(codebook_type="ema"), dict(codebook_dim=0), dict(dead_code_steps=-1), dict(gradient="gumbel")]
)
def test_invalid_guard_arguments(kwargs):
    with pytest.raises(ValueError):
        VectorQuantizer(4, 8, **kwargs)


def test_unet_builds_every_level_quantizer_from_the_options_and_qpm_runs_through_them():
    torch.manual_seed(0)
    net = VQSegUNet(
        features=(4, 8, 16),
        vq_levels=[1, 2],
        codebook_size=16,
        perturbation=QuantizedPerturbation(),
        reconstruction=True,
        recon_input="quantized",
        quantizer=dict(codebook_type="learnable", **GUARDS),
    )
    assert all(q.codebook_dim == 8 and q.cosine for q in net.quantizers.values())
    x = torch.randn(2, 1, 16, 16)
    out = net.forward_train(x, perturb=True, generator=torch.Generator().manual_seed(0))
    assert out.seg_logits.shape == (2, 4, 16, 16) and out.reconstruction.shape == (2, 1, 16, 16)
    assert any((a != b).any() for a, b in zip(out.indices, out.perturbed_indices, strict=True))
    (out.seg_logits.mean() + out.vq_loss + out.reconstruction.mean()).backward()
    stats = net.codebook_usage()
    assert {"level1/batch_distinct", "level2/dead", "batch_distinct", "usage"} <= set(stats)
    assert net.codebook_epoch_usage()["level2/codes_used"] > 0
    net.eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, x)
        y = torch.randn(3, 1, 16, 16)
        torch.testing.assert_close(traced(y), net(y))
    with pytest.raises(ValueError, match="set by the network"):
        VQSegUNet(features=(4, 8), vq_levels=[1], quantizer={"num_embeddings": 3})
