"""Dropout baselines: UniMatch feature dropout and UniMatch V2 complementary dropout."""

import pytest
import torch
from vqseg_bundle.networks.perturbations import ComplementaryDropout, FeatureDropout


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_feature_dropout_is_channelwise_with_rate_p():
    x = torch.ones(64, 32, 3, 5)
    (y,) = FeatureDropout(0.3)([x], _gen())
    per_channel = y[:, :, 0, 0]
    assert torch.equal(y, per_channel[:, :, None, None].expand_as(y))  # same value over a channel's pixels
    nonzero = per_channel[per_channel != 0]
    torch.testing.assert_close(nonzero, torch.full_like(nonzero, 1 / 0.7))
    dropped = (per_channel == 0).float().mean().item()
    assert abs(dropped - 0.3) < 5 * (0.3 * 0.7 / per_channel.numel()) ** 0.5


def test_feature_dropout_zero_rate_is_identity():
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(FeatureDropout(0.0)([x])[0], x)


def test_complementary_masks_sum_to_two_and_kept_pairs_are_untouched():
    half, c = 10, 16
    x = torch.ones(2 * half, c, 2, 2)
    y1, y2 = ComplementaryDropout(0.5, keep_pair_ratio=0.3)([x, 2 * x], _gen(1))
    for y, scale in ((y1, 1.0), (y2, 2.0)):
        first, second = y[:half, :, 0, 0] / scale, y[half:, :, 0, 0] / scale
        kept = (first == 1).all(1) & (second == 1).all(1)
        assert kept.sum().item() == int(0.3 * half)
        perturbed = ~kept
        assert set(first[perturbed].unique().tolist()) <= {0.0, 2.0}
        torch.testing.assert_close(first[perturbed] + second[perturbed], torch.full_like(first[perturbed], 2.0))
    # the same pairs are kept at every level
    kept1 = (y1[:half, :, 0, 0] == 1).all(1) & (y1[half:, :, 0, 0] == 1).all(1)
    kept2 = (y2[:half, :, 0, 0] == 2).all(1) & (y2[half:, :, 0, 0] == 2).all(1)
    assert torch.equal(kept1, kept2)


def test_complementary_general_rate_scales_each_view_by_its_keep_probability():
    x = torch.ones(4, 8, 1, 1)
    (y,) = ComplementaryDropout(0.25, keep_pair_ratio=0.0)([x], _gen(2))
    first, second = y[:2, :, 0, 0], y[2:, :, 0, 0]
    torch.testing.assert_close(first[first != 0], torch.full_like(first[first != 0], 1 / 0.75))
    assert set(second.unique().tolist()) <= {0.0, 4.0}
    assert torch.equal(first > 0, second == 0)


def test_complementary_needs_an_even_batch():
    with pytest.raises(ValueError, match="even"):
        ComplementaryDropout()([torch.ones(3, 2, 2, 2)])


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (FeatureDropout, dict(p=1.0)),
        (ComplementaryDropout, dict(p=0.0)),
        (ComplementaryDropout, dict(keep_pair_ratio=2.0)),
    ],
)
def test_invalid_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def _unet(**kwargs):
    from vqseg_bundle.networks import VQSegUNet, build_perturbation

    args = dict(features=(4, 8, 16, 16), codebook_size=16, reconstruction=False, pfa_channels=None)
    args["perturbation"] = build_perturbation(kwargs.pop("perturbation", "qpm"), qpm=kwargs.pop("qpm", None))
    args.update(kwargs)
    return VQSegUNet(**args)


def test_return_clean_decodes_clean_and_perturbed_maps_together():
    net = _unet(vq_levels=[], perturbation="dropout").eval()  # eval: no encoder dropout, BN running stats
    x = torch.rand(3, 1, 16, 16)
    out = net.forward_train(x, perturb=True, generator=_gen(), return_clean=True)
    assert torch.allclose(out.clean_seg_logits, net(x), atol=1e-5)
    assert not torch.allclose(out.seg_logits, out.clean_seg_logits)
    plain = net.forward_train(x, perturb=False, return_clean=True)
    assert plain.clean_seg_logits is plain.seg_logits
    assert net.forward_train(x).clean_seg_logits is None


def test_qpm_dropout_perturbs_codes_then_drops_channels():
    net = _unet(vq_levels=["bottleneck"], perturbation="qpm_dropout", qpm={"eps": 0.9}).eval()
    assert net.dropout_levels == (0, 1, 2, 3) and net.perturb_levels == (3,)
    x = torch.rand(4, 1, 16, 16)
    out = net.forward_train(x, perturb=True, generator=_gen(1))
    assert (out.perturbed_indices[0] != out.indices[0]).any()
    qpm_only = _unet(vq_levels=["bottleneck"], perturbation="qpm", qpm={"eps": 0.9}).eval()
    qpm_only.load_state_dict(net.state_dict())
    assert not torch.allclose(out.seg_logits, qpm_only.forward_train(x, perturb=True, generator=_gen(1)).seg_logits)


def test_encoder_dropout_after_the_first_conv_only_by_default():
    first = _unet(vq_levels=[], perturbation="none", dropout=0.5)
    both = _unet(vq_levels=[], perturbation="none", dropout=0.5, dropout_convs="both")
    count = lambda n: sum(isinstance(m, torch.nn.Dropout) for m in n.encoder.modules())  # noqa: E731
    assert count(first) == 4 and count(both) == 8
    assert first.state_dict().keys() == both.state_dict().keys()
    with pytest.raises(ValueError, match="dropout_convs"):
        _unet(vq_levels=[], perturbation="none", dropout_convs="second")


def test_build_perturbation_gives_the_named_modules_and_the_network_their_name():
    from vqseg_bundle.networks import (
        PERTURBATIONS,
        ComplementaryDropout,
        FeatureDropout,
        QuantizedPerturbation,
        build_perturbation,
    )

    kinds = {"qpm": QuantizedPerturbation, "dropout": FeatureDropout, "complementary_dropout": ComplementaryDropout}
    for name, cls in kinds.items():
        assert isinstance(build_perturbation(name), cls)
    both = build_perturbation("qpm_dropout", qpm={"eps": 0.3}, dropout={"p": 0.2})
    assert [type(m) for m in both] == [QuantizedPerturbation, FeatureDropout]
    assert both[0].eps == 0.3 and both[1].p == 0.2
    assert build_perturbation("none") is None and build_perturbation(None) is None
    for name in PERTURBATIONS:
        net = _unet(vq_levels=["bottleneck"], perturbation=name)
        assert net.perturbation == name
    with pytest.raises(ValueError, match="perturbation must be one of"):
        build_perturbation("mixup")


@pytest.mark.parametrize(
    "modules, message",
    [
        (lambda n: [n.QuantizedPerturbation(), n.QuantizedPerturbation()], "perturbation must be"),
        (lambda n: [n.QuantizedPerturbation(), n.ComplementaryDropout()], "not ComplementaryDropout"),
        (lambda n: torch.nn.Identity(), "perturbation must be"),
    ],
)
def test_network_refuses_perturbations_it_cannot_apply(modules, message):
    from vqseg_bundle import networks
    from vqseg_bundle.networks import VQSegUNet

    with pytest.raises(ValueError, match=message):
        VQSegUNet(features=(4, 8), codebook_size=8, perturbation=modules(networks))
