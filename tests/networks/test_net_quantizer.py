"""Vector quantizer: nearest-code search, straight-through gradients, losses, usage statistics."""

import math

import pytest
import torch
from vqseg_bundle.networks.quantizer import VectorQuantizer


def _brute_force_indices(z_flat, codebook):
    return torch.cdist(z_flat.double(), codebook.double()).argmin(1)


@pytest.mark.parametrize("chunk", [1, 7 * 32, 2**24])
def test_nearest_matches_brute_force_for_any_chunking(chunk):
    torch.manual_seed(0)
    q = VectorQuantizer(8, 32, max_chunk_elements=chunk)
    z = torch.randn(3, 8, 5, 7)
    out = q(z)
    z_flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    expected = _brute_force_indices(z_flat, q.mapped_codebook().detach()).reshape(3, 5, 7)
    assert out.indices.shape == (3, 5, 7)
    assert torch.equal(out.indices, expected)


def test_quantized_equals_codebook_lookup_in_eval_mode():
    q = VectorQuantizer(6, 16).eval()
    z = torch.randn(2, 6, 3, 5)
    out = q(z)
    lookup = q.mapped_codebook()[out.indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(out.quantized, lookup, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.codes, lookup)
    quantized, idx = q.quantize(z)
    assert torch.equal(idx, out.indices)
    torch.testing.assert_close(quantized, out.quantized)


def test_straight_through_gradient_is_identity_and_codebook_gets_loss_gradient():
    q = VectorQuantizer(4, 8)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    weights = torch.randn_like(out.quantized)
    (out.quantized * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # straight-through: d quantized / d z = I
    assert q.codebook_mapping.weight.grad is None  # the straight-through path gives the codebook nothing
    out = q(z.detach())
    out.loss.backward()
    assert q.codebook_mapping.weight.grad is not None and q.codebook_mapping.weight.grad.abs().sum() > 0
    assert not q.base_codebook.requires_grad


def test_loss_terms_sum_to_loss_and_beta_scales_commitment():
    torch.manual_seed(1)
    z = torch.randn(2, 4, 3, 3)
    q = VectorQuantizer(4, 8, commitment_beta=0.25, usage_entropy_weight=0.5)
    out = q(z)
    assert set(out.loss_terms) == {"codebook", "commitment", "usage_entropy"}
    torch.testing.assert_close(sum(out.loss_terms.values()), out.loss)
    mse = ((z - out.codes.detach()) ** 2).mean()
    torch.testing.assert_close(out.loss_terms["codebook"], mse)
    torch.testing.assert_close(out.loss_terms["commitment"], 0.25 * mse)


def test_distances_are_float32_under_autocast():
    torch.manual_seed(2)
    q = VectorQuantizer(16, 64)
    z = torch.randn(2, 16, 4, 4)
    expected = q(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert torch.equal(out.indices, expected)
    assert out.loss.dtype == torch.float32
    assert out.codebook.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z.bfloat16())
    assert out.quantized.dtype == torch.bfloat16 and out.codebook.dtype == torch.float32


def test_usage_statistics_count_only_in_training_and_reset():
    q = VectorQuantizer(2, 4)
    with torch.no_grad():
        q.codebook_mapping.weight.copy_(torch.eye(2))
        q.codebook_mapping.bias.zero_()
        q.base_codebook.copy_(torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]]))
    # tokens near codes 0, 0, 1, 2 -> 3 of 4 codes used, p = (1/2, 1/4, 1/4, 0)
    z = torch.tensor([[9.0, 0.0], [11.0, 1.0], [0.0, 9.0], [-9.0, 0.0]]).t().reshape(1, 2, 2, 2)
    q.eval()
    q(z)
    assert q.codebook_usage()["tokens"] == 0
    q.train()
    q(z)
    stats = q.codebook_usage()
    assert stats["usage"] == pytest.approx(0.75)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert stats["perplexity"] == pytest.approx(math.exp(entropy))
    assert stats["tokens"] == 4
    q.reset_codebook_usage()
    assert q.codebook_usage()["usage"] == 0.0
    assert "usage_counts" not in q.state_dict()


def test_base_codebook_is_reproducible_from_seed():
    a, b = VectorQuantizer(4, 8, seed=3), VectorQuantizer(4, 8, seed=3)
    assert torch.equal(a.base_codebook, b.base_codebook)
    assert not torch.equal(a.base_codebook, VectorQuantizer(4, 8, seed=4).base_codebook)


@pytest.mark.parametrize(
    "kwargs",
    [dict(embedding_dim=0), dict(num_embeddings=1), dict(commitment_beta=-1.0), dict(usage_entropy_weight=-1.0)],
)
def test_invalid_arguments(kwargs):
    args = dict(embedding_dim=4, num_embeddings=8) | kwargs
    with pytest.raises(ValueError):
        VectorQuantizer(**args)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="expected features"):
        VectorQuantizer(4, 8)(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("usage_entropy_weight", [0.0, 0.5])
def test_row_wise_mapping_gives_the_full_codebook_gradient(usage_entropy_weight):
    """Mapping only the selected rows (no K x D graph) must give the same loss and mapping gradient as
    gathering from the full differentiable codebook."""
    from vqseg_bundle.losses.vq import codebook_usage_entropy_loss, vq_codebook_commitment_loss

    torch.manual_seed(0)
    q = VectorQuantizer(8, 64, commitment_beta=0.25, usage_entropy_weight=usage_entropy_weight)
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    weights = torch.randn(2, 8, 4, 4)
    out = q(z)
    assert out.codebook.requires_grad == (usage_entropy_weight > 0)
    (out.loss + (out.codes * weights).sum()).backward()
    got = (q.codebook_mapping.weight.grad.clone(), q.codebook_mapping.bias.grad.clone(), z.grad.clone())

    q.codebook_mapping.zero_grad()
    z2 = z.detach().clone().requires_grad_(True)
    full = q.mapped_codebook()
    codes = full[out.indices].permute(0, 3, 1, 2)
    ref = vq_codebook_commitment_loss(z2, codes, 0.25).total
    if usage_entropy_weight > 0:
        ref = ref + usage_entropy_weight * codebook_usage_entropy_loss(z2.permute(0, 2, 3, 1).reshape(-1, 8), full, 1.0)
    (ref + (codes * weights).sum()).backward()
    torch.testing.assert_close(out.loss, ref.detach())
    torch.testing.assert_close(got[0], q.codebook_mapping.weight.grad)
    torch.testing.assert_close(got[1], q.codebook_mapping.bias.grad)
    torch.testing.assert_close(got[2], z2.grad)
