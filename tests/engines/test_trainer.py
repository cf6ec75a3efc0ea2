"""SemiSupervisedTrainer: output terms, event order, QPM only on the student, NaN skip, loaders."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import SIZE, make_trainer, tiny_loaders, tiny_unet
from monai.engines.utils import IterationEvents
from vqseg_bundle.engines import (
    CodebookUsageHandler,
    InfiniteLoader,
    SemiSupervisedForward,
    SemiSupervisedTrainer,
    make_teacher,
)
from vqseg_bundle.networks import QuantizedPerturbation
from vqseg_bundle.networks.foundation import build_foundation_model


def test_output_has_every_term_and_events_fire_in_order():
    order = []
    trainer, net, _, _ = make_trainer()
    for ev in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(ev, lambda e, ev=ev: order.append(ev))
    CodebookUsageHandler(net, interval=1).attach(trainer)
    trainer.run()
    out = trainer.state.output[0]
    assert order[:4] == [
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.LOSS_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ]
    assert len(order) == 8  # two iterations
    for key in (
        "loss",
        "loss_sup",
        "loss_unsup",
        "loss_unsup_strong",
        "loss_rec",
        "loss_vq",
        "mask_ratio",
        "grad_norm",
        "skipped_steps",
        "lr",
        "ema_decay",
        "codebook_usage",
        "codebook_perplexity",
    ):
        assert key in out, key
    assert 0.0 <= float(out["mask_ratio"]) <= 1.0
    assert 0.0 < out["codebook_usage"] <= 1.0
    assert 0.0 < out["codebook_batch_distinct"] <= 1.0
    assert out["codebook_level4/codes_used"] + out["codebook_level4/dead"] == out["codebook_level4/size"]
    assert math.isfinite(float(out["loss"]))
    # the total is the weighted sum of the logged terms (default weights 1, no PFA)
    expected = out["loss_sup"] + out["loss_unsup"] + out["loss_rec"] + out["loss_vq"]
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    assert trainer.state.iteration == 2


def test_codebook_epoch_usage_is_published_logged_and_reset(caplog):
    trainer, net, _, _ = make_trainer()
    handler = CodebookUsageHandler(net, interval=1)
    handler.attach(trainer)
    with caplog.at_level("INFO"):
        trainer.run()
    metrics = trainer.state.metrics
    assert 0 < metrics["codebook_epoch_level4/codes_used"] <= metrics["codebook_epoch_level4/size"]
    assert metrics["codebook_epoch_usage"] > 0
    assert any("codebook: level4:" in r.getMessage() and "codes used" in r.getMessage() for r in caplog.records)
    assert net.codebook_epoch_usage()["level4/codes_used"] == 0  # reset after the epoch


def _capture_student(trainer):
    """Record the student's unlabeled input/output and its unperturbed output on the same input."""
    seen = {}
    step = trainer.student_step
    original = step.forward

    def spy(labeled, weak=None, strong=None, **kwargs):
        out_l, out_u = original(labeled, weak, strong, **kwargs)
        with torch.no_grad():
            plain = step.network.forward_train(strong, perturb=False)
        seen.update(perturbed=out_u, plain=plain, x_u=strong.clone())
        return out_l, out_u

    step.forward = spy
    return seen


