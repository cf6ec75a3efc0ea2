"""ResizedSliceInferer: shapes, slice bookkeeping, resize protocol, flip TTA, metadata, argument checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from vqseg_bundle.inferers import ResizedSliceInferer


def linear_net(in_channels: int = 1, k: int = 3) -> torch.nn.Conv2d:
    """A 1x1 conv: linear per pixel, so it commutes with bilinear resizing."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(in_channels, k, 1).eval()


class AsymmetricNet(torch.nn.Module):
    """Position-dependent (not flip-equivariant) logits, to make flip TTA observable."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ramp = torch.linspace(0, 1, w).view(1, 1, 1, w) * torch.linspace(1, 2, h).view(1, 1, h, 1)
        return torch.cat([x * (i + 1) + ramp * i for i in range(self.k)], dim=1).expand(n, self.k, h, w)


@pytest.mark.parametrize("shape", [(2, 1, 37, 29, 3), (1, 2, 17, 40, 1), (3, 1, 9, 11)])
@pytest.mark.parametrize("sw_batch_size", [1, 4])
def test_output_shape(shape, sw_batch_size):
    net = linear_net(shape[1], 5)
    out = ResizedSliceInferer(16, sw_batch_size=sw_batch_size)(torch.rand(shape), net)
    assert out.shape == (shape[0], 5, *shape[2:])


def test_slices_are_not_mixed():
    # slice d of batch item b is constant (10 b + d); a linear net maps a constant to a constant,
    # and bilinear resizing keeps it, so every output slice must be net(10 b + d) exactly.
    b, h, w, d = 2, 13, 7, 4
    vals = torch.arange(b).view(b, 1, 1, 1, 1) * 10.0 + torch.arange(d).view(1, 1, 1, 1, d)
    x = vals.expand(b, 1, h, w, d).clone()
    net = linear_net(1, 2)
    out = ResizedSliceInferer((8, 6), sw_batch_size=3)(x, net)
    wgt, bias = net.weight.view(2), net.bias
    for bi in range(b):
        for di in range(d):
            expected = wgt * (10.0 * bi + di) + bias
            torch.testing.assert_close(out[bi, :, :, :, di], expected.view(2, 1, 1).expand(2, h, w), atol=1e-5, rtol=0)


def test_resize_protocol_matches_manual_interpolation():
    x = torch.rand(1, 1, 21, 15, 2)
    net = AsymmetricNet(3)
    out = ResizedSliceInferer((32, 24), sw_batch_size=8)(x, net)
    for di in range(2):
        s = F.interpolate(x[..., di], size=(32, 24), mode="bilinear", align_corners=False)
        ref = F.interpolate(net(s), size=(21, 15), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[..., di], ref)


def test_no_resize_when_sizes_match_is_exact():
    x = torch.rand(2, 1, 12, 10, 3)
    net = AsymmetricNet(2)
    out = ResizedSliceInferer((12, 10), sw_batch_size=2)(x, net)
    for di in range(3):
        assert torch.equal(out[..., di], net(x[..., di]))


def test_batch_size_invariance():
    x = torch.rand(2, 1, 19, 23, 5)
    net = linear_net(1, 4)
    a = ResizedSliceInferer(16, sw_batch_size=1)(x, net)
    b = ResizedSliceInferer(16, sw_batch_size=64)(x, net)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_slice_axis(axis):
    x = torch.rand(1, 1, 9, 10, 11)
    net = AsymmetricNet(2)
    out = ResizedSliceInferer(8, slice_axis=axis)(x, net)
    assert out.shape == (1, 2, 9, 10, 11)
    moved = ResizedSliceInferer(8)(x.movedim(2 + axis % 3, -1), net)
    torch.testing.assert_close(out, moved.movedim(-1, 2 + axis % 3))


@pytest.mark.parametrize("average", ["logits", "softmax"])
def test_flip_tta_average(average):
    x = torch.rand(1, 1, 16, 16, 2)
    net = AsymmetricNet(3)
    out = ResizedSliceInferer(16, flip_tta=True, tta_average=average)(x, net)
    plain = ResizedSliceInferer(16)(x, net)
    assert not torch.allclose(out, plain)  # the net is not flip-equivariant, so TTA must change it
    views = []
    for di in range(2):
        s = x[..., di]
        views.append(
            [net(s), torch.flip(net(torch.flip(s, (-1,))), (-1,)), torch.flip(net(torch.flip(s, (-2,))), (-2,))]
        )
    for di in range(2):
        v = torch.stack(views[di])
        if average == "logits":
            ref = v.mean(0)
            torch.testing.assert_close(out[..., di], ref)
        else:
            ref = v.softmax(dim=2).mean(0)
            torch.testing.assert_close(out[..., di].softmax(dim=1), ref)
            torch.testing.assert_close(out[..., di].exp().sum(1), torch.ones(1, 16, 16))


@pytest.mark.parametrize("average", ["logits", "softmax"])
def test_dihedral_tta_prediction_turns_with_the_input(average):
    """With the 8 views averaged, the prediction of any turned / mirrored slice is the turned / mirrored
    prediction, even for a network that depends on position (which the plain prediction does not satisfy)."""
    from vqseg_bundle.transforms import DIHEDRAL_TRANSFORMS

    x = torch.rand(1, 1, 16, 16, 2)
    net = AsymmetricNet(3)
    tta = ResizedSliceInferer(16, dihedral_tta=True, tta_average=average)
    plain = ResizedSliceInferer(16)
    out = tta(x, net)
    assert not torch.allclose(out, plain(x, net))
    dims = (2, 3)
    for t in DIHEDRAL_TRANSFORMS[1:]:
        torch.testing.assert_close(tta(t.apply(x, dims), net), t.apply(out, dims), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(t.apply(x, dims), net), t.apply(plain(x, net), dims), atol=1e-3)
    if average == "softmax":
        torch.testing.assert_close(out.exp().sum(1), torch.ones(1, 16, 16, 2))


def test_metatensor_keeps_metadata():
    affine = torch.diag(torch.tensor([1.4, 1.4, 10.0, 1.0]))
    affine[:3, 3] = torch.tensor([5.0, -3.0, 2.0])
    x = MetaTensor(torch.rand(1, 1, 11, 9, 3), affine=affine, meta={"filename_or_obj": "a.nii.gz"})
    out = ResizedSliceInferer(8)(x, linear_net(1, 2))
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine.to(affine), affine)
    assert out.meta["filename_or_obj"] == "a.nii.gz"
    assert out.shape == (1, 2, 11, 9, 3)


def test_integer_input_is_cast():
    x = torch.randint(0, 5, (1, 1, 8, 8, 2))
    out = ResizedSliceInferer(8)(x, linear_net(1, 2))
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"roi_size": (16,)},
        {"roi_size": (0, 16)},
        {"roi_size": 16, "sw_batch_size": 0},
        {"roi_size": 16, "tta_average": "mean"},
        {"roi_size": 16, "mode": "linear"},
        {"roi_size": 16, "slice_axis": 3},
        {"roi_size": 16, "slice_axis": True},
        {"roi_size": 16, "flip_tta": True, "dihedral_tta": True},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        ResizedSliceInferer(**kwargs)


def test_invalid_inputs():
    inf = ResizedSliceInferer(8)
    with pytest.raises(ValueError, match="volume"):
        inf(torch.rand(1, 8, 8), linear_net())
    with pytest.raises(ValueError, match="empty"):
        inf(torch.rand(1, 1, 8, 8, 0), linear_net())
    with pytest.raises(ValueError, match="logits"):
        inf(torch.rand(1, 1, 8, 8, 2), lambda x: (x, x))
