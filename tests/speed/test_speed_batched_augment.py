"""The batched on-device augmentation samples the same distribution as the MONAI per-sample pipelines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from monai.transforms import Compose, Rotate, Zoom
from speed_helpers import SIZE, assert_same_distribution, marker_image, strong_stats, weak_stats
from vqseg_bundle.transforms import labeled_transforms, strong_intensity_transforms, unlabeled_transforms
from vqseg_bundle.transforms.batched import (
    BatchedLabeledAugment,
    BatchedStrongAugment,
    BatchedUnlabeledAugment,
    BatchedWeakAugment,
    gaussian_erf_kernels,
)

N = 300
WEAK_NAMES = ["mass", "centroid_x", "centroid_y", "padded", "bright", "bg", "class1", "class2"]
STRONG_NAMES = ["mean", "std", "min", "max", "hf_energy"]


def _monai_labeled(n: int, seed: int = 0, **weak: object) -> tuple[torch.Tensor, torch.Tensor]:
    image, label = marker_image()
    t = labeled_transforms(**weak)
    t.set_random_state(seed=seed)
    items = [t({"image": image.clone(), "label": label.clone()}) for _ in range(n)]
    return torch.stack([torch.as_tensor(i["image"]) for i in items]), torch.stack(
        [torch.as_tensor(i["label"]) for i in items]
    )


def _batched_labeled(n: int, seed: int = 0, **weak: object) -> tuple[torch.Tensor, torch.Tensor]:
    image, label = marker_image()
    g = torch.Generator().manual_seed(seed)
    out = BatchedLabeledAugment(**weak)(
        {"image": image.expand(n, -1, -1, -1).clone(), "label": label.expand(n, -1, -1, -1).clone()}, g
    )
    return out["image"], out["label"]


def test_weak_identity_and_flips_are_exact():
    image, label = marker_image()
    x, y = image[None].repeat(3, 1, 1, 1), label[None].repeat(3, 1, 1, 1)
    ident = BatchedWeakAugment(rotate_prob=0.0, flip_prob=0.0, zoom_prob=0.0)
    xi, yi = ident(x, y)
    assert torch.allclose(xi, x, atol=1e-4) and torch.equal(yi, y)
    flip = BatchedWeakAugment(rotate_prob=0.0, flip_prob=1.0, zoom_prob=0.0)
    xf, yf = flip(x, y)
    assert torch.allclose(xf, x.flip(-1, -2), atol=1e-4) and torch.equal(yf, y.flip(-1, -2))


@pytest.mark.parametrize("zoom", [0.9, 0.93, 1.07, 1.1])
def test_weak_zoom_equals_monai_zoom(zoom):
    """Same resize-then-pad/crop geometry as MONAI's Zoom (keep_size), zero padding, border clamping."""
    image, _ = marker_image()
    out, _ = BatchedWeakAugment(rotate_prob=0.0, flip_prob=0.0, zoom_range=(zoom, zoom), zoom_prob=1.0)(image[None])
    ref = torch.as_tensor(Zoom(zoom, mode="bilinear", padding_mode="constant", keep_size=True)(image))
    assert torch.allclose(out[0], ref, atol=1e-4)


@pytest.mark.parametrize("angle", [0.3, -0.2])
def test_weak_rotation_equals_monai_rotate(angle):
    image, _ = marker_image()
    one, zero = torch.ones(1), torch.zeros(1)
    theta = BatchedWeakAugment.matrices(torch.tensor([angle]), one, one, one, one, zero, zero, (SIZE, SIZE))
    grid = F.affine_grid(theta, [1, 1, SIZE, SIZE], align_corners=False)
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ref = torch.as_tensor(Rotate(angle, keep_size=True, mode="bilinear", padding_mode="zeros")(image))
    assert torch.allclose(out[0], ref, atol=1e-4)


