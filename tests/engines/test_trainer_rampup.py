"""The trainer's pseudo-label ramp-up, and labeled-only training that skips the unlabeled branch."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_trainer, tiny_unet
from ignite.engine import Events


def test_trainer_applies_rampup_to_pseudo_label_terms_only():
    trainer, _, _, _ = make_trainer(rampup_iterations=10, rampup_shape="linear", epoch_length=3)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    trainer.run()
    # 0-based iterations 0, 1, 2 of a 10-iteration linear ramp
    assert [s["unsup_rampup"] for s in seen] == pytest.approx([0.0, 0.1, 0.2])
    last = seen[-1]
    expected = last["loss_sup"] + 0.2 * last["loss_unsup"] + last["loss_rec"] + last["loss_vq"]
    assert torch.allclose(last["loss"], expected, atol=1e-5)


class _CountingTeacher(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.calls = teacher, 0

    def forward(self, x):
        self.calls += 1
        return self.teacher(x)


def test_labeled_only_training_skips_teacher_and_unlabeled_branch():
    net = tiny_unet(vq_levels=[], reconstruction=False, perturbation="none")
    trainer, _, teacher, _ = make_trainer(net=net, unsup_weight=0.0, recon_weight=0.0, ema=False)
    assert not trainer.uses_unlabeled
    counting = _CountingTeacher(teacher)
    trainer._teacher_forward = counting
    trainer.run()
    out = trainer.state.output[0]
    assert counting.calls == 0
    assert "loss_unsup" not in out and "mask_ratio" not in out
    assert torch.allclose(out["loss"], out["loss_sup"])


@pytest.mark.parametrize(
    "net_kwargs, weights",
    [
        (dict(vq_levels=[], reconstruction=False, perturbation="none"), dict(unsup_weight=1.0)),
        (dict(reconstruction=True), dict(unsup_weight=0.0)),  # reconstruction and VQ still read unlabeled images
    ],
)
def test_unlabeled_branch_runs_when_a_term_reads_it(net_kwargs, weights):
    trainer, _, teacher, _ = make_trainer(net=tiny_unet(**net_kwargs), ema=False, **weights)
    assert trainer.uses_unlabeled
    counting = _CountingTeacher(teacher)
    trainer._teacher_forward = counting
    trainer.run()
    out = trainer.state.output[0]
    if weights["unsup_weight"] > 0:
        assert counting.calls == 2 and "mask_ratio" in out
    else:  # no pseudo-label term: the teacher is not asked, the strong views still feed reconstruction
        assert counting.calls == 0 and "mask_ratio" not in out and float(out["loss_rec"]) > 0