@pytest.mark.parametrize("eps", [0.0, 0.7])
def test_qpm_perturbs_student_unlabeled_branch_only(eps):
    net = tiny_unet(qpm_eps=eps, perturbation="qpm")
    # no EMA here, so that the teacher after the run is the teacher that produced the pseudo-labels
    trainer, net, teacher, _ = make_trainer(net=net, epoch_length=1, ema=False)
    seen = _capture_student(trainer)
    qpm_calls = {"teacher": 0}
    for m in teacher.modules():
        if isinstance(m, QuantizedPerturbation):
            m.register_forward_hook(lambda *a: qpm_calls.update(teacher=qpm_calls["teacher"] + 1))
    teacher_inputs, teacher_outputs = [], []

    def record(module, inputs, output):
        teacher_inputs.append(inputs[0].clone())
        teacher_outputs.append(output.detach().clone())

    teacher.register_forward_hook(record)

    def no_train_forward(*args, **kwargs):
        raise AssertionError("the teacher must never run forward_train")

    teacher.forward_train = no_train_forward
    trainer.run()

    perturbed, plain = seen["perturbed"], seen["plain"]
    changed = (perturbed.perturbed_indices[0] != perturbed.indices[0]).float().mean().item()
    diff = (perturbed.seg_logits.detach() - plain.seg_logits).abs().max().item()
    if eps > 0:
        assert changed > 0.3, changed  # about eps of the tokens get another code
        assert diff > 1e-4, diff
    else:
        assert changed == 0.0
        assert diff < 1e-5, diff
    # the teacher ran once (weak view), through forward, never through QPM
    assert qpm_calls["teacher"] == 0
    assert len(teacher_inputs) == 1
    # its logits are exactly the unperturbed prediction; a perturbed one would differ when eps > 0
    del teacher.forward_train
    with torch.no_grad():
        unperturbed = teacher.forward_train(teacher_inputs[0], perturb=False).seg_logits
        perturbed_teacher = teacher.forward_train(teacher_inputs[0], perturb=True).seg_logits
    assert torch.allclose(teacher_outputs[0], unperturbed, atol=1e-6)
    if eps > 0:
        # a perturbed prediction is further from the teacher's than the unperturbed one (an absolute threshold was
        # brittle: at one thread this tiny untrained U-Net's logits move by only ~5e-7 when QPM swaps codes)
        off_unperturbed = (teacher_outputs[0] - unperturbed).abs().max()
        assert (teacher_outputs[0] - perturbed_teacher).abs().max() > off_unperturbed
    assert not teacher.training


