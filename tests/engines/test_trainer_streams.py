"""The trainer's recipe switches: who labels the weak view, which stream is perturbed, where CutMix partners
come from, and whether strong views update BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_trainer, tiny_unet
from vqseg_bundle.losses import PseudoLabelLoss
from vqseg_bundle.networks import VQSegUNet

UNIMATCH = dict(
    pseudo_labeler="student",
    perturbed_stream="weak",
    cutmix_partner="second_batch",
    sup_weight=0.5,
    unsup_weight=0.5,
    strong_weight=0.5,
    fp_weight=0.5,
    recon_weight=0.0,
    vq_weight=0.0,
    pseudo_label_loss=PseudoLabelLoss(ce_weight=0.0, dice_weight=1.0),
)


def _plain_unet(**kwargs) -> VQSegUNet:
    return tiny_unet(vq_levels=[], reconstruction=False, perturbation="dropout", **kwargs)


def _spy_step(trainer) -> list[dict]:
    calls = []
    original = trainer.student_step.forward

    def spy(labeled, weak=None, strong=None, **kwargs):
        calls.append(dict(weak=weak, strong=strong, **kwargs))
        return original(labeled, weak, strong, **kwargs)

    trainer.student_step.forward = spy
    return calls


def _spy_labels(trainer) -> list:
    labelers = []
    original = trainer._label

    def spy(network, images):
        labelers.append((network, network.training))
        return original(network, images)

    trainer._label = spy
    return labelers


def test_unimatch_recipe_self_labels_perturbs_the_weak_stream_and_mixes_with_a_second_batch():
    trainer, net, teacher, _ = make_trainer(net=_plain_unet(), ema=False, **UNIMATCH)
    calls, labelers = _spy_step(trainer), _spy_labels(trainer)
    batches = {"n": 0}
    original_next = trainer._next_unlabeled

    def counting_next(engine):
        batches["n"] += 1
        return original_next(engine)

    trainer._next_unlabeled = counting_next
    trainer.run()
    out = trainer.state.output[0]
    # the teacher never labels; the partners are labeled by the student (trained mode restored afterwards)
    assert labelers and all(n is net for n, _ in labelers) and net.training
    assert batches["n"] == 2 * trainer.state.iteration  # one batch + one partner batch per step
    c = calls[-1]
    assert c["weak"] is not None and c["strong"] is not None
    assert c["perturb_weak"] and not c["perturb_strong"]
    for key in ("loss_unsup_fp", "loss_unsup_strong", "mask_ratio"):
        assert key in out, key
    expected = 0.5 * out["loss_sup"] + 0.5 * (0.5 * out["loss_unsup_strong"] + 0.5 * out["loss_unsup_fp"])
    assert torch.allclose(out["loss"], expected, atol=1e-6)


def test_teacher_labels_the_weak_view_and_the_partner_batch():
    trainer, net, teacher, _ = make_trainer(
        net=_plain_unet(), ema=False, pseudo_labeler="teacher", cutmix_partner="second_batch", align_weight=0.0
    )
    labelers = _spy_labels(trainer)
    calls = _spy_step(trainer)
    trainer.run()
    assert [n for n, _ in labelers] == [teacher, teacher] * trainer.state.iteration
    # VQ-Seg code's streams: no weak student stream, the strong views perturbed
    assert calls[-1]["weak"] is None and calls[-1]["perturb_strong"]


@pytest.mark.parametrize("policy", ["update", "frozen"])
def test_strong_view_forward_and_batchnorm_statistics(policy):
    net = _plain_unet()
    trainer, net, _, _ = make_trainer(net=net, ema=False, epoch_length=1, strong_bn_stats=policy, **UNIMATCH)
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    snapshots = []
    original = net.forward_train

    def spy(x, **kwargs):
        out = original(x, **kwargs)
        snapshots.append(bn.running_mean.clone())
        return out

    net.forward_train = spy
    trainer.run()
    assert len(snapshots) == 2  # cat(labeled, weak), then the strong views
    same = torch.equal(snapshots[0], snapshots[1])
    assert same == (policy == "frozen")
    assert bn.momentum == 0.1  # restored


def test_recipe_switches_that_cannot_work_are_refused():
    from vqseg_bundle.transforms import BatchCutMix

    with pytest.raises(ValueError, match="monai"):
        make_trainer(
            net=_plain_unet(),
            cutmix=BatchCutMix(mode="monai"),
            pseudo_labeler="student",
            fp_weight=0.5,
            perturbed_stream="weak",
        )
    with pytest.raises(ValueError, match="complementary"):
        make_trainer(
            net=tiny_unet(vq_levels=[], reconstruction=False, perturbation="complementary_dropout"),
            perturbed_stream="weak",
            fp_weight=0.5,
        )


def test_qpm_on_the_weak_stream_leaves_the_strong_views_unperturbed():
    net = tiny_unet(reconstruction=False, perturbation="qpm", qpm_eps=0.9)
    trainer, net, _, _ = make_trainer(net=net, ema=False, epoch_length=1, **UNIMATCH)
    outputs = []
    original = trainer.student_step.forward

    def spy(labeled, weak=None, strong=None, **kwargs):
        out = original(labeled, weak, strong, **kwargs)
        outputs.append(out)
        return out

    trainer.student_step.forward = spy
    trainer.run()
    out_lw, out_s = outputs[0]
    assert out_lw.perturbed_indices is not None and (out_lw.perturbed_indices[0] != out_lw.indices[0]).any()
    assert out_s.perturbed_indices is None
