"""compute_case_metrics against hand-computed cases, and the empty-mask policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vqseg_bundle.metrics import compute_case_metrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def by_class(records):
    return {r.class_index: r for r in records}


def test_single_voxels_distance_in_voxels_and_mm_2d():
    gt = torch.zeros(1, 7, 9, dtype=torch.long)
    pr = torch.zeros(1, 7, 9, dtype=torch.long)
    gt[0, 2, 2] = 1
    pr[0, 2, 5] = 1  # 3 voxels away along axis 1
    r = by_class(compute_case_metrics(pr, gt, 2, spacing=(1.4, 2.5)))[1]
    assert r.status == "ok" and r.dice == 0.0 and r.jaccard == 0.0
    assert r.hd95_vox == pytest.approx(3.0) and r.asd_vox == pytest.approx(3.0)
    assert r.hd95_mm == pytest.approx(7.5) and r.asd_mm == pytest.approx(7.5)


def test_single_voxels_3d_anisotropic_diagonal():
    gt = np.zeros((1, 5, 6, 4), np.int64)
    pr = np.zeros((1, 5, 6, 4), np.int64)
    gt[0, 1, 1, 0] = 2
    pr[0, 2, 3, 2] = 2  # offset (1, 2, 2) voxels
    r = by_class(compute_case_metrics(pr, gt, 3, spacing=(1.4, 1.4, 10.0)))[2]
    assert r.hd95_vox == pytest.approx(3.0)  # sqrt(1 + 4 + 4)
    assert r.hd95_mm == pytest.approx(math.sqrt(1.4**2 + 2.8**2 + 20.0**2), rel=1e-5)
    assert r.asd_mm == pytest.approx(r.hd95_mm, rel=1e-5)


def test_overlap_by_hand():
    gt = torch.zeros(1, 6, 6, dtype=torch.long)
    pr = torch.zeros(1, 6, 6, dtype=torch.long)
    gt[0, 1:3, 1:3] = 1  # 4 voxels
    pr[0, 1:3, 2:4] = 1  # 4 voxels, 2 shared
    r = by_class(compute_case_metrics(pr, gt, 2))[1]
    assert r.n_gt == 4 and r.n_pred == 4
    assert r.dice == pytest.approx(2 * 2 / 8)
    assert r.jaccard == pytest.approx(2 / 6)


def test_hd95_percentile_and_asd_on_thin_structures():
    """Every voxel of a 1-voxel-thick line is a boundary voxel, so all distances are known by hand."""
    gt = torch.zeros(1, 16, 24, dtype=torch.long)
    gt[0, 2, 0:20] = 1  # a line of 20 voxels
    pr = gt.clone()
    pr[0, 12, 0] = 1  # two isolated extra voxels 10 rows below the line
    pr[0, 12, 10] = 1
    r = by_class(compute_case_metrics(pr, gt, 2))[1]
    d_pred_to_gt = [0.0] * 20 + [10.0, 10.0]
    d_gt_to_pred = [0.0] * 20
    expected_hd95 = max(np.percentile(d_pred_to_gt, 95), np.percentile(d_gt_to_pred, 95))  # MONAI's definition
    assert expected_hd95 == pytest.approx(9.5)
    assert r.hd95_vox == pytest.approx(expected_hd95, abs=1e-4)
    assert r.asd_vox == pytest.approx(sum(d_pred_to_gt + d_gt_to_pred) / (22 + 20), rel=1e-5)
    assert r.dice == pytest.approx(2 * 20 / 42)


def test_empty_mask_policy_nan():
    gt = torch.zeros(1, 8, 8, dtype=torch.long)
    pr = torch.zeros(1, 8, 8, dtype=torch.long)
    gt[0, 1:3, 1:3] = 1  # class 1 missed by the prediction
    pr[0, 5:7, 5:7] = 2  # class 2 predicted but absent from the truth
    recs = by_class(compute_case_metrics(pr, gt, 4, spacing=(1.0, 2.0)))
    assert recs[1].status == "pred_empty" and recs[1].dice == 0.0 and recs[1].jaccard == 0.0
    assert recs[2].status == "gt_empty" and recs[2].dice == 0.0
    for c in (1, 2):
        assert all(math.isnan(getattr(recs[c], m)) for m in ("hd95_vox", "asd_vox", "hd95_mm", "asd_mm"))
    assert recs[3].status == "both_empty" and recs[3].dice == 1.0 and recs[3].jaccard == 1.0
    assert recs[3].hd95_vox == 0.0 and recs[3].asd_mm == 0.0


@pytest.mark.parametrize("penalty", ["diagonal", 50.0])
def test_empty_mask_policy_penalty(penalty):
    gt = torch.zeros(1, 6, 8, 3, dtype=torch.long)
    gt[0, 1:3, 1:3, 1] = 1
    pr = torch.zeros_like(gt)
    recs = by_class(compute_case_metrics(pr, gt, 2, spacing=(1.5, 1.5, 8.0), empty_distance="penalty", penalty=penalty))
    r = recs[1]
    assert r.status == "pred_empty" and r.dice == 0.0
    if penalty == "diagonal":
        assert r.hd95_vox == pytest.approx(math.sqrt(6**2 + 8**2 + 3**2))
        assert r.asd_mm == pytest.approx(math.sqrt(9.0**2 + 12.0**2 + 24.0**2))
    else:
        assert r.hd95_vox == r.asd_vox == r.hd95_mm == r.asd_mm == 50.0


def test_perfect_prediction_random_blobs():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(1, 10, 12, 5))
    recs = compute_case_metrics(lab, lab.copy(), 4, spacing=(1.4, 1.4, 10.0))
    assert [r.class_index for r in recs] == [1, 2, 3]
    for r in recs:
        assert (r.dice, r.jaccard, r.hd95_vox, r.asd_vox, r.hd95_mm, r.asd_mm) == (1.0, 1.0, 0.0, 0.0, 0.0, 0.0)


def test_one_hot_and_scores_equal_label_maps():
    rng = np.random.default_rng(1)
    gt = torch.as_tensor(rng.integers(0, 3, size=(1, 9, 7, 2)))
    pr = torch.as_tensor(rng.integers(0, 3, size=(1, 9, 7, 2)))
    ref = compute_case_metrics(pr, gt, 3, include_background=True)
    onehot = lambda t: torch.nn.functional.one_hot(t[0], 3).movedim(-1, 0).float()  # noqa: E731
    scores = onehot(pr) * 5.0 + 0.1  # logits-like scores: argmax is taken
    got = compute_case_metrics(scores, onehot(gt), 3, include_background=True)
    assert [r.class_index for r in got] == [0, 1, 2]
    for a, b in zip(ref, got, strict=True):
        assert a.as_dict() == pytest.approx(b.as_dict(), nan_ok=True)


def test_names():
    gt = torch.zeros(1, 4, 4, dtype=torch.long)
    recs = compute_case_metrics(gt, gt, 3, case="p1", class_names=["bg", "a", "b"])
    assert [(r.case, r.class_name) for r in recs] == [("p1", "a"), ("p1", "b")]
    recs = compute_case_metrics(gt, gt, 3, include_background=True, class_names=["a", "b"])
    assert [r.class_name for r in recs] == ["background", "a", "b"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pred=torch.zeros(1, 4, 4), label=torch.zeros(1, 4, 5)), "shapes differ"),
        (dict(pred=torch.full((1, 4, 4), 5), label=torch.zeros(1, 4, 4)), "label values"),
        (dict(pred=torch.zeros(4, 4), label=torch.zeros(4, 4)), "channel-first"),
        (dict(pred=torch.full((1, 4, 4), 0.5), label=torch.zeros(1, 4, 4)), "non-integer"),
        (dict(pred=torch.zeros(1, 4, 4), label=torch.zeros(1, 4, 4), spacing=(1.0,)), "spacing"),
        (dict(pred=torch.zeros(1, 4, 4), label=torch.zeros(1, 4, 4), spacing=(1.0, 0.0)), "spacing"),
        (dict(pred=torch.zeros(1, 4, 4), label=torch.zeros(1, 4, 4), empty_distance="zero"), "empty_distance"),
        (dict(pred=torch.zeros(1, 4, 4), label=torch.zeros(1, 4, 4), penalty=-1.0), "penalty"),
        (dict(pred=torch.zeros(1, 4, 4), label=torch.zeros(1, 4, 4), class_names=["a"]), "class_names"),
    ],
)
def test_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_case_metrics(num_classes=4, **kwargs)
