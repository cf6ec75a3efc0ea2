"""PFA gradient routing (``pfa_gradient``) and the stability of VQ under the alignment loss."""

from __future__ import annotations

import pytest
import torch
from vqseg_bundle.losses import patch_infonce_loss
from vqseg_bundle.networks import VQSegUNet

FM_CHANNELS = 8
GRID = (4, 4)


def _net(mode: str | None = None) -> VQSegUNet:
    torch.manual_seed(0)
    net = VQSegUNet(
        features=(4, 8, 16, 32), codebook_size=32, perturbation=None, reconstruction=False, pfa_channels=FM_CHANNELS
    )
    if mode is not None:
        net.pfa_gradient = mode
    return net


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 1, 32, 32, generator=gen)
    fm = torch.randn(batch, FM_CHANNELS, *GRID, generator=gen)
    return x, fm


def _grad_norms(net: VQSegUNet, loss: torch.Tensor) -> dict[str, float]:
    net.zero_grad(set_to_none=True)
    loss.backward()

    def norm(params) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        return float(sum(g.pow(2).sum() for g in grads)) ** 0.5 if grads else 0.0

    quantizer_params = [p for q in net.quantizers.values() for p in q.parameters()]
    return {"encoder": norm(net.encoder.parameters()), "mapping": norm(quantizer_params)}


def test_default_is_codebook() -> None:
    assert _net().pfa_gradient == "codebook"


def test_invalid_mode_raises() -> None:
    net = _net()
    with pytest.raises(ValueError, match="pfa_gradient"):
        net.pfa_gradient = "encoder_only"


@pytest.mark.parametrize("mode", ["codebook", "straight_through"])
def test_aligned_values_do_not_depend_on_mode(mode: str) -> None:
    x, _ = _inputs()
    ref, other = _net("straight_through").eval(), _net(mode).eval()  # eval: no encoder dropout draw
    other.load_state_dict(ref.state_dict())
    torch.testing.assert_close(
        other.forward_train(x, align_size=GRID).aligned, ref.forward_train(x, align_size=GRID).aligned
    )


def test_codebook_mode_routes_alignment_to_mapping_not_encoder() -> None:
    x, fm = _inputs()
    net = _net("codebook")
    g = _grad_norms(net, patch_infonce_loss(net.forward_train(x, align_size=GRID).aligned, fm))
    assert g["encoder"] == 0.0
    assert g["mapping"] > 0.0


def test_straight_through_mode_routes_alignment_to_encoder_not_mapping() -> None:
    x, fm = _inputs()
    net = _net("straight_through")
    g = _grad_norms(net, patch_infonce_loss(net.forward_train(x, align_size=GRID).aligned, fm))
    assert g["encoder"] > 0.0
    assert g["mapping"] == 0.0


def _train(mode: str, steps: int = 15) -> tuple[float, float]:
    """SGD on alignment (weight 5, T 0.1) + VQ loss; returns (initial, final) commitment term."""
    x, fm = _inputs(4)
    net = _net(mode).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    history = []
    for _ in range(steps):
        out = net.forward_train(x, align_size=GRID)
        loss = 5.0 * patch_infonce_loss(out.aligned, fm, 0.1) + out.vq_loss
        history.append(float(out.vq_loss_terms["commitment"].detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history[0], history[-1]


def test_alignment_does_not_drive_features_off_the_codebook() -> None:
    """The failure mode seen on the demo data: with the straight-through routing the alignment gradient
    pushes the pre-VQ features away from their codewords (commitment grows); routed to the codebook it
    must not."""
    first_cb, last_cb = _train("codebook")
    first_st, last_st = _train("straight_through")
    assert last_cb <= 1.5 * first_cb, (first_cb, last_cb)
    assert last_cb < last_st, (last_cb, last_st)


def test_pfa_gradient_is_a_constructor_option():
    """Both backbones take pfa_gradient from their constructor (so configs can select the paper's routing)."""
    from vqseg_bundle.networks import VQSegUNet

    net = VQSegUNet(features=(4, 8, 8), codebook_size=8, pfa_channels=6, pfa_gradient="straight_through")
    assert net.pfa_gradient == "straight_through"
    with pytest.raises(ValueError, match="pfa_gradient"):
        VQSegUNet(features=(4, 8, 8), codebook_size=8, pfa_channels=6, pfa_gradient="encoder")
