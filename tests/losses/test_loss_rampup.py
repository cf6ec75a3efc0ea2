"""Ramp-up of the pseudo-label loss weight."""

from __future__ import annotations

import math

import pytest
from vqseg_bundle.losses import rampup_factor


def test_sigmoid_rampup_values():
    assert rampup_factor(0, 100) == pytest.approx(math.exp(-5.0))
    assert rampup_factor(50, 100) == pytest.approx(math.exp(-5.0 * 0.25))
    assert rampup_factor(100, 100) == 1.0
    assert rampup_factor(10_000, 100) == 1.0
    values = [rampup_factor(i, 100) for i in range(101)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))


def test_linear_rampup_and_no_rampup():
    assert rampup_factor(25, 100, "linear") == pytest.approx(0.25)
    assert rampup_factor(0, 0) == 1.0 and rampup_factor(5, 0) == 1.0
    with pytest.raises(ValueError, match="shape"):
        rampup_factor(1, 10, "cosine")