def test_weak_moves_label_with_image():
    image, label = marker_image()
    g = torch.Generator().manual_seed(3)
    x, y = BatchedWeakAugment(rotate_prob=1.0, zoom_prob=1.0)(
        image[None].repeat(16, 1, 1, 1), label[None].repeat(16, 1, 1, 1), g
    )
    bright = x[:, 0] > 0.95
    # where the image is still clearly inside the bright square, the label says class 2
    assert bright.any() and (y[:, 0][bright] == 2).float().mean() > 0.97
    assert y.dtype == torch.long and set(y.unique().tolist()) <= {0, 1, 2}


def test_labeled_distribution_matches_monai():
    xm, ym = _monai_labeled(N)
    xb, yb = _batched_labeled(N)
    assert xb.shape == xm.shape == (N, 1, SIZE, SIZE) and yb.shape == ym.shape and yb.dtype == ym.dtype
    assert_same_distribution(weak_stats(xm, ym), weak_stats(xb, yb), WEAK_NAMES, atol=0.01)


def test_labeled_distribution_test_detects_a_different_distribution():
    """The comparison has power: a pipeline without flips is told apart."""
    xm, ym = _monai_labeled(N)
    image, label = marker_image()
    g = torch.Generator().manual_seed(0)
    x, y = BatchedWeakAugment(flip_prob=0.0)(
        image.expand(N, -1, -1, -1).clone(), label.expand(N, -1, -1, -1).clone(), g
    )
    with pytest.raises(AssertionError):
        assert_same_distribution(weak_stats(xm, ym), weak_stats(x, y), WEAK_NAMES, atol=0.01)


def test_strong_distribution_matches_monai():
    image, _ = marker_image()
    t = Compose(strong_intensity_transforms("image"))
    t.set_random_state(seed=1)
    xm = torch.stack([torch.as_tensor(t({"image": image.clone()})["image"]) for _ in range(N)])
    g = torch.Generator().manual_seed(1)
    xb = BatchedStrongAugment()(image.expand(N, -1, -1, -1).clone(), g)
    assert_same_distribution(strong_stats(xm), strong_stats(xb), STRONG_NAMES, atol=1e-3)
    # and a weaker noise is detected
    xw = BatchedStrongAugment(noise_std=0.01)(image.expand(N, -1, -1, -1).clone(), g)
    with pytest.raises(AssertionError):
        assert_same_distribution(strong_stats(xm), strong_stats(xw), STRONG_NAMES, atol=1e-3)


def test_unlabeled_views_match_monai_and_stay_aligned():
    image, _ = marker_image()
    t = unlabeled_transforms()
    t.set_random_state(seed=2)
    items = [t({"image": image.clone()}) for _ in range(N)]
    g = torch.Generator().manual_seed(2)
    out = BatchedUnlabeledAugment()({"image": image.expand(N, -1, -1, -1).clone()}, g)
    assert set(out) == {"image", "image_s1", "image_s2"}
    for key in out:
        xm = torch.stack([torch.as_tensor(i[key]) for i in items])
        assert out[key].shape == xm.shape and out[key].dtype == torch.float32
        assert_same_distribution(strong_stats(xm), strong_stats(out[key]), STRONG_NAMES, atol=1e-3)
    assert_same_distribution(
        weak_stats(torch.stack([torch.as_tensor(i["image"]) for i in items])),
        weak_stats(out["image"]),
        WEAK_NAMES[:5],
        atol=0.01,
    )
    # strong views are pixel-aligned with the weak view (intensity-only) and independent of each other
    w, s1, s2 = out["image"], out["image_s1"], out["image_s2"]
    corr = torch.stack([torch.corrcoef(torch.stack([w[i].flatten(), s1[i].flatten()]))[0, 1] for i in range(20)])
    assert corr.mean() > 0.8
    assert not torch.allclose(s1, s2)


def test_blur_kernels_equal_monai_gaussian_filter():
    sigmas = torch.tensor([0.1, 0.4, 0.9, 1.5])
    k = gaussian_erf_kernels(sigmas, tail=6)
    x = torch.zeros(1, 1, 31, 31)
    x[0, 0, 15, 15] = 1.0
    for i, s in enumerate(sigmas.tolist()):
        ref = GaussianFilter(2, [s, s])(x)[0, 0]
        mine = torch.outer(k[i], k[i])
        assert torch.allclose(ref[9:22, 9:22], mine, atol=1e-6)
        assert torch.allclose(ref.sum(), mine.sum(), atol=1e-6)


