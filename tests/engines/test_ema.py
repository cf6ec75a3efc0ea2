"""EMA teacher: decay schedule, parameter update rule, buffer policies."""

from __future__ import annotations

import pytest
import torch
from vqseg_bundle.engines import EMATeacher, ema_decay_at, make_teacher


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))


def test_decay_schedule():
    assert ema_decay_at(1, 0.99) == pytest.approx(0.5)
    assert ema_decay_at(9, 0.99) == pytest.approx(0.9)
    assert ema_decay_at(10_000, 0.99) == pytest.approx(0.99)
    assert ema_decay_at(1, 0.99, "none") == pytest.approx(0.99)
    with pytest.raises(ValueError):
        ema_decay_at(1, 0.99, "linear")


def test_make_teacher_is_frozen_copy():
    student = _net()
    teacher = make_teacher(student)
    assert teacher is not student and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for a, b in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


@pytest.mark.parametrize("buffers", ["copy", "ema", "none"])
def test_update_rule_and_buffers(buffers):
    student = _net()
    teacher = make_teacher(student)
    t0 = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.train()(torch.rand(4, 1, 8, 8))  # changes BatchNorm running statistics
    t_mean_before = teacher[1].running_mean.clone()
    ema = EMATeacher(teacher, student, decay=0.9, warmup="none", buffers=buffers)
    decay = ema.update(iteration=100)
    assert decay == pytest.approx(0.9)
    for t_old, t_new, s in zip(t0, teacher.parameters(), student.parameters(), strict=True):
        assert torch.allclose(t_new, 0.9 * t_old + 0.1 * s)
    rm_t, rm_s = teacher[1].running_mean, student[1].running_mean
    if buffers == "copy":
        assert torch.equal(rm_t, rm_s)
    elif buffers == "ema":
        assert torch.allclose(rm_t, 0.9 * t_mean_before + 0.1 * rm_s)
    else:
        assert torch.equal(rm_t, t_mean_before)
    assert teacher[1].num_batches_tracked == (0 if buffers == "none" else student[1].num_batches_tracked)
    assert not teacher.training


def test_invalid_arguments():
    student = _net()
    teacher = make_teacher(student)
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(teacher, student, decay=1.0)
    with pytest.raises(ValueError, match="buffers"):
        EMATeacher(teacher, student, buffers="average")
    with pytest.raises(ValueError, match="parameters differ"):
        EMATeacher(make_teacher(torch.nn.Conv2d(1, 1, 1)), student)
