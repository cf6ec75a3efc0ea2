"""Reconstruction L1, VQ codebook/commitment and usage-entropy losses, supervised Dice+CE."""

import math

import pytest
import torch
import torch.nn.functional as F
from vqseg_bundle.losses import (
    ReconstructionL1Loss,
    SupervisedSegLoss,
    codebook_usage_entropy_loss,
    reconstruction_l1_loss,
    vq_codebook_commitment_loss,
)


def test_reconstruction_l1_by_hand():
    rec = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[0.0, 2.0], [5.0, 3.0]]]])
    assert reconstruction_l1_loss(rec, target).item() == pytest.approx((1 + 0 + 2 + 1) / 4)
    assert ReconstructionL1Loss("sum")(rec, target).item() == pytest.approx(4.0)
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert reconstruction_l1_loss(rec, target, mask).item() == pytest.approx(0.5)
    assert reconstruction_l1_loss(rec, target, reduction="none").shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_l1_loss(rec, target[..., :1])


def test_vq_loss_by_hand_and_gradient_routing():
    z = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    zq = torch.tensor([[0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    res = vq_codebook_commitment_loss(z, zq, beta=0.5)
    mse = (1 + 0 + 1 + 1) / 4
    assert res.codebook.item() == pytest.approx(mse)
    assert res.commitment.item() == pytest.approx(mse)
    assert res.total.item() == pytest.approx(1.5 * mse)
    res.codebook.backward(retain_graph=True)
    assert z.grad is None and zq.grad is not None  # the codebook term only moves the codewords
    zq.grad = None
    res.commitment.backward()
    assert zq.grad is None and z.grad is not None  # the commitment term only moves the encoder
    with pytest.raises(ValueError):
        vq_codebook_commitment_loss(z, zq[:1])


def test_usage_entropy_loss_by_hand():
    codebook = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    # two confident tokens on different codes: per-token entropy 0, batch entropy log 2
    z = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    assert codebook_usage_entropy_loss(z, codebook).item() == pytest.approx(-math.log(2), abs=1e-6)
    # two confident tokens on the same code: 0 - 0
    assert codebook_usage_entropy_loss(z[:1].repeat(2, 1), codebook).item() == pytest.approx(0.0, abs=1e-6)
    # tokens equidistant from both codes: per-token entropy log 2, batch entropy log 2
    mid = torch.tensor([[50.0, 3.0], [50.0, -1.0]])
    assert codebook_usage_entropy_loss(mid, codebook).item() == pytest.approx(0.0, abs=1e-6)


def test_usage_entropy_chunking_changes_nothing_including_gradients():
    torch.manual_seed(0)
    z = torch.randn(37, 4, requires_grad=True)
    codebook = torch.randn(16, 4, requires_grad=True)
    full = codebook_usage_entropy_loss(z, codebook, temperature=0.5)
    gz, gc = torch.autograd.grad(full, (z, codebook))
    chunked = codebook_usage_entropy_loss(z, codebook, temperature=0.5, max_chunk_elements=16 * 5)
    cz, cc = torch.autograd.grad(chunked, (z, codebook))
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(cz, gz)
    torch.testing.assert_close(cc, gc)
    assert codebook_usage_entropy_loss(z, codebook, reduction="none").shape == (37,)


def test_supervised_loss_ce_part_and_label_shapes():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 4)
    labels = torch.randint(0, 3, (2, 5, 4))
    ce_only = SupervisedSegLoss(lambda_ce=1.0, lambda_dice=0.0)
    assert ce_only(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    both = SupervisedSegLoss()
    torch.testing.assert_close(both(logits, labels), both(logits, labels[:, None]))
    perfect = 20.0 * F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert both(perfect, labels).item() < 1e-3
    with pytest.raises(ValueError, match="labels"):
        both(logits, labels[:, :4])