def test_nan_loss_skips_step_and_keeps_training():
    calls = {"n": 0}

    def flaky_loss(logits, labels):
        calls["n"] += 1
        ce = torch.nn.functional.cross_entropy(logits, labels)
        return ce * float("nan") if calls["n"] == 2 else ce

    trainer, net, _, opt = make_trainer(epoch_length=3, supervised_loss=flaky_loss, ema=False)
    snapshots = []
    trainer.add_event_handler(
        IterationEvents.MODEL_COMPLETED,
        lambda e: snapshots.append(
            {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
        ),
    )
    before_second = {}
    trainer.add_event_handler(
        IterationEvents.FORWARD_COMPLETED,
        lambda e: before_second.update(
            {k: v.detach().clone() for k, v in net.named_parameters()} if e.state.iteration == 2 else {}
        ),
    )
    trainer.run()
    assert trainer.state.iteration == 3
    assert int(trainer.state.output[0]["skipped_steps"]) == 1
    params_after_second = {k: snapshots[1][k] for k in before_second}
    for k, v in before_second.items():
        assert torch.equal(v, params_after_second[k]), f"parameter {k} changed in the skipped step"
    for group in opt.state.values():
        for t in group.values():
            if torch.is_tensor(t):
                assert torch.isfinite(t).all()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    # the third step trained again
    assert any(not torch.equal(snapshots[1][k], snapshots[2][k]) for k in before_second)


def test_foundation_model_alignment_term():
    fm = build_foundation_model("efficientnet_lite0")
    net = tiny_unet(pfa_channels=fm.out_channels)
    trainer, *_ = make_trainer(net=net, epoch_length=1, foundation_model=fm, align_weight=5.0)
    trainer.run()
    assert "loss_align" in trainer.state.output[0]
    assert float(trainer.state.output[0]["loss_align"]) > 0


def test_missing_adapter_is_a_clear_error():
    fm = build_foundation_model("efficientnet_lite0")
    trainer, *_ = make_trainer(epoch_length=1, foundation_model=fm, align_weight=1.0)
    with pytest.raises(ValueError, match="pfa_channels"):
        trainer.run()


def test_invalid_arguments():
    net = tiny_unet()
    lab, unl = tiny_loaders()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    t = make_teacher(net)
    with pytest.raises(ValueError, match="nan_policy"):
        SemiSupervisedTrainer("cpu", 1, lab, unl, net, t, opt, epoch_length=1, nan_policy="ignore")
    with pytest.raises(ValueError, match="epoch_length"):
        SemiSupervisedTrainer("cpu", 1, lab, unl, net, t, opt, epoch_length=0)
    with pytest.raises(ValueError, match="forward_train"):
        SemiSupervisedTrainer("cpu", 1, lab, unl, torch.nn.Conv2d(1, 4, 1), t, opt, epoch_length=1)
    for name, value in (
        ("pseudo_labeler", "ema"),
        ("perturbed_stream", "labeled"),
        ("cutmix_partner", "other"),
        ("strong_bn_stats", "ema"),
    ):
        with pytest.raises(ValueError, match=name):
            SemiSupervisedTrainer("cpu", 1, lab, unl, net, t, opt, epoch_length=1, **{name: value})
    with pytest.raises(ValueError, match="SemiSupervisedLoss"):
        SemiSupervisedTrainer("cpu", 1, lab, unl, net, t, opt, epoch_length=1, loss=torch.nn.MSELoss())
    # a weak-stream perturbation without an fp loss would do nothing
    with pytest.raises(ValueError, match="fp_weight"):
        SemiSupervisedTrainer("cpu", 1, lab, unl, net, t, opt, epoch_length=1, perturbed_stream="weak")


def test_semi_supervised_forward_runs_both_branches():
    net = tiny_unet(qpm_eps=0.7)
    step = SemiSupervisedForward(net)
    out_l, out_u = step(torch.rand(2, 1, SIZE, SIZE), None, torch.rand(4, 1, SIZE, SIZE), perturb_strong=True)
    assert out_l.seg_logits.shape == (2, 4, SIZE, SIZE)
    assert out_u.seg_logits.shape == (4, 4, SIZE, SIZE)
    assert out_l.perturbed_indices is None and out_u.perturbed_indices is not None
    # labeled + weak in one call; the weak stream's clean and perturbed logits both come back
    out_lw, out_s = step(torch.rand(2, 1, SIZE, SIZE), torch.rand(3, 1, SIZE, SIZE), None, perturb_weak=True)
    assert out_s is None and out_lw.seg_logits.shape == out_lw.clean_seg_logits.shape == (5, 4, SIZE, SIZE)
    assert out_lw.perturbed_indices is not None
    with pytest.raises(ValueError, match="forward_train"):
        SemiSupervisedForward(torch.nn.Identity())


class _Sampler:
    def __init__(self):
        self.epochs = []

    def set_epoch(self, e):
        self.epochs.append(e)


class _Loader(list):
    def __init__(self, items):
        super().__init__(items)
        self.sampler = _Sampler()


def test_infinite_loader_cycles_and_reshuffles():
    loader = _Loader([1, 2, 3])
    it = iter(InfiniteLoader(loader))
    assert [next(it) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]
    assert loader.sampler.epochs == [0, 1, 2]
    with pytest.raises(ValueError, match="no batch"):
        InfiniteLoader(_Loader([]))


def test_bf16_channels_last_clipping_and_masked_dice_switches():
    trainer, net, _, _ = make_trainer(
        epoch_length=1,
        amp=True,
        amp_dtype="bfloat16",
        channels_last=True,
        grad_clip_norm=1.0,
        unsup_dice_weight=0.5,
        cutmix=None,
    )
    trainer.run()
    out = trainer.state.output[0]
    assert "loss_unsup_strong" in out and torch.isfinite(out["loss"])
    assert float(out["grad_norm"]) > 0
    assert all(torch.isfinite(p).all() for p in net.parameters())
