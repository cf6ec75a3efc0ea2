"""The one-line orientation report of inference (issue 27 item 4): oblique affines, stored slice axes that become
in-plane, stored in-plane axes unlike the training volumes'; silent for an input stored as the training data."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from vqseg_bundle.inferers import ReportOrientationd, orientation_findings

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # what nibabel reads from an ACDC challenge file


def _rotated_about_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rot = np.eye(4)
    rot[:2, :2] = [[c, -s], [s, c]]
    return rot @ LPS


def test_a_file_stored_as_the_training_volumes_says_nothing():
    assert orientation_findings(LPS, 3, "PLS", training_axcodes="LPS") == []
    assert orientation_findings(_rotated_about_z(0.5), 3, "PLS", training_axcodes="LPS") == []


def test_a_positive_diagonal_header_is_a_half_turn_of_the_training_convention():
    (line,) = orientation_findings(np.eye(4), 3, "PLS", training_axcodes="LPS")
    assert "stored in-plane axes RA" in line and "LP" in line and "turns or mirrors" in line
    assert orientation_findings(np.eye(4), 3, "PLS", training_axcodes=None) == []


def test_oblique_affine_is_named_with_its_angle():
    (line,) = orientation_findings(_rotated_about_z(12.0), 3, "PLS", training_axcodes="LPS")
    assert "oblique" in line and "12.0 degrees" in line


def test_a_stored_slice_axis_that_becomes_in_plane_is_named():
    # stored (S, P, L): the last stored axis runs left, so after reorientation to PLS it is in-plane
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = 1.0, -1.0, -1.0, 1.0
    lines = orientation_findings(affine, 3, "PLS", training_axcodes="LPS")
    assert any("stored slice axis 2 (L) becomes an in-plane axis" in line for line in lines)


def test_no_reorientation_compares_nothing_but_obliqueness():
    assert orientation_findings(np.eye(4), 3, None, training_axcodes="LPS") == []
    assert len(orientation_findings(_rotated_about_z(30.0), 3, None)) == 1


def test_transform_logs_one_line_naming_the_file_and_passes_data_unchanged(caplog):
    report = ReportOrientationd("image", orientation="PLS", training_axcodes="LPS")
    image = MetaTensor(torch.rand(1, 4, 5, 3), affine=torch.eye(4), meta={"filename_or_obj": "/data/case_ras.nii.gz"})
    same = MetaTensor(torch.rand(1, 4, 5, 3), affine=torch.from_numpy(LPS), meta={"filename_or_obj": "/data/ok.nii.gz"})
    png = MetaTensor(torch.rand(1, 4, 5), affine=torch.eye(3), meta={"filename_or_obj": "/data/slice.png"})
    with caplog.at_level(logging.WARNING, logger="vqseg_bundle.inferers.orientation_check"):
        for img in (image, same, png, image):  # the first file twice: still one line
            item = {"image": img}
            assert report(item)["image"] is img
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("/data/case_ras.nii.gz: stored in-plane axes RA")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="orientation"):
        ReportOrientationd("image", training_axcodes="XYZ")