def test_batched_augment_bad_input():
    with pytest.raises(ValueError, match="B, C, H, W"):
        BatchedStrongAugment()(torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="label"):
        BatchedWeakAugment()(torch.rand(2, 1, 8, 8), torch.zeros(3, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="probability"):
        BatchedWeakAugment(rotate_prob=1.5)
    with pytest.raises(ValueError, match="low <= high"):
        BatchedStrongAugment(gamma_range=(1.5, 0.7))
    with pytest.raises(ValueError, match="must not set"):
        BatchedUnlabeledAugment(strong={"key": "image"})
    with pytest.raises(ValueError, match="'label'"):
        BatchedLabeledAugment()({"image": torch.rand(2, 1, 8, 8)})


# UniMatch V1 (medical)'s augmentation, the defaults of configs/train.yaml
UNIMATCH_WEAK = dict(rot90_prob=0.5, rotate_prob=0.5, flip_prob=0.0, zoom_prob=0.0)
UNIMATCH_STRONG = dict(
    jitter_prob=0.8,
    brightness=0.5,
    contrast=0.5,
    clip_range=(0.0, 1.0),
    contrast_prob=0.0,
    blur_sigma=(0.1, 2.0),
    noise_prob=0.0,
)


def test_rot90_branch_is_an_exact_rotation_and_flip():
    image, label = marker_image()
    g = torch.Generator().manual_seed(3)
    x, y = BatchedWeakAugment(rot90_prob=1.0)(
        image.expand(64, -1, -1, -1).clone(), label.expand(64, -1, -1, -1).clone(), g
    )
    candidates = [torch.flip(torch.rot90(image, k, dims=(-2, -1)), dims=(d,)) for k in range(4) for d in (-2, -1)]
    for i in range(64):
        assert any(torch.allclose(x[i], c, atol=1e-5) for c in candidates), i
    assert y.dtype == torch.long and set(y.unique().tolist()) <= set(label.unique().tolist())
    # rot90 x flip gives the four reflections of the square (flip H, flip W, both diagonals): all occur
    distinct = []
    for i in range(64):
        if not any(torch.allclose(x[i], d, atol=1e-5) for d in distinct):
            distinct.append(x[i])
    assert len(distinct) == 4


def test_unimatch_weak_distribution_matches_monai():
    image, label = marker_image()
    t = labeled_transforms(**UNIMATCH_WEAK)
    t.set_random_state(seed=4)
    items = [t({"image": image.clone(), "label": label.clone()}) for _ in range(N)]
    xm = torch.stack([torch.as_tensor(i["image"]) for i in items])
    ym = torch.stack([torch.as_tensor(i["label"]) for i in items])
    g = torch.Generator().manual_seed(4)
    out = BatchedLabeledAugment(**UNIMATCH_WEAK)(
        {"image": image.expand(N, -1, -1, -1).clone(), "label": label.expand(N, -1, -1, -1).clone()}, g
    )
    assert_same_distribution(weak_stats(xm, ym), weak_stats(out["image"], out["label"]), WEAK_NAMES, atol=0.01)
    # and it is not the default chain's distribution
    xd, yd = _batched_labeled(N)
    with pytest.raises(AssertionError):
        assert_same_distribution(weak_stats(xm, ym), weak_stats(xd, yd), WEAK_NAMES, atol=0.01)


def test_unimatch_strong_distribution_matches_monai_and_is_clipped():
    image, _ = marker_image()
    t = Compose(strong_intensity_transforms("image", **UNIMATCH_STRONG))
    t.set_random_state(seed=5)
    xm = torch.stack([torch.as_tensor(t({"image": image.clone()})["image"]) for _ in range(N)])
    g = torch.Generator().manual_seed(5)
    xb = BatchedStrongAugment(**UNIMATCH_STRONG)(image.expand(N, -1, -1, -1).clone(), g)
    assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0
    assert_same_distribution(strong_stats(xm), strong_stats(xb), STRONG_NAMES, atol=1e-3)
    xw = BatchedStrongAugment(**{**UNIMATCH_STRONG, "brightness": 0.1})(image.expand(N, -1, -1, -1).clone(), g)
    with pytest.raises(AssertionError):
        assert_same_distribution(strong_stats(xm), strong_stats(xw), STRONG_NAMES, atol=1e-3)


def _orientation_counts(images: torch.Tensor, image: torch.Tensor) -> list[int]:
    """How many of ``images`` are closest to each of the 8 dihedral transforms of ``image``."""
    from vqseg_bundle.transforms import DIHEDRAL_TRANSFORMS

    candidates = torch.stack([t.apply(image) for t in DIHEDRAL_TRANSFORMS])
    nearest = ((images.unsqueeze(1) - candidates.unsqueeze(0)) ** 2).flatten(2).sum(-1).argmin(1)
    return torch.bincount(nearest, minlength=8).tolist()


def test_dihedral_step_is_exact_and_uniform_over_the_eight():
    from vqseg_bundle.transforms import DIHEDRAL_TRANSFORMS

    image, label = marker_image()
    g = torch.Generator().manual_seed(7)
    n = 400
    only = dict(rotate_prob=0.0, flip_prob=0.0, zoom_prob=0.0, dihedral=True)
    x, y = BatchedWeakAugment(**only)(image.expand(n, -1, -1, -1).clone(), label.expand(n, -1, -1, -1).clone(), g)
    for i in range(n):
        assert any(torch.allclose(x[i], t.apply(image), atol=1e-5) for t in DIHEDRAL_TRANSFORMS), i
        assert any(torch.equal(y[i], t.apply(label)) for t in DIHEDRAL_TRANSFORMS), i
    counts = _orientation_counts(x, image)
    assert min(counts) >= 25, counts  # 50 expected each; P(any < 25) is about 1e-4


@pytest.mark.parametrize("backend", ["batched", "monai"])
def test_unimatch_augmentation_with_dihedral_step_reaches_every_orientation_uniformly(backend):
    """UniMatch's rot90 + flip alone never gives a pure quarter or half turn; with the dihedral step the
    orientation a sample ends in is uniform over the 8, on both augmentation paths."""
    image, label = marker_image()
    n = 400
    counts = {}
    for dihedral in (False, True):
        params = {**UNIMATCH_WEAK, "dihedral": dihedral}
        if backend == "batched":
            g = torch.Generator().manual_seed(11)
            x = BatchedLabeledAugment(**params)(
                {"image": image.expand(n, -1, -1, -1).clone(), "label": label.expand(n, -1, -1, -1).clone()}, g
            )["image"]
        else:
            t = labeled_transforms(**params)
            t.set_random_state(seed=11)
            x = torch.stack(
                [torch.as_tensor(t({"image": image.clone(), "label": label.clone()})["image"]) for _ in range(n)]
            )
        counts[dihedral] = _orientation_counts(x, image)
    # without: identity (about half) and the 4 mirrors, never rot90 / rot180 / rot270 (indices 1..3)
    assert counts[False][1:4] == [0, 0, 0] and counts[False][0] > 150, counts
    assert min(counts[True]) >= 25, counts


def test_dihedral_weak_distribution_matches_monai():
    params = {**UNIMATCH_WEAK, "dihedral": True}
    xm, ym = _monai_labeled(N, seed=12, **params)
    xb, yb = _batched_labeled(N, seed=12, **params)
    assert_same_distribution(weak_stats(xm, ym), weak_stats(xb, yb), WEAK_NAMES, atol=0.01)


def test_dihedral_must_be_a_bool():
    with pytest.raises(ValueError, match="dihedral"):
        BatchedWeakAugment(dihedral="yes")
